"""A TCP forwarder between a test's client and its server, to break links the way networks do:
``blackhole()`` (the packets stop, both sockets stay open: only pings reveal it),
``drop_client_side()`` (the client's side is reset, the server's stays open and silent: the
client knows at once, the server does not), ``reset()`` (both sides reset). New connections are
always forwarded, to ``upstream``, which ``point_to`` changes (a restarted server elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

CHUNK = 65536


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a vanished peer or middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def stop(self) -> None:
        for pump in self.pumps:
            pump.cancel()


@dataclass
class TcpProxy:
    upstream: tuple[str, int]
    links: list[Link] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _kept: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def point_to(self, url: str) -> None:
        """New connections go to ``url`` (``http://host:port``) from now on."""
        self.upstream = address(url)

    def blackhole(self) -> None:
        """Every open link stops forwarding; both of its sockets stay open."""
        for link in self.links:
            link.stop()
            self._kept += [link.client, link.upstream]
        self.links.clear()

    def drop_client_side(self) -> None:
        """Reset the client's side of every open link; the server's side stays open, silent."""
        for link in self.links:
            link.stop()
            _abort(link.client)
            self._kept.append(link.upstream)
        self.links.clear()

    def reset(self) -> None:
        """Reset both sides of every open link."""
        for link in self.links:
            link.stop()
            _abort(link.client)
            _abort(link.upstream)
        self.links.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        for writer in self._kept:
            writer.transport.abort()
        self._kept.clear()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)  # nothing listens there: as a refused connection
            return
        link = Link(writer, up_writer)
        link.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]
        self.links.append(link)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: Link
    ) -> None:
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
            sink.write_eof()  # a half-close goes through as such
        except (OSError, RuntimeError):
            # One side failed: the other learns it as a reset, as through a real middlebox.
            if link in self.links:
                self.links.remove(link)
                link.stop()
                _abort(link.client)
                _abort(link.upstream)


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


@contextlib.asynccontextmanager
async def tcp_proxy(upstream_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(address(upstream_url))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
