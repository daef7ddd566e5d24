"""``GET /channels`` and ``GET /channels/{name}``: the channels with subscribers and who is in
one, over every node, for backends (behind the publish token, like ``POST /publish``: who is
online is not for every visitor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Router, get
from litestar.connection import ASGIConnection
from litestar.exceptions import ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter

from broadcast.broker import PresenceBackend
from broadcast.channels import parse_channel
from broadcast.errors import Refused
from broadcast.publish_auth import PublishTokens

MAX_PAGE = 1000


@dataclass(frozen=True)
class ChannelCount:
    name: str
    count: int
    """Subscribers over every transport and node."""


@dataclass(frozen=True)
class ChannelPage:
    channels: list[ChannelCount]
    """Channels with subscribers, by name."""
    next: str | None
    """Pass it as ``after`` for the next page; ``null`` on the last page."""


@dataclass(frozen=True)
class ChannelPresenceInfo:
    name: str
    count: int
    """Subscribers over every transport and node (0: nobody; a channel needs no creating)."""
    users: list[str]
    """The named users subscribed, sorted (anonymous subscribers are counted, not listed)."""


def _channel(raw: str) -> str:
    try:
        return parse_channel(raw)
    except Refused as refused:
        raise ValidationException(detail=str(refused)) from None


def create_channels_router(presence: PresenceBackend, tokens: PublishTokens) -> Router:
    def authorized(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        tokens.check(connection.headers.get("authorization"))

    @get(
        "/",
        summary="Channels with subscribers, with their counts",
        description="Over every node, sorted by name; `prefix` filters, `after` and `limit` "
        "page through them. Needs `Authorization: Bearer <publish token>`.",
    )
    async def channels(
        prefix: str = "",
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = 100,
    ) -> ChannelPage:
        if len(prefix) > 200:
            raise ValidationException(detail="prefix must be at most 200 characters")
        if after is not None:
            _channel(after)
        found = await presence.channels(prefix, after, limit + 1)
        page = [ChannelCount(name, count) for name, count in found[:limit]]
        return ChannelPage(page, page[-1].name if len(found) > limit else None)

    @get(
        "/{name:path}",
        summary="One channel: its count and the named users present",
        description="Needs `Authorization: Bearer <publish token>`.",
    )
    async def channel(name: str) -> ChannelPresenceInfo:
        name = _channel(name.removeprefix("/"))
        count, users = await presence.channel(name)
        return ChannelPresenceInfo(name, count, users)

    return Router(
        path="/channels", route_handlers=[channels, channel], guards=[authorized], tags=["channels"]
    )
