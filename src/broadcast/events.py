"""The event type, its wire encodings, and its ids.

An event is encoded at most once per wire format, however many clients receive it: the encodings
are cached on the (immutable) event, so the fan-out loops only copy bytes.

An event id is ``<epoch>:<offset>`` (``EventId``), opaque to clients: they only hand it back.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import orjson
from sse_starlette import ServerSentEvent

USER_COUNT = "user count"
"""The server's own event: the number of connected users, a plain integer."""
CHANNEL_COUNT = "channel count"
"""The subscribers of one channel, over every transport and node: ``{channel, count}``; sent to
that channel's subscribers only."""
USER = "user"
"""A named user joined or left: ``{username, currentUsers, connected}``; or joined or left a
channel: ``{username, channel, count, connected}``, to that channel's subscribers."""
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
    """One named event with JSON data; ``id`` orders published events (``None`` for state).
    ``channel``: the channel it was published to (``None``: to everyone). Never on the wire:
    clients receive it exactly as an event to everyone."""

    name: str
    data: Any
    id: str | None = None
    channel: str | None = None

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


# ---------------------------------------------------------------------------- event ids

EPOCH_LENGTH = 8
"""Characters of an epoch: 8 of ``[a-z2-7]`` (base32 of 40 random bits), so two incarnations of a
stream practically never share one."""
MAX_EVENT_ID_LENGTH = 64
"""Longer text is not an id of ours, and is refused before any parsing."""

# ``<epoch>:<offset>``: the offset in canonical decimal (no sign, no leading zero, ASCII digits
# only, at most 16 of them); ``[0-9]`` rather than ``\d``, which would take '١٢٣'. ``fullmatch``
# takes no trailing newline, unlike ``$``.
_EVENT_ID = re.compile(r"([0-9a-z]{1,16}):(0|[1-9][0-9]{0,15})")


class EventId(NamedTuple):
    """Where an event stands among every event of the service: ``offset`` counts the events of
    every channel (and those to everyone) in one sequence, from 1, within one incarnation
    (``epoch``) of it, so one id says where a client of several channels stands. A new epoch
    begins whenever the sequence's state is lost (an in-process server restarts, Redis loses
    its data): offsets of two epochs are never compared."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


def new_epoch() -> str:
    """A fresh random epoch (the Redis backend proposes one with every publish: cheap)."""
    return base64.b32encode(os.urandom(5)).decode().lower()


def parse_event_id(text: str) -> EventId | None:
    """The position an id stands for; ``None`` for anything that is not an id this server gives
    (of any length, any characters: a client's ``Last-Event-ID`` is untrusted)."""
    if len(text) > MAX_EVENT_ID_LENGTH:
        return None
    match = _EVENT_ID.fullmatch(text)
    if match is None:
        return None
    return EventId(match[1], int(match[2]))
