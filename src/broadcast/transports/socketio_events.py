"""Socket.IO client events, answered the Socket.IO way: with the acknowledgement when the client
asked for one (``{ok: true, id}`` or ``{ok: false, error}``), else a refusal comes as an
``error`` event (``{event, error}``) to that client only. The client events: ``chat message``
(a string, to everyone; or ``{channel, message}``, to one channel the sender subscribes to),
``subscribe`` and ``unsubscribe`` (an array of channel names; acknowledged with
``{ok: true, channels}``, all the client's channels after the change). Any other is refused
(``unknown event``), as are events named like the server's own (``connect``, ``disconnect``:
``overrides/socketio.py`` keeps them from its handlers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from broadcast.broker import Broker, BrokerUnavailable
from broadcast.channels import parse_channel, parse_channel_list
from broadcast.errors import Refused
from broadcast.events import CHAT_MESSAGE, ERROR, Event
from broadcast.overrides.socketio import RESERVED_EVENT, GuardedServer, ack_requested
from broadcast.session import Sessions
from broadcast.users import RateLimit, parse_chat_message


class Sender(Protocol):
    """What a client event needs of its sender."""

    username: str | None
    rate_limit: RateLimit
    channels: dict[str, None]

    @property
    def gone(self) -> bool: ...


S = TypeVar("S", bound=Sender)


class ClientEvents:
    def __init__(
        self,
        server: GuardedServer,
        broker: Broker,
        chat_max_length: int,
        clients: Mapping[str, S],
        sessions: Sessions,
        subscribe: Callable[[S, list[str]], Awaitable[None]],
        unsubscribe: Callable[[S, list[str]], None],
    ) -> None:
        self._server = server
        self._broker = broker
        self._metrics = broker.metrics
        self._chat_max_length = chat_max_length
        self._clients: Mapping[str, Any] = clients
        self._sessions = sessions
        self._subscribe: Callable[[Any, list[str]], Awaitable[None]] = subscribe
        self._unsubscribe: Callable[[Any, list[str]], None] = unsubscribe

    async def subscribe(self, sid: str, *args: Any) -> dict[str, Any] | None:
        client = self._clients.get(sid)
        if client is None:  # disconnected while the event was queued
            return None
        try:
            names = self._channel_names(args)
            new = self._sessions.check_channels(client, names)
            await self._sessions.listen(new)
        except Refused as refused:
            return await self.refuse(sid, "subscribe", str(refused))
        if client.gone:
            return None
        await self._subscribe(client, new)
        return {"ok": True, "channels": list(client.channels)}

    async def unsubscribe(self, sid: str, *args: Any) -> dict[str, Any] | None:
        client = self._clients.get(sid)
        if client is None:
            return None
        try:
            names = self._channel_names(args)
        except Refused as refused:
            return await self.refuse(sid, "unsubscribe", str(refused))
        self._unsubscribe(client, names)
        return {"ok": True, "channels": list(client.channels)}

    def _channel_names(self, args: tuple[Any, ...]) -> list[str]:
        if len(args) != 1:
            raise Refused("send one argument: an array of channel names")
        return parse_channel_list(args[0], self._sessions.policy.max_per_connection)

    async def chat_message(self, sid: str, *args: Any) -> dict[str, Any] | None:
        client = self._clients.get(sid)
        if client is None:  # disconnected while the event was queued
            return None
        channel = None
        try:
            if client.username is None:
                raise Refused("choose a username to chat")
            if len(args) != 1:
                raise Refused("send one chat message: a string, or {channel, message}")
            raw = args[0]
            if isinstance(raw, dict):
                if set(raw) != {"channel", "message"}:
                    raise Refused("a chat message must be a string, or {channel, message}")
                channel = parse_channel(raw["channel"])
                if channel not in client.channels:
                    raise Refused(f"subscribe to channel {channel!r} to chat in it")
                raw = raw.get("message")
            message = parse_chat_message(raw, self._chat_max_length)
            client.rate_limit.take()
        except Refused as refused:
            return await self.refuse(sid, CHAT_MESSAGE, str(refused))
        data = {"username": client.username, "message": message}
        if channel is not None:
            data["channel"] = channel
        try:
            event_id = await self._broker.publish(Event(CHAT_MESSAGE, data, None, channel))
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
