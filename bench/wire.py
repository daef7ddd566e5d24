"""Wire-level clients for the load generator: bare asyncio protocols, one small object per
connection, no client library and no stream layers between the socket and the parser.

- ``WsClient``: Socket.IO (Engine.IO v4 / Socket.IO v5) over RFC 6455 WebSocket: the HTTP/1.1
  Upgrade handshake with the Sec-WebSocket-Accept check, masked client frames (fresh key per
  frame), 16/64-bit lengths, fragments, WebSocket ping/pong, Engine.IO ping ``2`` -> pong ``3``.
- ``SseClient``: Server-Sent Events over HTTP/1.1, chunked or plain body, ``\\n`` / ``\\r\\n``
  line endings, comments, ``retry:`` and ``id:`` fields, frames split across reads.
- ``HttpConnection``: a minimal keep-alive HTTP/1.1 client for ``/publish`` and ``/stats``.

Two frames come by the million and are recognised on fast paths that decode nothing but their
numbers: the ``user count`` frame of a storm, and the fanout event (``{"seq": i, "t": ms}``,
matched by one precompiled regular expression: ``fan_patterns``). Everything else, and anything
not exactly in the expected shape, goes through a general parser. What to do with a count, an
event, an open or a drop is the run's business (``bench.loadgen.Run``).

Every frame of one read arrived at the same moment: the receipt time (``epoch_ms``) is taken
once per ``data_received`` and passed down, not once per frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

try:
    from orjson import loads as json_loads

    # A JSON number as bytes to a number: orjson's parser takes half the time of float() on a
    # 17-digit time stamp (float's correctly rounded conversion goes the long way round).
    json_number: Callable[[bytes], float] = json_loads
except ImportError:  # the standard library is fine, only slower
    from json import loads as json_loads  # type: ignore[assignment]

    json_number = float  # json.loads would be several times slower than float() here

if TYPE_CHECKING:
    from bench.loadgen import Run

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CNT_WS = b'42["user count",'  # Socket.IO EVENT "user count" (fast path)
CNT_SSE = b"event: user count\ndata: "  # SSE frame "user count" (fast path)

# A client's life: queued (waiting for a connect slot), connecting, open, closed.
S_QUEUED, S_CONNECTING, S_OPEN, S_CLOSED = range(4)


def now() -> float:
    """Monotonic seconds (phase timing)."""
    return time.perf_counter()


def epoch_ms() -> float:
    """Wall-clock milliseconds: the fanout payload's ``t`` and its receipt use the same clock."""
    return time.time() * 1000.0


# The fanout event's fast-path matchers (``fan_patterns``): group 1 is ``seq``, group 2 is ``t``.
WsFanMatch = Callable[[bytes, int, int], re.Match[bytes] | None]  # (data, start, end)
SseFanMatch = Callable[[bytes, int], re.Match[bytes] | None]  # (body, pos)

# JSON's own number grammar (RFC 8259 6), so that the fast path accepts exactly what a JSON
# parser would, and nothing more: int() and float() alone would also take " 1", "1_0", "+1",
# "nan" or "inf". A non-negative integer for ``seq`` (anything else is malformed, which the
# general path decides), any JSON number for ``t``.
_SEQ = rb"(0|[1-9][0-9]*)"
_NUM = rb"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"


