"""hypercorn, leaned on: ``POST /publish`` answered from the bytes hypercorn reads, before h11.

Why: a publish is the hot request of a busy deployment, and hypercorn's HTTP/1.1 path costs
about 280 µs of CPU per request above what reading and answering it take (h11's parser and
serializer, an ASGI task per request, the keep-alive timer stopped and restarted through a lock,
three writes per response): a bare ASGI app answering 202 costs 326 µs a request under
hypercorn, 42 µs under a plain asyncio protocol (docs/performance-log.md, "Channels, third
pass"). It also takes several turns of the event loop, each behind a slice of the fan-out: with
one publish in flight, that turn count, not the CPU, bounded the publish rate.

What this does: when a keep-alive HTTP/1.1 connection is between requests and one read holds
exactly one whole ``POST /publish`` with a ``Content-Length`` body, it is answered here, by the
same ``LeanPublish.answer`` the ASGI path uses, in one write. Anything else (a partial or
pipelined request, chunked bodies, ``Expect``, ``Connection`` other than keep-alive, a header
h11 would refuse, the access log on, a ``root_path``, the connection's last allowed request,
a shutdown under way) goes to h11 untouched: the parser here only decides whether to take a
request, and leaves every doubtful one to the real one, which then sees the very same bytes.

What it relies on (hypercorn 0.18): ``H11Protocol.handle(event)`` receiving each read as a
``RawData``, its ``connection`` (an ``h11.Connection``), ``stream``, ``app`` (the ``ASGIWrapper``
holding the app), ``config``, ``context``, ``keep_alive_requests`` and ``send`` (the
``TCPServer``'s ``protocol_send``, which takes ``RawData`` and ``Updated``). ``check`` looks at
them at startup; when they moved, the patch is not installed and publishes take the ASGI path
(``publish_lean.py``): the same answers, slower. ``tests/test_publish_wire.py`` checks both.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

_REQUEST_LINES = (b"POST /publish HTTP/1.1\r\n", b"POST /publish/ HTTP/1.1\r\n")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")  # h11: visible characters, tab, obs-text
_REFUSED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"te", b"http2-settings"})
_MAX_HEAD = 8192
IDLE_REFRESH_SECONDS = 1.0
"""How stale the keep-alive timer may get before a publish restarts it (hypercorn restarts it
after every request, which costs a task; here once a second at most, or a quarter of
``keep_alive_timeout`` when that is shorter, so an idle connection is closed between
``keep_alive_timeout`` minus this and ``keep_alive_timeout`` after its last publish).

