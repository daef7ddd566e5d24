"""Socket.IO client events, answered the Socket.IO way: with the acknowledgement when the client
asked for one (``{ok: true, id}`` or ``{ok: false, error}``), else a refusal comes as an
``error`` event (``{event, error}``) to that client only. ``chat message`` is the one client
event there is; any other is refused (``unknown event``), as are events named like the server's
own (``connect``, ``disconnect``: ``overrides/socketio.py`` keeps them from its handlers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from broadcast.broker import Broker, BrokerUnavailable
from broadcast.errors import Refused
from broadcast.events import CHAT_MESSAGE, ERROR, Event
from broadcast.overrides.socketio import RESERVED_EVENT, GuardedServer, ack_requested
from broadcast.users import RateLimit, parse_chat_message


class Sender(Protocol):
    """What a client event needs of its sender."""

    username: str | None
    rate_limit: RateLimit


class ClientEvents:
    def __init__(
        self,
        server: GuardedServer,
        broker: Broker,
        chat_max_length: int,
        clients: Mapping[str, Sender],
    ) -> None:
        self._server = server
        self._broker = broker
        self._metrics = broker.metrics
        self._chat_max_length = chat_max_length
        self._clients = clients

    async def chat_message(self, sid: str, *args: Any) -> dict[str, Any] | None:
        client = self._clients.get(sid)
        if client is None:  # disconnected while the event was queued
            return None
        try:
            if client.username is None:
                raise Refused("choose a username to chat")
            if len(args) != 1:
                raise Refused("send one chat message, a string")
            message = parse_chat_message(args[0], self._chat_max_length)
            client.rate_limit.take()
        except Refused as refused:
            return await self.refuse(sid, CHAT_MESSAGE, str(refused))
        try:
            event_id = await self._broker.publish(
                Event(CHAT_MESSAGE, {"username": client.username, "message": message})
            )
        except BrokerUnavailable:
            return await self.refuse(sid, CHAT_MESSAGE, "chat is unavailable for a moment")
        self._metrics.published.labels("chat").inc()
        return {"ok": True, "id": event_id}

    async def unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any] | None:
        if event == RESERVED_EVENT:
            event = str(args[0])
            return await self.refuse(sid, event, f"event {event!r} is reserved for the server")
        return await self.refuse(sid, event, f"unknown event {event!r}")

    async def refuse(self, sid: str, event: str, error: str) -> dict[str, Any] | None:
        self._metrics.refused.labels("client event").inc()
        if ack_requested.get(False):
            return {"ok": False, "error": error}
        await self._server.emit(ERROR, {"event": event, "error": error}, to=sid)
        return None