def fan_patterns(event_json: bytes, event_raw: bytes) -> tuple[WsFanMatch, SseFanMatch]:
    """The fast-path matchers of the fanout event ``{"seq": <int>, "t": <number>}``.

    ``event_json`` is the event name as a JSON string, ``event_raw`` as it is in an SSE field.
    Returns ``(ws, sse)``:

    - ``ws(payload, start, end)`` full-matches one WebSocket message,
      ``42["<name>",{"seq":<int>,"t":<number>}]``, with or without a last id argument
      ``,"<id>"`` (a server's encoding for clients that ask for ids). Compact JSON only: an
      encoder that writes spaces, other keys or another key order takes the general path.
    - ``sse(body, pos)`` matches one whole event block at ``pos``, blank line included:
      ``event: <name>``, an ``id:`` line before or after it or none, then the one line
      ``data: {"seq":<int>,"t":<number>}`` (LF line endings: the body is normalised before).
      Any other field, a second data line, or another order takes the general path.
    """
    payload = rb'\{"seq":' + _SEQ + rb',"t":' + _NUM + rb"\}"
    ws = re.compile(rb"42\[" + re.escape(event_json) + rb"," + payload + rb'(?:,"[^"\\]*")?\]')
    id_line = rb"(?:id:[^\n]*\n)?"
    event_line = rb"event: " + re.escape(event_raw) + rb"\n"
    sse = re.compile(id_line + event_line + id_line + rb"data: " + payload + rb"\n\n")
    return ws.fullmatch, sse.match


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3: every client frame is masked, with a fresh key)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + masked


class HttpConnection:
    """A minimal HTTP/1.1 client on one keep-alive connection (publishes go in order on it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
        close: bool,
    ) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: application/json",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, chunked, server_closes = -1, False, False
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            key, _, value = line.decode("latin-1").partition(":")
            key, value = key.strip().lower(), value.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif key == "connection" and value == "close":
                server_closes = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            payload = b"".join(parts)
        elif length >= 0:
            payload = await self.reader.readexactly(length)
        else:
            payload = await self.reader.read()
            server_closes = True
        if server_closes or close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.reader = None


# ----------------------------------------------------------------------------------- clients


class Client(asyncio.Protocol):
    """One connection; subclasses parse their transport. Kept small: thousands are alive."""

    __slots__ = (
        "fan_next",
        "fan_seen",
        "fan_unique",
        "id",
        "last_count",
        "open_idx",
        "rbuf",
        "run",
        "state",
        "t0",
        "timer",
        "transport",
    )
    kind = "?"

    def __init__(self, run: Run, cid: int) -> None:
        self.run = run
        self.id = cid
        self.state = S_QUEUED
        self.last_count = -1
        self.open_idx = -1
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.t0 = 0.0
        self.rbuf = b""
        self.fan_next = 0
        self.fan_unique = 0
        self.fan_seen: bytearray | None = None

    # -------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        run = self.run
        self.state = S_CONNECTING
        self.t0 = now()
        self.timer = run.loop.call_later(
            run.o.connect_timeout, run.connect_fail, self, "connect timeout"
        )
        run.loop.create_task(self._connect())

    async def _connect(self) -> None:
        run = self.run
        try:
            await run.loop.create_connection(lambda: self, run.host, run.port)
        except OSError as exc:
            if self.state != S_CLOSED:
                run.connect_fail(self, f"{type(exc).__name__}: {exc}")

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if self.state == S_CLOSED:  # closed (or timed out) while connecting
            self.transport.abort()
            return
        self.transport.write(self.request())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != S_CLOSED:
            self.run.dropped(self, f"{self.kind} connection lost: {exc or 'closed by server'}")

    def eof_received(self) -> bool | None:
        if self.state != S_CLOSED:
            self.run.dropped(self, f"{self.kind} closed by server (EOF)")
        return None

    def close(self) -> None:
        """A clean close from our side."""
        self.cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def request(self) -> bytes:
        raise NotImplementedError

    # -------------------------------------------------------------------- user count

    def on_count(self, n: int) -> None:
        # The hot path of a storm: one call per frame the server writes.
        if self.state == S_CLOSED:
            return
        run = self.run
        ph = run.phase
        ph.frames += 1
        ph.count_frames += 1
        if self.state == S_OPEN:
            target = run.target
            if self.last_count == target:
                run.at_target -= 1
            self.last_count = n
            if n == target:
                run.at_target += 1
                if run.at_target == len(run.open_list):
                    run.check_converged()
        else:
            # Counted before the connect completed (broadcast sends the count just before the
            # Socket.IO CONNECT ack); connect_ok takes it into account.
            self.last_count = n

    def handshake_head(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Splits off the HTTP response head once it is complete; None until then."""
        data = self.rbuf + data if self.rbuf else data
        idx = data.find(b"\r\n\r\n")
        if idx == -1:
            self.rbuf = data
            return None
        self.rbuf = b""
        return data[:idx], data[idx + 4 :]


