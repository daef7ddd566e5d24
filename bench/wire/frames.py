"""What the wire clients share below the protocol objects: the clock, the client states, the
JSON number parser, the fast-path matchers of the frames that come by the million, and the
masking of a client's WebSocket frame."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

__all__ = [
    "CNT_SSE",
    "CNT_WS",
    "S_CLOSED",
    "S_CONNECTING",
    "S_OPEN",
    "S_QUEUED",
    "WS_GUID",
    "SseFanMatch",
    "WsFanMatch",
    "epoch_ms",
    "fan_patterns",
    "json_loads",
    "json_number",
    "mask_frame",
    "now",
]

try:
    from orjson import loads as json_loads

    # A JSON number as bytes to a number: orjson's parser takes half the time of float() on a
    # 17-digit time stamp (float's correctly rounded conversion goes the long way round).
    json_number: Callable[[bytes], float] = json_loads
except ImportError:  # the standard library is fine, only slower
    from json import loads as json_loads  # type: ignore[assignment]

    json_number = float  # json.loads would be several times slower than float() here

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CNT_WS = b'42["user count",'  # Socket.IO EVENT "user count" (fast path)
CNT_SSE = b"event: user count\ndata: "  # SSE frame "user count" (fast path)

# A client's life: queued (waiting for a connect slot), connecting, open, closed.
S_QUEUED, S_CONNECTING, S_OPEN, S_CLOSED = range(4)


def now() -> float:
    """Monotonic seconds (phase timing)."""
    return time.perf_counter()


def epoch_ms() -> float:
    """Wall-clock milliseconds: the fanout payload's ``t`` and its receipt use the same clock."""
    return time.time() * 1000.0


# The fanout event's fast-path matchers (``fan_patterns``): group 1 is ``seq``, group 2 is ``t``.
WsFanMatch = Callable[[bytes, int, int], re.Match[bytes] | None]  # (data, start, end)
SseFanMatch = Callable[[bytes, int], re.Match[bytes] | None]  # (body, pos)

# JSON's own number grammar (RFC 8259 6), so that the fast path accepts exactly what a JSON
# parser would, and nothing more: int() and float() alone would also take " 1", "1_0", "+1",
# "nan" or "inf". A non-negative integer for ``seq`` (anything else is malformed, which the
# general path decides), any JSON number for ``t``.
_SEQ = rb"(0|[1-9][0-9]*)"
_NUM = rb"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"


def fan_patterns(event_json: bytes, event_raw: bytes) -> tuple[WsFanMatch, SseFanMatch]:
    """The fast-path matchers of the fanout event ``{"seq": <int>, "t": <number>}``.

    ``event_json`` is the event name as a JSON string, ``event_raw`` as it is in an SSE field.
    Returns ``(ws, sse)``:

    - ``ws(payload, start, end)`` full-matches one WebSocket message,
      ``42["<name>",{"seq":<int>,"t":<number>}]``, with or without a last id argument
      ``,"<id>"`` (a server's encoding for clients that ask for ids). Compact JSON only: an
      encoder that writes spaces, other keys or another key order takes the general path.
    - ``sse(body, pos)`` matches one whole event block at ``pos``, blank line included:
      ``event: <name>``, an ``id:`` line before or after it or none, then the one line
      ``data: {"seq":<int>,"t":<number>}`` (LF line endings: the body is normalised before).
      Any other field, a second data line, or another order takes the general path.
    """
    payload = rb'\{"seq":' + _SEQ + rb',"t":' + _NUM + rb"\}"
    ws = re.compile(rb"42\[" + re.escape(event_json) + rb"," + payload + rb'(?:,"[^"\\]*")?\]')
    id_line = rb"(?:id:[^\n]*\n)?"
    event_line = rb"event: " + re.escape(event_raw) + rb"\n"
    sse = re.compile(id_line + event_line + id_line + rb"data: " + payload + rb"\n\n")
    return ws.fullmatch, sse.match


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3: every client frame is masked, with a fresh key)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + masked