hypercorn also stops the timer while a request is answered; here only once an answer has taken
as long (a broker call waiting on a stalled Redis, up to its socket timeout): the timer, last
restarted at most this long before the request came, would otherwise close the connection
under a request still being answered."""


def _refresh_seconds(protocol: Any) -> float:
    timeout: float = protocol.config.keep_alive_timeout
    return min(IDLE_REFRESH_SECONDS, timeout / 4)


class Publisher(Protocol):
    async def answer(
        self,
        authorization: str | None,
        length: str,
        read: Callable[[], Awaitable[bytes]],
        path: str = ...,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]: ...


class WirePublishing(Protocol):
    """What the patched protocol asks of the app it serves."""

    @property
    def wire_publisher(self) -> Publisher | None:
        """The publisher to answer with, or ``None`` (publishes take the ASGI path)."""

    def publishing(self, delta: int) -> None:
        """A publish begins (+1) or ends (-1): the drain counts requests in progress."""


def parse(data: bytes) -> tuple[str, str | None, str, bytes] | None:
    """``(path, authorization, content-length, body)`` when ``data`` is exactly one whole,
    unremarkable ``POST /publish`` on a keep-alive connection; ``None`` for anything else."""
    for line in _REQUEST_LINES:
        if data.startswith(line):
            break
    else:
        return None
    end = data.find(b"\r\n\r\n", 0, _MAX_HEAD)
    if end < 0:
        return None
    head = data[len(line) : end]
    # Only CRLF line ends: h11 also takes a bare LF, and would not read these lines as we do.
    if head.count(b"\r") != head.count(b"\n") or head.count(b"\r\n") != head.count(b"\n"):
        return None
    authorization: str | None = None
    length: bytes | None = None
    hosts = 0
    for field in head.split(b"\r\n") if head else ():
        colon = field.find(b":")
        if colon <= 0:
            return None
        name = field[:colon]
        if not _TOKEN.fullmatch(name):  # also refuses an obsolete line fold (leading space)
            return None
        value = field[colon + 1 :].strip(b" \t")
        if not _VALUE.fullmatch(value):
            return None
        name = name.lower()
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = value
        elif name == b"authorization":
            if authorization is not None:
                return None
            authorization = value.decode("latin-1")
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            if value.lower() != b"keep-alive":
                return None
        elif name in _REFUSED:
            return None
    if length is None or hosts != 1:
        return None
    body = data[end + 4 :]
    if len(body) != int(length):  # more (pipelined) or less (still coming): h11's
        return None
    return line[5:-11].decode(), authorization, length.decode(), body


async def _handle(protocol: Any, event: Any, original: Callable[..., Awaitable[None]]) -> None:
    if protocol.stream is None and type(event) is _RawData:
        app: Any = getattr(protocol.app, "app", None)  # a WirePublishing when it offers one
        publisher = getattr(app, "wire_publisher", None)
        if publisher is not None and _between_requests(protocol):
            request = parse(event.data)
            if request is not None:
                await _answer(protocol, app, publisher, request)
                return
    await original(protocol, event)


def _between_requests(protocol: Any) -> bool:
    connection = protocol.connection
    config = protocol.config
    return (
        type(connection) is _h11.Connection
        and connection.our_state is _h11.IDLE
        and connection.their_state is _h11.IDLE
        and not connection.trailing_data[0]
        and not protocol.context.terminated.is_set()
        and protocol.keep_alive_requests + 1 < config.keep_alive_max_requests
        and not config.root_path
        and config.log.access_logger is None
    )


async def _answer(
    protocol: Any,
    app: WirePublishing,
    publisher: Publisher,
    request: tuple[str, str | None, str, bytes],
) -> None:
    path, authorization, length, body = request
    now = time.monotonic()
    refresh = _refresh_seconds(protocol)
    if now - getattr(protocol, "_broadcast_idle_at", 0.0) > refresh:
        protocol._broadcast_idle_at = now
        await protocol.send(_Updated(idle=True))  # restarts hypercorn's keep-alive timer

    async def read() -> bytes:
        return body

    holding: list[asyncio.Task[None]] = []
    slow = asyncio.get_running_loop().call_later(refresh, _hold_open, protocol, holding)
    app.publishing(1)
    try:
        status, headers, payload = await publisher.answer(authorization, length, read, path)
    finally:
        slow.cancel()
        app.publishing(-1)
        if holding:  # the timer was stopped: restart it, as hypercorn does after a request
            await holding[0]
            protocol._broadcast_idle_at = time.monotonic()
            await protocol.send(_Updated(idle=True))
    protocol.keep_alive_requests += 1
    head = [b"HTTP/1.1 %d \r\n" % status]
    for name, value in (*headers, *protocol.config.response_headers("h11")):
        head += (name, b": ", value, b"\r\n")
    head += (b"\r\n", payload)
    await protocol.send(_RawData(data=b"".join(head)))
    await protocol.context.mark_request()


def _hold_open(protocol: Any, holding: list[asyncio.Task[None]]) -> None:
    """An answer is taking long: stop hypercorn's keep-alive timer until it is sent."""
    holding.append(asyncio.get_running_loop().create_task(protocol.send(_Updated(idle=False))))


_h11: Any = None
_RawData: Any = None
_Updated: Any = None
_installed = False


def check() -> str | None:
    """Why the patch cannot work with the hypercorn installed (``None``: it can)."""
    try:
        import h11
        from hypercorn.events import RawData, Updated
        from hypercorn.protocol.h11 import H11Protocol
    except ImportError as exc:
        return f"hypercorn's h11 protocol is not where expected ({exc})"
    if list(inspect.signature(H11Protocol.handle).parameters) != ["self", "event"]:
        return "hypercorn's H11Protocol.handle takes other arguments"
    init = inspect.signature(H11Protocol.__init__).parameters
    for name in ("app", "config", "context", "send"):
        if name not in init:
            return f"hypercorn's H11Protocol no longer takes {name!r}"
    try:
        source = inspect.getsource(H11Protocol)
    except (OSError, TypeError):  # installed without its sources: nothing to check against
        return "hypercorn's H11Protocol source is not available to check"
    for attribute in ("self.stream", "self.connection", "self.keep_alive_requests"):
        if attribute not in source:
            return f"hypercorn's H11Protocol has no {attribute}"
    for cls, field in ((RawData, "data"), (Updated, "idle")):
        if field not in inspect.signature(cls).parameters:
            return f"hypercorn's {cls.__name__} has no {field!r}"
    for attribute in ("IDLE", "Connection"):
        if not hasattr(h11, attribute):
            return f"h11 has no {attribute}"
    return None


def install() -> str | None:
    """Patch ``H11Protocol.handle`` (once per process); why it could not be (``None``: done).

    The patch serves only apps that offer a ``wire_publisher``: any other app in the process
    (or this one with the override off) goes through hypercorn as before."""
    global _h11, _RawData, _Updated, _installed
    if _installed:
        return None
    if (problem := check()) is not None:
        return problem
    import h11
    from hypercorn.events import RawData, Updated
    from hypercorn.protocol.h11 import H11Protocol

    _h11, _RawData, _Updated = h11, RawData, Updated
    original = H11Protocol.handle

    async def handle(self: Any, event: Any) -> None:
        await _handle(self, event, original)

    handle.__doc__ = f"{original.__doc__ or ''} (broadcast: publishes answered first)"
    H11Protocol.handle = handle  # type: ignore[method-assign]
    _installed = True
    return None
