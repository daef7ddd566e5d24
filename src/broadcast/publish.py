"""The HTTP publish API: ``POST /publish`` (one event) and ``POST /publish/batch`` (several).

For backends that cannot hold a connection (serverless functions, cron jobs, scripts): one
request, and every client of every transport receives the event, or, with ``channel``, every
subscriber of that channel. Order of checks, each answered with a JSON error and nothing
published: the bearer token (401; ``publish_auth.py``), the per-token rate (429 with
``Retry-After``), the body size (413: ``Content-Length`` here, and Litestar while reading), the
JSON and its shape (400, unknown fields included, so a misspelt field is not silently ignored),
the event name and the channel name (400), the channel against a scoped token's grant (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ClientException,
    PermissionDeniedException,
    SerializationException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Schema
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from broadcast.broker import Broker, BrokerUnavailable
from broadcast.channels import CHANNEL_PATTERN, MAX_CHANNEL_LENGTH, parse_channel
from broadcast.errors import Refused
from broadcast.events import CHAT_MESSAGE, ERROR, GAP, USER, USER_COUNT, Event
from broadcast.lone_surrogates import lone_surrogate
from broadcast.publish_auth import Publisher, authorize, publisher_of
from broadcast.publish_auth import PublishTokens as PublishTokens  # channels_api.py's import
from broadcast.publish_auth import publish_tokens as publish_tokens  # app.py's import
from broadcast.settings import Settings

EVENT_NAME_MAX_LENGTH = 100
RESERVED_EVENT_NAMES = frozenset(
    {
        # the server's own events
        USER_COUNT,
        USER,
        CHAT_MESSAGE,
        ERROR,
        GAP,
        # names Socket.IO clients reserve for themselves
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
        # EventSource's default event name
        "message",
    }
)


EVENT_NAME_PATTERN = r"^[^\r\n]*$"
"""No line break (it would end the SSE ``event:`` line). For the schema: check_event_name
enforces it."""

EventName = Annotated[
    str,
    # Documentation only: msgspec would refuse with its own terse messages, check_event_name
    # with clear ones (and a batch says which event). Litestar reads "extra" into the schema.
    msgspec.Meta(
        extra_json_schema={
            "description": "The event name clients listen for (`socket.on(name)`, SSE "
            f"`event: name`): 1 to {EVENT_NAME_MAX_LENGTH} characters, no line break, not one of "
            "the server's own or Socket.IO's reserved names.",
            "extra": {
                "minLength": 1,
                "maxLength": EVENT_NAME_MAX_LENGTH,
                "pattern": EVENT_NAME_PATTERN,
                "not": Schema(enum=sorted(RESERVED_EVENT_NAMES)),
            },
        }
    ),
]


ChannelName = Annotated[
    str,
    # Documentation only, as for EventName: parse_channel says what is wrong.
    msgspec.Meta(
        extra_json_schema={
            "description": "The channel whose subscribers receive the event; absent or null: "
            f"every client. 1 to {MAX_CHANNEL_LENGTH} ASCII letters, digits and `_ - . : @ / = +`. "
            "A scoped publish token (claim `publish`) must match it.",
            "extra": {
                "minLength": 1,
                "maxLength": MAX_CHANNEL_LENGTH,
                "pattern": CHANNEL_PATTERN,
            },
        }
    ),
]


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    event: EventName
    """The event name clients listen for (``socket.on(name)``, SSE ``event: name``)."""
    data: Any = None
    """Any JSON value; clients receive it as is."""
    channel: ChannelName | None = None
    """The channel whose subscribers receive the event (``None``: every client)."""


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    events: list[PublishRequest]


@dataclass(frozen=True)
class Published:
    id: str
    """The event's id (SSE ``id:``); ids order events."""


@dataclass(frozen=True)
class BatchPublished:
    ids: list[str]


@dataclass(frozen=True)
class ErrorBody:
    status_code: int
    detail: str


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


ERROR_RESPONSES = {
    400: _error(
        "Malformed JSON, a body of the wrong shape, an invalid event name "
        "(empty, too long, reserved, or with a line break) or an invalid channel name"
    ),
    401: _error("Missing or wrong bearer token, or an expired scoped token"),
    403: _error(
        "A scoped token (JWT with a `publish` claim) publishing to a channel it does not "
        "match, or to everyone; or a signed token without a `publish` claim"
    ),
    413: _error("Body larger than BROADCAST_PUBLISH_MAX_BYTES"),
    429: _error("Too many requests for this token; see the Retry-After header"),
    503: _error("The broker cannot deliver now (e.g. Redis is unreachable); nothing published"),
}


def check_event_name(name: str) -> None:
    if not name:
        raise ValidationException(detail="event name must not be empty")
    if len(name) > EVENT_NAME_MAX_LENGTH:
        raise ValidationException(
            detail=f"event name must be at most {EVENT_NAME_MAX_LENGTH} characters"
        )
    if "\n" in name or "\r" in name:
        raise ValidationException(detail="event name must not contain a line break")
    if name in RESERVED_EVENT_NAMES:
        raise ValidationException(detail=f"event name {name!r} is reserved for the server")


