"""Server-Sent Events client: HTTP/1.1 GET, chunked or plain body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bench.wire.client import Client
from bench.wire.frames import CNT_SSE, S_CLOSED, epoch_ms, json_loads, json_number


def channel_query(channels: tuple[str, ...]) -> bytes:
    """``?channel=a&channel=b``, each name percent-encoded (``bench%3A3``); empty for none."""
    if not channels:
        return b""
    return ("?" + "&".join("channel=" + quote(name, safe="") for name in channels)).encode()


if TYPE_CHECKING:
    from bench.loadgen.tracking import Tracker


class SseClient(Client):
    """Server-Sent Events client: HTTP/1.1 GET, chunked or plain body."""

    __slots__ = ("ch_line", "ch_remain", "ch_skip", "chunked", "cr", "handshaking", "sbuf")
    kind = "sse"

    def __init__(self, run: Tracker, cid: int) -> None:
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
            b"GET " + run.sse_request_path + channel_query(self.channels) + b" HTTP/1.1\r\n"
            b"Host: " + run.host_header + b"\r\n"
            b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        )

    def handshake(self, data: bytes) -> bytes | None:
        """The response head: the bytes after it once it is complete and says 200 (the client
        is then open); None while it is incomplete, or after failing the connect."""
        split = self.handshake_head(data)
        if split is None:
            return None
        head, data = split
        status = head.split(b"\r\n", 1)[0]
        if not (status.startswith(b"HTTP/1.1 200") or status.startswith(b"HTTP/1.0 200")):
            self.run.connect_fail(self, f"sse {status.decode(errors='replace')}")
            return None
        lower = head.lower()
        self.chunked = b"\r\ntransfer-encoding:" in lower and b"chunked" in lower
        self.handshaking = False
        self.run.connect_ok(self)
        return data

    def data_received(self, data: bytes) -> None:
        if self.state == S_CLOSED:
            return
        if self.handshaking:
            rest = self.handshake(data)
            if not rest or self.state == S_CLOSED:
                return
            data = rest
        t = epoch_ms()  # every event of this read arrived now
        if not self.chunked:
            self.on_body(data, t)
            return
        parts, why = self.dechunk(data)
        if parts:
            self.on_body(parts[0] if len(parts) == 1 else b"".join(parts), t)
        if why:
            self.run.dropped(self, why)

    def dechunk(self, data: bytes) -> tuple[list[bytes], str]:
        """The body pieces of one read, chunk framing stripped, and why the stream is broken
        ("" while it is not: the client is dropped once the pieces before are parsed)."""
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
        return parts, why

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
