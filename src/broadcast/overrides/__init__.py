"""Every place broadcast leans on a dependency's internals, in one package, each checked when
the app starts (``choose``), each pinned to the minor versions tested (``pyproject.toml``).

- ``hypercorn.py`` finds each client's socket, for the fan-out's direct writes; without it,
  the ASGI path: the same behaviour, slower.
- ``sse_starlette.py`` runs two tasks per SSE stream, not three, its writes timed by the
  watchdog; without it, sse-starlette's own ``__call__``: a little more memory per stream.
- ``hypercorn_h11.py`` answers a plain keep-alive ``POST /publish`` from the bytes hypercorn
  reads, before h11; without it, the ASGI path (``publish_lean.py``): the same answers, slower.
- ``socketio_rooms.py`` makes a Socket.IO disconnect O(1), not O(clients); without it,
  python-socketio's own manager: slower drains and churn.
- ``engineio_ping.py`` pings every Socket.IO client from one task; without it, python-engineio's
  own heartbeat: a task per ping, and more CPU for idle clients.
- ``engineio.py`` and ``socketio.py`` make python-engineio and python-socketio conform to the
  protocol and stand hostile input (docs/socketio-conformance.md), count each client's queued
  bytes, and replay after CONNECT. Correctness depends on them: no public path does the same.

``BROADCAST_OVERRIDES=false`` turns off the first five (the test suite runs the transport tests
once that way); the last two are not optional, and a python-socketio or python-engineio whose
internals moved stops the server at startup with a message saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from broadcast.overrides import (
    engineio,
    engineio_ping,
    hypercorn,
    hypercorn_h11,
    socketio,
    socketio_rooms,
    sse_starlette,
)
from broadcast.overrides.sse_starlette import LeanResponse, PublicResponse, WatchedResponse

logger = logging.getLogger(__name__)


class OverrideMismatch(RuntimeError):
    """A dependency broadcast cannot run correctly without moved its internals."""


@dataclass(frozen=True)
class Overrides:
    """What the app uses, after the checks."""

    find_socket: hypercorn.SocketFinder
    sse_response: type[WatchedResponse]
    indexed_rooms: bool
    wire_publish: bool
    swept_pings: bool


def choose(enabled: bool) -> Overrides:
    """Check every override: raise ``OverrideMismatch`` for one correctness depends on; log one
    line for each optional one left out, and use the public path instead."""
    for library, problem in (
        ("python-engineio", engineio.check()),
        ("python-socketio", socketio.check()),
    ):
        if problem is not None:
            raise OverrideMismatch(
                f"{library} is not the version broadcast was tested with ({problem}); install "
                "the versions pyproject.toml pins"
            )
    if not enabled:
        logger.info(
            "dependency overrides off (BROADCAST_OVERRIDES=false): no direct writes, "
            "sse-starlette's own streams, python-socketio's own client manager, publishes "
            "through h11, python-engineio's own pings"
        )
        return Overrides(
            hypercorn.no_socket,
            PublicResponse,
            indexed_rooms=False,
            wire_publish=False,
            swept_pings=False,
        )
    find_socket: hypercorn.SocketFinder = hypercorn.socket_of
    sse_response: type[WatchedResponse] = LeanResponse
    indexed_rooms = True
    if (problem := hypercorn.check()) is not None:
        logger.warning("direct writes off, every client on the ASGI path: %s", problem)
        find_socket = hypercorn.no_socket
    if (problem := sse_starlette.check()) is not None:
        logger.warning("SSE streams on sse-starlette's own __call__: %s", problem)
        sse_response = PublicResponse
    if (problem := socketio_rooms.check()) is not None:
        logger.warning("python-socketio's own client manager: %s", problem)
        indexed_rooms = False
    wire_publish = True
    if (problem := hypercorn_h11.install()) is not None:
        logger.warning("publishes through h11: %s", problem)
        wire_publish = False
    swept_pings = True
    if (problem := engineio_ping.check()) is not None:
        logger.warning("python-engineio's own pings, a task each: %s", problem)
        swept_pings = False
    return Overrides(find_socket, sse_response, indexed_rooms, wire_publish, swept_pings)