class WsClient(Client):
    """Socket.IO client: Engine.IO v4 over a raw RFC 6455 WebSocket."""

    __slots__ = ("accept", "frag", "handshaking")
    kind = "ws"

    def __init__(self, run: Run, cid: int) -> None:
        super().__init__(run, cid)
        self.handshaking = True
        self.accept = b""
        self.frag: list[bytes] | None = None

    def request(self) -> bytes:
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        run = self.run
        return (
            b"GET " + run.ws_request_path + b" HTTP/1.1\r\nHost: " + run.host_header + b"\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
        )

    def send_text(self, text: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(0x1, text))

    def close(self) -> None:
        # The closing handshake of RFC 6455: a close frame (1000) and our FIN, then keep the
        # socket until the server answers and closes its side (a full close now would make the
        # kernel answer its last writes with RST, which servers log as a transport error).
        t = self.transport
        self.cancel_timer()
        if t is None or self.handshaking or t.is_closing():
            super().close()
            return
        t.write(mask_frame(0x8, b"\x03\xe8"))
        if t.can_write_eof():
            t.write_eof()
            self.run.loop.call_later(10.0, t.abort)  # bound: a server that never closes
        else:
            t.close()

    def data_received(self, data: bytes) -> None:
        if self.state == S_CLOSED:
            return
        if self.handshaking:
            split = self.handshake_head(data)
            if split is None:
                return
            head, data = split
            if not head.startswith(b"HTTP/1.1 101"):
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                self.run.connect_fail(self, f"ws handshake: {status}")
                return
            accept = b""
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"sec-websocket-accept":
                    accept = v.strip()
            if accept != self.accept:
                self.run.connect_fail(self, "ws handshake: bad Sec-WebSocket-Accept")
                return
            self.handshaking = False
        if self.rbuf:
            data = self.rbuf + data
            self.rbuf = b""
        t = epoch_ms()  # every frame of this read arrived now
        run = self.run
        # The fanout event's fast path, while a fanout is measured (else it is just a frame).
        fan_match = run.fan_ws_match if run.fan is not None else None
        fan_one = run.fan_one
        n = len(data)
        off = 0
        # One iteration per frame, in locals: at a few hundred thousand frames per second each
        # attribute lookup shows. The fanout event and the "user count" frame are recognised
        # without copying the payload or decoding anything but their numbers.
        while off + 2 <= n:
            b0 = data[off]
            plen = data[off + 1]
            if plen & 0x80:
                run.dropped(self, "ws protocol: masked server frame")
                return
            hdr = 2
            if plen == 126:
                if off + 4 > n:
                    break
                plen = int.from_bytes(data[off + 2 : off + 4], "big")
                hdr = 4
            elif plen == 127:
                if off + 10 > n:
                    break
                plen = int.from_bytes(data[off + 2 : off + 10], "big")
                hdr = 10
            s = off + hdr
            e = s + plen
            if e > n:
                break
            off = e
            op = b0 & 0x0F
            if op == 1 or op == 2:
                if not b0 & 0x80:  # first fragment
                    self.frag = [data[s:e]]
                elif fan_match is not None and (m := fan_match(data, s, e)) is not None:
                    try:
                        seq, sent = int(m[1]), json_number(m[2])
                    except ValueError:  # too many digits or out of a double's range
                        self.on_eio(data[s:e], t)  # the general parser says what it is
                    else:
                        # A delivery closes nothing (a waiter it completes runs later): no
                        # state check needed before the next frame.
                        fan_one(self, seq, sent, t)
                        continue
                elif data.startswith(CNT_WS, s):
                    try:
                        self.on_count(int(data[s + len(CNT_WS) : e - 1]))
                    except ValueError:
                        self.on_eio(data[s:e], t)
                else:
                    self.on_eio(data[s:e], t)
            elif op == 0:
                if self.frag is not None:
                    self.frag.append(data[s:e])
                    if b0 & 0x80:
                        whole = b"".join(self.frag)
                        self.frag = None
                        self.on_eio(whole, t)
            elif op == 8:
                code = int.from_bytes(data[s : s + 2], "big") if plen >= 2 else 1005
                run.dropped(self, f"ws close frame from server ({code})")
                return
            elif op == 9 and self.transport is not None:  # websocket ping -> pong, same payload
                self.transport.write(mask_frame(0xA, data[s:e]))
            if self.state == S_CLOSED:
                return
        if off < n:
            self.rbuf = data[off:]

    def on_eio(self, p: bytes, t: float) -> None:
        """One Engine.IO packet (one per WebSocket message in Engine.IO v4), received at ``t``
        (epoch ms)."""
        run = self.run
        if p.startswith(b"42"):  # Socket.IO EVENT (maybe with an ack id before the '[')
            try:
                arr = json_loads(p[p.index(b"[") :])
                name, data = arr[0], (arr[1] if len(arr) > 1 else None)
            except (ValueError, IndexError, TypeError):
                run.errors["protocol"] += 1
                run.sample_err("protocol", repr(p[:60]))
                return
            run.dispatch(self, name, data, t)
        elif p == b"2":  # Engine.IO ping -> pong, or the server drops us after pingTimeout
            self.send_text(b"3")
        elif p.startswith(b"40"):  # CONNECT ack {"sid": ...}
            run.connect_ok(self)
        elif p.startswith(b"0"):  # Engine.IO OPEN -> CONNECT to the default namespace
            self.send_text(b"40")
        elif p.startswith(b"44"):
            run.connect_fail(self, f"connect_error {p[:80].decode(errors='replace')}")
        elif p.startswith(b"41"):
            run.dropped(self, "socket.io DISCONNECT from server")
        elif p.startswith(b"1"):
            run.dropped(self, "engine.io CLOSE from server")
        # '3' pong, '6' noop, anything else: nothing to do


