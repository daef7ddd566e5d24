"""The event type and its wire encodings.

An event is encoded at most once per wire format, however many clients receive it: the encodings
are cached on the (immutable) event, so the fan-out loops only copy bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from sse_starlette import ServerSentEvent

USER_COUNT = "user count"
"""The server's own event: the number of connected users, a plain integer."""
USER = "user"
"""A named user joined or left: ``{username, currentUsers, connected}``."""
CHAT_MESSAGE = "chat message"
"""A chat message, as broadcast: ``{username, message}``."""
GAP = "gap"
"""Told to a reconnecting client whose last event is older than the history: ``{lastEventId,
oldestEventId}``; some events in between are lost to it."""
ERROR = "error"
"""Sent to one Socket.IO client whose event was refused: ``{event, error}``."""


def dumps(data: Any) -> str:
    """Compact JSON text (orjson: the fastest well-kept encoder)."""
    return orjson.dumps(data).decode()


@dataclass(frozen=True, eq=False)
class Event:
    """One named event with JSON data; ``id`` orders published events (``None`` for state)."""

    name: str
    data: Any
    id: str | None = None

    @cached_property
    def json_data(self) -> str:
        return dumps(self.data)

    @cached_property
    def sse_frame(self) -> bytes:
        """The Server-Sent Events frame; sse-starlette splits multi-line data and strips
        newlines from ``event`` and ``id``."""
        return ServerSentEvent(data=self.json_data, event=self.name, id=self.id, sep="\n").encode()

    @cached_property
    def socketio_text(self) -> str:
        """The Socket.IO v5 EVENT packet for the default namespace: ``2["name",data]``.

        Engine.IO adds its own ``4`` (MESSAGE) prefix when it writes the packet."""
        return f"2[{dumps(self.name)},{self.json_data}]"

    @cached_property
    def socketio_text_with_id(self) -> str:
        """The same packet with the id as a last argument, ``2["name",data,"id"]``, for clients
        that asked for ids to resume from (as Socket.IO's connection state recovery appends its
        offset); ``socketio_text`` when the event has no id."""
        if self.id is None:
            return self.socketio_text
        return f"2[{dumps(self.name)},{self.json_data},{dumps(self.id)}]"
