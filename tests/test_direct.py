"""Direct writes (``overrides/hypercorn.py``, ``transports/framing.py``): the fan-out writes
each event's bytes straight to the client's socket, framed once, past hypercorn's per-message path.

These talk to the real server over raw sockets, to see the bytes themselves: a fan-out frame is
never compressed even when the client negotiated permessage-deflate (hypercorn compresses every
message it sends), so seeing one proves the direct path is taken, and the frames hypercorn
compresses afterwards must still inflate with the connection's one compression context. An
HTTP/1.0 SSE client gets a bare body, an HTTP/1.1 one a chunked body, as h11 frames them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import Server, wait_until

TOKEN = "direct-token-0123456789"


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})


def publish(server: Server, event: str, data: object) -> str:
    response = httpx.post(
        f"{server.url}/publish",
        json={"event": event, "data": data},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def masked(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    return (
        bytes([0x80 | opcode, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


class RawWebSocket:
    """Just enough of a websocket client to see each frame's header bits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.inflate = zlib.decompressobj(-15)  # one context for the connection (RFC 7692 7.2)

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def frame(self) -> tuple[bool, bytes]:
        """The next message: whether it was compressed, and its payload (inflated)."""
        b0, b1 = self.read(2)
        assert b0 & 0x80, "fragmented frames are not expected here"
        assert not b1 & 0x80, "a server frame must not be masked"
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self.read(2), "big")
        elif length == 127:
            length = int.from_bytes(self.read(8), "big")
        payload = self.read(length)
        compressed = bool(b0 & 0x40)
        if compressed:
            payload = self.inflate.decompress(payload + b"\x00\x00\xff\xff")
        return compressed, payload

    def until(self, predicate: Callable[[bytes], bool]) -> tuple[bool, bytes]:
        for _ in range(20):
            compressed, payload = self.frame()
            if predicate(payload):
                return compressed, payload
        raise AssertionError("no such frame among the next 20")


@contextmanager
def deflate_websocket(server: Server) -> Iterator[RawWebSocket]:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            ).encode()
        )
        ws = RawWebSocket(sock)
        head = b""
        while b"\r\n\r\n" not in head:
            head += ws.read(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"permessage-deflate" in head.lower(), "hypercorn did not accept deflate"
        yield ws


def test_fan_out_frames_go_straight_to_the_socket_and_compressed_ones_still_inflate(
    server: Server,
) -> None:
    with deflate_websocket(server) as ws:
        compressed, opened = ws.frame()
        assert opened.startswith(b"0{")
        assert compressed, "hypercorn compresses what it sends"
        ws.sock.sendall(masked(0x1, b"40"))
        ws.until(lambda p: p.startswith(b"40{"))
        wait_until(lambda: server.user_count() == 1, 5, "the client to be counted")
        for n in range(3):
            publish(server, "news", {"n": n})
            compressed, payload = ws.until(lambda p: p.startswith(b'42["news"'))
            assert json.loads(payload[2:]) == ["news", {"n": n}]
            assert not compressed, "a fan-out frame went through hypercorn, not the socket"
            # Something python-engineio sends (through hypercorn, compressed) after it: the
            # refusal of an unknown event, acknowledged. It must inflate with the same context.
            ws.sock.sendall(masked(0x1, b'42%d["nope"]' % n))
            compressed, ack = ws.until(lambda p: p.startswith(b"43"))
            assert compressed
            assert json.loads(ack[len(b"43%d" % n) :]) == [
                {"ok": False, "error": "unknown event 'nope'"}
            ]


def sse_over(server: Server, version: str) -> tuple[bytes, bytes, bytes]:
    """The head and the body so far of an SSE stream requested over HTTP/``version``, once an
    event published after it opened has arrived, and that event's id."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /events HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        while b"retry: " not in received:  # the stream is open (subscribed before this)
            received += sock.recv(65536)
        event_id = publish(server, "news", {"over": version}).encode()
        while b'{"over":"' + version.encode() not in received:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended"
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body, event_id


def test_an_http_1_1_sse_stream_is_chunked_and_an_http_1_0_one_is_not(server: Server) -> None:
    head, body, event_id = sse_over(server, "1.1")
    assert b"transfer-encoding: chunked" in head.lower()
    event = b'id: %b\nevent: news\ndata: {"over":"1.1"}\n\n' % event_id
    assert b"%x\r\n%b\r\n" % (len(event), event) in body, body

    head, body, event_id = sse_over(server, "1.0")
    assert b"transfer-encoding" not in head.lower()
    assert b'\n\nid: %b\nevent: news\ndata: {"over":"1.0"}\n\n' % event_id in body, body
    assert b"\r\n" not in body, "an HTTP/1.0 body must not be chunked"
