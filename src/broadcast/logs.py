"""Logging for the ``broadcast`` loggers: one JSON object per line (the default, for log
pipelines) or plain text for people (``BROADCAST_LOG_FORMAT=text``).

What is logged never includes chat messages or published data, nor tokens (the one exception
being the publish token generated at startup, logged once so the server works out of the box).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

LOGGER = "broadcast"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, form: str) -> None:
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
