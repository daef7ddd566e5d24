"""``POST /publish`` served straight from ASGI, below Litestar.

Why: a publish is the hot request of a busy deployment (a backend pushing hundreds of events a
second), and Litestar's request machinery (routing, the guard, dependency and signature models,
the response object) cost about as much as hypercorn's own HTTP parsing, some 300 µs of a
600-800 µs request, a third of a core at 500 publishes/s (docs/performance-log.md, "The lean
publish route"). This handler does the same checks in the same order with the same functions
(``publish.py``: the token, the size, the JSON and its shape, the name and channel, the grant)
and answers with the same JSON bodies; only the plumbing is its own.

The Litestar route stays: it documents ``/publish`` in the schema, and serves what this one does
not take (a path under a ``root_path``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from broadcast.broker import Broker
from broadcast.metrics import Metrics
from broadcast.publish import (
    PublishRequest,
    PublishTokens,
    checked_event,
    deliver,
    lone_surrogate_refusal,
    too_large,
)

logger = logging.getLogger(__name__)

PATHS = frozenset({"/publish", "/publish/"})

LINGER_BYTES = 1 << 20
"""How much of a body over the limit is read and dropped before the 413."""

_JSON_HEADERS = [(b"content-type", b"application/json")]
_DECODER = msgspec.json.Decoder(PublishRequest)
_AT_PATH = re.compile(r" - at `\$\.?(?P<key>[^`]*)`$")


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


class LeanPublish:
    def __init__(
        self, broker: Broker, tokens: PublishTokens, max_bytes: int, metrics: Metrics
    ) -> None:
        self._broker = broker
        self._early = metrics.publish_early
        self._asgi = metrics.publish_asgi
        self._tokens = tokens
        self._max_bytes = max_bytes

    @staticmethod
    def takes(scope: dict[str, Any]) -> bool:
        return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in PATHS

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        authorization, length = request_headers(scope["headers"])
        try:
            status, headers, body = await self.answer(
                authorization, length, lambda: self._body(receive), scope["path"], early=False
            )
        except _Disconnected:
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(
        self,
        authorization: str | None,
        length: str,
        read: Callable[[], Awaitable[bytes]],
        path: str = "/publish",
        early: bool = True,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The response to a publish: its status, headers (``content-length`` included) and
        body. ``read`` gives the body; it is called only once the token and the declared size
        pass (``overrides/hypercorn_h11.py`` hands one it already holds, ``early``)."""
        (self._early if early else self._asgi).inc()
        status, body, headers = HTTP_202_ACCEPTED, b"", _JSON_HEADERS
        try:
            body = msgspec.json.encode({"id": await self._publish(authorization, length, read)})
        except HTTPException as exc:
            status, body = exc.status_code, error_body(exc)
            if exc.headers:
                headers = [
                    *headers,
                    *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
                ]
        except _Disconnected:
            raise
        except Exception:
            # A bug, not the client's fault: its traceback, and Litestar's answer to one.
            logger.exception("unexpected error on POST %s", path)
            status, body = 500, b'{"status_code":500,"detail":"Internal Server Error"}'
        return status, [*headers, (b"content-length", str(len(body)).encode())], body

    async def _publish(
        self, authorization: str | None, length: str, read: Callable[[], Awaitable[bytes]]
    ) -> str:
        # The order of publish.py: the token and its rate, then the size, then the body.
        publisher = self._tokens.publisher(authorization)
        if length.isdigit() and int(length) > self._max_bytes:
            raise too_large(length, self._max_bytes)
        data = await read()
        if refusal := lone_surrogate_refusal(data):
            raise refusal
        event = checked_event(decode(data), publisher)
        return (await deliver(self._broker, [event]))[0]

    async def _body(self, receive: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self._max_bytes:  # a body without Content-Length, or longer than it said
                # Read on (a little) before answering: a client still sending when the socket
                # closes would get a reset instead of the 413.
                if more and size <= self._max_bytes + LINGER_BYTES:
                    continue
                raise ClientException(
                    status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail="Request Entity Too Large"
                )
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)


def request_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str]:
    """The ``Authorization`` and ``Content-Length`` of a request ("" when it has none)."""
    authorization: str | None = None
    length = ""
    for name, value in headers:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length":
            length = value.decode("latin-1")
    return authorization, length


def decode(data: bytes) -> PublishRequest:
    """The request, or a 400 as Litestar words it (``extra`` says what and where)."""
    if not data.strip():
        raise ClientException(detail="malformed JSON: the body is empty")
    try:
        return _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        message, key = str(exc), "body"
        if found := _AT_PATH.search(message):
            message, key = message[: found.start()], found["key"] or "body"
        raise ValidationException(
            detail="Validation failed for POST /publish",
            extra=[{"message": message, "key": key, "source": "body"}],
        ) from None
    except msgspec.DecodeError as exc:
        raise ClientException(detail=f"malformed JSON: {exc}") from None


def error_body(exc: HTTPException) -> bytes:
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return msgspec.json.encode(body)
