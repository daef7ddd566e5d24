"""The send watchdog, below the transports: a fake socket and a fake ASGI ``send`` stand in for
hypercorn's (the transports' own tests drive the real ones, tests/test_slow_clients.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from broadcast.watchdog import (
    HTTP_GONE,
    STALLED_BYTES,
    ClientTooSlow,
    SendWatchdog,
    WatchedConnection,
)
from tests.support import until


class FakeSocket:
    """A socket whose unsent bytes a test sets (``buffered``), as the client reads or not."""

    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False
        self.written = b""
        self.reading = True
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.eof, "a write after the FIN"
        self.buffered += len(data)
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


def evicted() -> Counter:
    return Counter("evicted", "evicted", ["reason"], registry=CollectorRegistry())


async def never_receive() -> Any:
    await asyncio.Event().wait()


async def no_send(message: Any) -> None:
    pass


def test_a_direct_write_within_the_socket_buffer_is_never_too_slow() -> None:
    socket = FakeSocket()
    connection = WatchedConnection(no_send, never_receive, HTTP_GONE, socket)
    assert connection.writable
    assert connection.write(b"x" * STALLED_BYTES, budget=1 << 20) is False
    assert connection.stalled_since is None


def test_over_budget_only_counts_bytes_the_client_had_not_taken_before() -> None:
    socket = FakeSocket()
    connection = WatchedConnection(no_send, never_receive, HTTP_GONE, socket)
    budget = 100_000
    # One event larger than the budget still goes out to a client that had taken everything.
    assert connection.write(b"x" * (budget * 2), budget) is False
    assert connection.stalled_since is not None
    # More on top of what it has not read: too slow.
    assert connection.write(b"y", budget) is True


def test_a_stalled_socket_is_stuck_after_the_timeout_unless_the_client_catches_up() -> None:
    socket = FakeSocket()
    connection = WatchedConnection(no_send, never_receive, HTTP_GONE, socket)
    connection.write(b"x" * (STALLED_BYTES + 1), budget=1 << 20)
    stalled = connection.stalled_since
    assert stalled is not None
    assert not connection.stuck(stalled + 5, timeout=10)
    assert connection.stuck(stalled + 11, timeout=10)
    socket.buffered = 0  # the client read it all
    assert not connection.stuck(stalled + 11, timeout=10)
    assert connection.stalled_since is None


async def test_expiring_cancels_a_blocked_write_which_raises_too_slow() -> None:
    blocked = asyncio.Event()

    async def send_blocks(message: Any) -> None:
        blocked.set()
        await asyncio.Event().wait()  # the client's TCP buffers are full

    socket = FakeSocket()
    connection = WatchedConnection(send_blocks, never_receive, HTTP_GONE, socket)
    writer = asyncio.create_task(connection.send({"type": "http.response.body"}))
    await asyncio.wait_for(blocked.wait(), 5)
    assert connection.since is not None
    connection.expire()
    with pytest.raises(ClientTooSlow):
        await asyncio.wait_for(writer, 5)
    assert socket.aborted
    assert not connection.writable
    await connection.send({"type": "http.response.body"})  # after the cut: nothing, no error


async def test_expiring_ends_a_pending_receive_as_a_disconnect() -> None:
    connection = WatchedConnection(no_send, never_receive, HTTP_GONE, None)
    receiving = asyncio.create_task(connection.receive())
    await until(lambda: connection._receiving is not None, 5, "the receive to start")
    connection.expire()
    assert await asyncio.wait_for(receiving, 5) == HTTP_GONE
    assert await connection.receive() == HTTP_GONE  # and every one after


async def test_a_cancelled_write_that_was_not_expired_stays_a_cancellation() -> None:
    async def send_blocks(message: Any) -> None:
        await asyncio.Event().wait()

    connection = WatchedConnection(send_blocks, never_receive, HTTP_GONE, None)
    writer = asyncio.create_task(connection.send({}))
    await until(lambda: connection.since is not None, 5, "the write to start")
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer


async def test_the_sweep_expires_only_connections_stuck_longer_than_the_timeout() -> None:
    watchdog = SendWatchdog(timeout=10, evicted=evicted())
    stuck_socket, fine_socket = FakeSocket(), FakeSocket()
    stuck = watchdog.watch(no_send, never_receive, HTTP_GONE, stuck_socket)
    fine = watchdog.watch(no_send, never_receive, HTTP_GONE, fine_socket)
    stuck.write(b"x" * (STALLED_BYTES + 1), budget=1 << 20)
    fine.write(b"x", budget=1 << 20)
    assert watchdog.sweep() == 0  # not for long enough yet
    assert stuck.stalled_since is not None
    stuck.stalled_since -= 11  # as if 11 s had passed
    assert watchdog.sweep() == 1
    assert stuck.expired
    assert stuck_socket.aborted
    assert not fine.expired
    assert not fine_socket.aborted
    assert watchdog.sweep() == 0  # expired once, then forgotten


def test_a_forgotten_connection_is_never_swept() -> None:
    watchdog = SendWatchdog(timeout=1, evicted=evicted())
    connection = watchdog.watch(no_send, never_receive, HTTP_GONE, None)
    connection.since = time.monotonic() - 60
    watchdog.forget(connection)
    assert watchdog.sweep() == 0
    assert not connection.expired


async def test_the_drain_ends_from_under_the_app_only_connections_given_their_goodbye() -> None:
    watchdog = SendWatchdog(timeout=10, evicted=evicted())
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    stream_socket, websocket_socket, other_socket = FakeSocket(), FakeSocket(), FakeSocket()
    stream = watchdog.watch(send, never_receive, HTTP_GONE, stream_socket)
    websocket = watchdog.watch(send, never_receive, HTTP_GONE, websocket_socket, b"bye")
    other = watchdog.watch(send, never_receive, HTTP_GONE, other_socket, b"bye")
    no_socket = watchdog.watch(send, never_receive, HTTP_GONE, None)
    no_socket.goodbye = b"end"
    stream.goodbye = b"end"  # the transport: its head is out
    await websocket.send({"type": "websocket.accept"})  # its handshake is out
    await other.send({"type": "websocket.http.response.start"})  # refused: never a websocket
    assert websocket.goodbye == b"bye"
    assert other.goodbye is None

    assert watchdog.say_goodbye() == 2
    assert stream_socket.written == b"end"
    assert websocket_socket.written == b"bye"
    for socket in (stream_socket, websocket_socket):
        assert socket.eof, "a FIN after the goodbye"
        assert not socket.reading, "the app never hears the client's close"
        assert not socket.aborted
    assert (other_socket.written, other_socket.eof, other_socket.reading) == (b"", False, True)
    assert [c.said_goodbye for c in (stream, websocket, other, no_socket)] == [
        True,
        True,
        False,
        False,
    ]
    assert watchdog.ended_from_under == 2

    sent.clear()
    await stream.send({"type": "http.response.body", "body": b"late"})
    assert sent == [], "nothing goes out after the goodbye"
    assert not stream.writable, "nor directly"
    assert watchdog.say_goodbye() == 0, "once"
    watchdog.forget(websocket)  # its request returned after all
    assert watchdog.ended_from_under == 1


async def test_a_socket_that_fails_its_goodbye_is_aborted() -> None:
    class BrokenSocket(FakeSocket):
        def write(self, data: bytes) -> None:
            raise ConnectionResetError("the client went away meanwhile")

    socket = BrokenSocket()
    connection = WatchedConnection(no_send, never_receive, HTTP_GONE, socket)
    connection.goodbye = b"end"
    assert connection.say_goodbye() is True
    assert socket.aborted, "the app hears of it and unwinds it the usual way"
    assert not connection.writable


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_direct_writes_use_the_descriptor_of_plain_tcp_only(loop_kind: str, tmp_path: Any) -> None:
    """A plain TCP transport's descriptor is written to; a TLS transport's never (its socket
    carries records, not the bytes written), under both event loops."""
    import shutil
    import ssl
    import subprocess

    import uvloop

    from broadcast.watchdog import raw_fd

    openssl = shutil.which("openssl")
    assert openssl, "needs the openssl command: run scripts/setup --dev"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_tls.load_verify_locations(cert)

    async def main() -> tuple[int | None, int | None]:
        loop = asyncio.get_running_loop()
        found: dict[str, int | None] = {}

        def protocol(name: str) -> type[asyncio.Protocol]:
            class Found(asyncio.Protocol):
                def connection_made(self, transport: Any) -> None:
                    found[name] = raw_fd(transport)

            return Found

        plain = await loop.create_server(protocol("plain"), "127.0.0.1", 0)
        tls = await loop.create_server(protocol("tls"), "127.0.0.1", 0, ssl=server_tls)
        for accepted, (server, context) in enumerate(((plain, None), (tls, client_tls)), 1):
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None
            )
            await until(lambda n=accepted: len(found) == n, 5, "accepted")  # type: ignore[misc]
            writer.close()
            server.close()
        return found["plain"], found["tls"]

    if loop_kind == "uvloop":
        plain, tls = uvloop.run(main())
    else:
        plain, tls = asyncio.run(main())
    assert isinstance(plain, int)
    assert plain >= 0
    assert tls is None