class SseClient(Client):
    """Server-Sent Events client: HTTP/1.1 GET, chunked or plain body."""

    __slots__ = ("ch_line", "ch_remain", "ch_skip", "chunked", "cr", "handshaking", "sbuf")
    kind = "sse"

    def __init__(self, run: Run, cid: int) -> None:
        super().__init__(run, cid)
        self.handshaking = True
        self.chunked = False
        self.ch_remain = 0  # bytes left in the current chunk
        self.ch_skip = 0  # CRLF after a chunk still to skip
        self.ch_line = b""  # a chunk-size line split across reads
        self.sbuf = b""  # SSE text not yet ending in a blank line
        self.cr = False  # the last body byte was a CR (its LF may come next)

    def request(self) -> bytes:
        run = self.run
        return (
            b"GET " + run.sse_request_path + b" HTTP/1.1\r\nHost: " + run.host_header + b"\r\n"
            b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        if self.state == S_CLOSED:
            return
        if self.handshaking:
            split = self.handshake_head(data)
            if split is None:
                return
            head, data = split
            status = head.split(b"\r\n", 1)[0]
            if not (status.startswith(b"HTTP/1.1 200") or status.startswith(b"HTTP/1.0 200")):
                self.run.connect_fail(self, f"sse {status.decode(errors='replace')}")
                return
            lower = head.lower()
            self.chunked = b"\r\ntransfer-encoding:" in lower and b"chunked" in lower
            self.handshaking = False
            self.run.connect_ok(self)
            if not data or self.state == S_CLOSED:
                return
        t = epoch_ms()  # every event of this read arrived now
        if not self.chunked:
            self.on_body(data, t)
            return
        # The chunk framing is stripped first and the body pieces of the whole read are parsed
        # in one on_body call: a server that writes one chunk per event would otherwise cost a
        # call and a buffer concatenation per event. The chunk state lives in locals meanwhile.
        parts: list[bytes] = []
        remain = self.ch_remain  # bytes left in the current chunk
        skip = self.ch_skip  # CRLF after a chunk still to skip
        why = ""  # the stream is broken: drop the client once the body read so far is parsed
        n = len(data)
        off = 0
        while off < n:
            if remain:
                take = min(remain, n - off)
                parts.append(data[off : off + take] if take != n else data)
                off += take
                remain -= take
                if not remain:
                    skip = 2
            elif skip:
                take = min(skip, n - off)
                off += take
                skip -= take
            else:
                nl = data.find(b"\n", off)
                if nl == -1:
                    self.ch_line += data[off:]
                    break
                line = data[off:nl]
                if self.ch_line:
                    line = self.ch_line + line
                    self.ch_line = b""
                off = nl + 1
                if b";" in line:  # a chunk extension, to ignore
                    line = line[: line.index(b";")]
                try:
                    size = int(line, 16)  # int() ignores the whitespace around, the CR included
                except ValueError:
                    size = -1
                if size < 0:
                    why = f"sse protocol: bad chunk size {line[:20]!r}"
                    break
                if size == 0:
                    why = "sse stream ended by server (last chunk)"
                    break
                remain = size
        self.ch_remain = remain
        self.ch_skip = skip
        if parts:
            self.on_body(parts[0] if len(parts) == 1 else b"".join(parts), t)
        if why:
            self.run.dropped(self, why)

    def on_body(self, b: bytes, t: float) -> None:
        """Body bytes (chunk framing stripped) received at ``t`` (epoch ms)."""
        # Fast path: exactly one whole "user count" frame, nothing buffered.
        if (
            not self.sbuf
            and not self.cr
            and b.startswith(CNT_SSE)
            and b.endswith(b"\n\n")
            and b.count(b"\n") == 3
        ):
            try:
                self.on_count(int(b[len(CNT_SSE) : -2]))
                return
            except ValueError:
                pass
        if self.cr or b"\r" in b:
            # CRLF or CR line endings: normalise to LF; a CR at the very end may be half of a
            # CRLF whose LF comes in the next read, so it is held back.
            if self.cr:
                b = b"\r" + b
            self.cr = b.endswith(b"\r")
            if self.cr:
                b = b[:-1]
            b = b.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self.sbuf + b if self.sbuf else b
        run = self.run
        # The fanout event's fast path, while a fanout is measured: one match per event block,
        # blank line included, straight on the buffer (no block copied, no line split).
        fan_match = run.fan_sse_match if run.fan is not None else None
        fan_one = run.fan_one
        start = 0
        while True:
            if fan_match is not None and (m := fan_match(buf, start)) is not None:
                try:
                    seq, sent = int(m[1]), json_number(m[2])
                except ValueError:  # too many digits or out of a double's range: the general
                    pass  # parser below says what it is
                else:
                    fan_one(self, seq, sent, t)  # closes nothing: no state check needed
                    start = m.end()
                    continue
            end = buf.find(b"\n\n", start)
            if end == -1:
                break
            self.on_block(buf[start:end], t)
            if self.state == S_CLOSED:
                return
            start = end + 2
        self.sbuf = buf[start:] if start else buf

    def on_block(self, block: bytes, t: float) -> None:
        """One SSE event block (the lines before a blank line), received at ``t`` (epoch ms)."""
        if block.startswith(CNT_SSE) and b"\n" not in block[len(CNT_SSE) :]:
            try:
                self.on_count(int(block[len(CNT_SSE) :]))
                return
            except ValueError:
                pass
        event = b"message"
        data: bytes | None = None
        for line in block.split(b"\n"):
            if not line or line[0] == 0x3A:  # ':' comment (keep-alive ping)
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"event":
                event = value
            elif name == b"data":
                data = value if data is None else data + b"\n" + value
            # id:, retry: and unknown fields do not matter here
        if data is None:
            return  # a block of comments or of retry:/id: only
        name_s = event.decode(errors="replace")
        if name_s == "user count":
            self.run.dispatch(self, name_s, data, t)
            return
        try:
            parsed: Any = json_loads(data)
        except ValueError:
            parsed = data.decode(errors="replace")
        self.run.dispatch(self, name_s, parsed, t)
