"""Say where a JSON body escapes half a UTF-16 surrogate pair (``"\\ud800"``).

JSON allows the escape, but the text it makes is not valid Unicode, so it can be neither stored
nor sent on; msgspec refuses it with a misleading "Input data was truncated". Found here first,
the client hears what is wrong and where.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A high surrogate escape not followed by a low one, or a low one not preceded by a high one.
# Cheap, and exact but for an escaped backslash before the "u" (`\\ud800` is the text
# "\ud800"), which the decoding below rules out: valid bodies, surrogate pairs (emoji escaped
# by ensure_ascii encoders) included, pay one scan.
_LONE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(body: bytes) -> str | None:
    """``"lone surrogate \\ud800 at $.data"`` if the JSON body has one, else None (also when the
    body is not JSON at all: the decoder reports that itself)."""
    if not _LONE_ESCAPE.search(body):
        return None
    try:
        return _find(json.loads(body), "$")
    except (ValueError, RecursionError):
        return None


def _find(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        if match := _SURROGATE.search(value):
            return f"lone surrogate \\u{ord(match.group()):04x} at {path}"
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if found := _find(item, f"{path}[{index}]"):
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            # json.dumps escapes the key's own surrogates: the message must stay valid text.
            where = f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"
            if _SURROGATE.search(key):
                return f"lone surrogate in the key {where}"
            if found := _find(item, where):
                return found
    return None