def checked_event(request: PublishRequest, publisher: Publisher) -> Event:
    """The event, once its name and channel are valid, the publisher may publish there, and its
    data can be sent to every client."""
    check_event_name(request.event)
    channel = request.channel
    if channel is not None:
        try:
            parse_channel(channel)
        except Refused as refused:
            raise ValidationException(detail=str(refused)) from None
    event = Event(request.event, request.data, channel=channel)
    try:
        event.json_data  # noqa: B018 - encode now: JSON that orjson refuses is a 400, not a crash
    except TypeError as exc:
        raise ValidationException(detail=f"data cannot be sent: {exc}") from None
    # Last: every 400 (what is wrong with the request) before a 403 (who may not send it).
    if refusal := publisher.refusal(channel):
        raise PermissionDeniedException(detail=refusal)
    return event


def _client_error(_: Request[Any, Any, Any], exc: ClientException) -> Response[dict[str, Any]]:
    """Litestar's error body, with a JSON decoding error saying so (msgspec's own message
    alone, such as "Input data was truncated", does not say it was the JSON)."""
    detail = exc.detail
    if isinstance(exc.__cause__, SerializationException):
        detail = f"malformed JSON: {detail}"
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=exc.status_code, headers=exc.headers)


async def refuse_lone_surrogates(request: Request[Any, Any, Any]) -> None:
    """Before the body is decoded (Litestar keeps it for that)."""
    if refusal := lone_surrogate_refusal(await request.body()):
        raise refusal


async def deliver(broker: Broker, events: list[Event]) -> list[str]:
    """Publish ``events`` in order; their ids. 503 if the broker cannot take them now."""
    ids: list[str] = []
    for event in events:
        try:
            with broker.metrics.publish_seconds.time():
                ids.append(await broker.publish(event))
            broker.metrics.published.labels("http").inc()
        except BrokerUnavailable as exc:
            # Refuse rather than accept what cannot be delivered; a batch cut short says
            # which events did go out, so a retry can skip them.
            raise ServiceUnavailableException(
                detail=f"cannot deliver now: {exc}; published {len(ids)} of {len(events)}",
                headers={"Retry-After": "1"},
                extra={"published_ids": ids},
            ) from exc
    return ids


def too_large(length: str, limit: int) -> ClientException:
    return ClientException(
        status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        detail=f"body of {length} bytes is over the limit of {limit} (BROADCAST_PUBLISH_MAX_BYTES)",
    )


def lone_surrogate_refusal(body: bytes) -> ClientException | None:
    """A clear 400 for JSON whose text is not Unicode, which the decoder would call
    "truncated"."""
    if where := lone_surrogate(body):
        return ClientException(
            detail=f"malformed JSON: {where}: JSON text must be valid Unicode (a \\ud800-\\udbff "
            "escape must be followed by a \\udc00-\\udfff one)"
        )
    return None


def create_publish_router(settings: Settings, broker: Broker, tokens: PublishTokens) -> Router:
    # async: Litestar runs a plain function guard in a worker thread, which cost a quarter of a
    # publish's CPU (docs/performance-log.md, "Channels").
    async def authorized(
        connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        authorize(connection, tokens)
        length = connection.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.publish_max_bytes:
            raise too_large(length, settings.publish_max_bytes)

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Publish one event to every client, or to one channel",
        description="Socket.IO clients receive `socket.on(event, data)`; SSE clients receive "
        "`event:`, `id:` and `data:` (JSON). Without `channel` every client receives it; with "
        "`channel`, only that channel's subscribers. Needs `Authorization: Bearer <token>`: a "
        "static token (`BROADCAST_PUBLISH_TOKEN`) publishes anywhere; a scoped token (an HS256 "
        "JWT signed with `BROADCAST_JWT_SECRET`, with `exp` and a `publish` claim listing "
        "channel names or glob patterns) only to the channels it matches, never to everyone.",
        responses=ERROR_RESPONSES,
    )
    async def publish(request: Request[Any, Any, Any], data: PublishRequest) -> Published:
        event = checked_event(data, publisher_of(request))
        return Published(id=(await deliver(broker, [event]))[0])

    @post(
        "/batch",
        status_code=HTTP_202_ACCEPTED,
        summary="Publish several events, in order",
        description="Each event as in `POST /publish`, with its own `channel`. All events are "
        "checked first (names, channels, the token's grant): one bad event refuses the whole "
        "batch, and the error says which (`events[2]: ...`).",
        responses=ERROR_RESPONSES,
    )
    async def publish_batch(request: Request[Any, Any, Any], data: BatchRequest) -> BatchPublished:
        if not data.events:
            raise ValidationException(detail="events must not be empty")
        publisher = publisher_of(request)
        events = []
        for index, item in enumerate(data.events):
            try:
                events.append(checked_event(item, publisher))
            except (ValidationException, PermissionDeniedException) as exc:
                raise type(exc)(detail=f"events[{index}]: {exc.detail}") from None
        return BatchPublished(ids=await deliver(broker, events))

    return Router(
        path="/publish",
        route_handlers=[publish, publish_batch],
        guards=[authorized],
        before_request=refuse_lone_surrogates,
        request_max_body_size=settings.publish_max_bytes,
        exception_handlers={ClientException: _client_error},
        tags=["publish"],
    )
