"""The HTTP publish API: ``POST /publish`` (one event) and ``POST /publish/batch`` (several).

For backends that cannot hold a connection (serverless functions, cron jobs, scripts): one
request, and every client of every transport receives the event. Order of checks, each answered
with a JSON error and nothing published: the bearer token (401), the per-token rate (429 with
``Retry-After``), the body size (413: ``Content-Length`` here, and Litestar while reading), the
JSON and its shape (400, unknown fields included, so a misspelt field is not silently ignored),
the event name (400).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    SerializationException,
    ServiceUnavailableException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Schema
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from broadcast.broker import Broker, BrokerUnavailable
from broadcast.errors import Refused
from broadcast.events import CHAT_MESSAGE, ERROR, GAP, USER, USER_COUNT, Event
from broadcast.lone_surrogates import lone_surrogate
from broadcast.settings import Settings
from broadcast.users import RateLimit

logger = logging.getLogger(__name__)

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


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    event: EventName
    """The event name clients listen for (``socket.on(name)``, SSE ``event: name``)."""
    data: Any = None
    """Any JSON value; clients receive it as is."""


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
        "Malformed JSON, a body of the wrong shape, or an invalid event name "
        "(empty, too long, reserved, or with a line break)"
    ),
    401: _error("Missing or wrong bearer token"),
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


def checked_event(request: PublishRequest) -> Event:
    """The event, once its name is valid and its data can be sent to every client."""
    check_event_name(request.event)
    event = Event(request.event, request.data)
    try:
        event.json_data  # noqa: B018 - encode now: JSON that orjson refuses is a 400, not a crash
    except TypeError as exc:
        raise ValidationException(detail=f"data cannot be sent: {exc}") from None
    return event


class PublishTokens:
    """The accepted bearer tokens, each with its own rate limit; compared in constant time."""

    def __init__(self, tokens: Sequence[str], rate: float, burst: int) -> None:
        self._tokens = [token.encode() for token in tokens]
        self._limits = [RateLimit(rate, burst) for _ in tokens]

    def check(self, authorization: str | None) -> None:
        scheme, _, presented = (authorization or "").partition(" ")
        candidate = presented.strip().encode()
        matched = None
        # Compare with every token, so the time taken says nothing about which one is close.
        for index, token in enumerate(self._tokens):
            if hmac.compare_digest(candidate, token):
                matched = index
        if scheme.lower() != "bearer" or not candidate or matched is None:
            raise NotAuthorizedException(
                detail="missing or invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="publish"'},
            )
        try:
            self._limits[matched].take()
        except Refused as refused:
            raise TooManyRequestsException(
                detail=str(refused),
                headers={"Retry-After": str(max(1, round(refused.retry_after or 1)))},
            ) from None


def publish_tokens(settings: Settings) -> PublishTokens:
    tokens = [token.get_secret_value() for token in settings.publish_token]
    if not tokens:
        tokens = [secrets.token_urlsafe(32)]
        # Logged once, here, so it works out of the box; set BROADCAST_PUBLISH_TOKEN to choose.
        logger.warning(
            "no BROADCAST_PUBLISH_TOKEN set: publish with 'Authorization: Bearer %s' "
            "(generated for this process only)",
            tokens[0],
        )
    return PublishTokens(tokens, settings.publish_rate_per_second, settings.publish_burst)


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
    """Before the body is decoded (Litestar keeps it for that): a clear 400 for JSON whose
    text is not Unicode, which the decoder would call "truncated"."""
    if where := lone_surrogate(await request.body()):
        raise ClientException(
            detail=f"malformed JSON: {where}: JSON text must be valid Unicode (a \\ud800-\\udbff "
            "escape must be followed by a \\udc00-\\udfff one)"
        )


def create_publish_router(settings: Settings, broker: Broker, tokens: PublishTokens) -> Router:
    def authorized(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        tokens.check(connection.headers.get("authorization"))
        length = connection.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.publish_max_bytes:
            raise ClientException(
                status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                detail=f"body of {length} bytes is over the limit of "
                f"{settings.publish_max_bytes} (BROADCAST_PUBLISH_MAX_BYTES)",
            )

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Publish one event to every client",
        description="Socket.IO clients receive `socket.on(event, data)`; SSE clients receive "
        "`event:`, `id:` and `data:` (JSON). Needs `Authorization: Bearer <token>`.",
        responses=ERROR_RESPONSES,
    )
    async def publish(data: PublishRequest) -> Published:
        event = checked_event(data)
        return Published(id=(await deliver([event]))[0])

    @post(
        "/batch",
        status_code=HTTP_202_ACCEPTED,
        summary="Publish several events, in order",
        description="All events are checked first: one bad event refuses the whole batch.",
        responses=ERROR_RESPONSES,
    )
    async def publish_batch(data: BatchRequest) -> BatchPublished:
        if not data.events:
            raise ValidationException(detail="events must not be empty")
        events = []
        for index, request in enumerate(data.events):
            try:
                events.append(checked_event(request))
            except ValidationException as exc:
                raise ValidationException(detail=f"events[{index}]: {exc.detail}") from None
        return BatchPublished(ids=await deliver(events))

    async def deliver(events: list[Event]) -> list[str]:
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

    return Router(
        path="/publish",
        route_handlers=[publish, publish_batch],
        guards=[authorized],
        before_request=refuse_lone_surrogates,
        request_max_body_size=settings.publish_max_bytes,
        exception_handlers={ClientException: _client_error},
        tags=["publish"],
    )
