"""Socket.IO client: Engine.IO v4 / Socket.IO v5 over a raw RFC 6455 WebSocket."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from bench.wire.client import Client
from bench.wire.frames import (
    CNT_WS,
    S_CLOSED,
    WS_GUID,
    epoch_ms,
    json_loads,
    json_number,
    mask_frame,
)

if TYPE_CHECKING:
    from bench.loadgen.tracking import Tracker


def json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class WsClient(Client):
    """Socket.IO client: Engine.IO v4 over a raw RFC 6455 WebSocket."""

    __slots__ = ("accept", "frag", "handshaking")
    kind = "ws"

    def __init__(self, run: Tracker, cid: int) -> None:
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

    def emit(self, event: str, data: Any, ack_id: int | None = None) -> None:
        """A Socket.IO EVENT ``42[event, data]``; with ``ack_id``, ``42<id>[...]``: the server
        answers with an ACK (``Tracker.on_ack``)."""
        head = b"42" + (str(ack_id).encode() if ack_id is not None else b"")
        self.send_text(head + json_dumps([event, data]))

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

    def handshake(self, data: bytes) -> bytes | None:
        """The Upgrade response: the bytes after it once it is complete and accepted; None
        while it is incomplete, or after failing the connect."""
        split = self.handshake_head(data)
        if split is None:
            return None
        head, data = split
        if not head.startswith(b"HTTP/1.1 101"):
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            self.run.connect_fail(self, f"ws handshake: {status}")
            return None
        accept = b""
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"sec-websocket-accept":
                accept = v.strip()
        if accept != self.accept:
            self.run.connect_fail(self, "ws handshake: bad Sec-WebSocket-Accept")
            return None
        self.handshaking = False
        return data

    def data_received(self, data: bytes) -> None:
        if self.state == S_CLOSED:
            return
        if self.handshaking:
            rest = self.handshake(data)
            if rest is None:
                return
            data = rest
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
        elif p.startswith(b"43"):  # ACK: 43<id>[...]
            try:
                bracket = p.index(b"[")
                run.on_ack(self, int(p[2:bracket]), json_loads(p[bracket:]))
            except (ValueError, TypeError):
                run.errors["protocol"] += 1
                run.sample_err("protocol", repr(p[:60]))
        elif p.startswith(b"0"):  # Engine.IO OPEN -> CONNECT to the default namespace
            # With channels: in the CONNECT's auth ({"channels": [...]}), as io({auth}) does.
            auth = json_dumps({"channels": list(self.channels)}) if self.channels else b""
            self.send_text(b"40" + auth)
        elif p.startswith(b"44"):
            run.connect_fail(self, f"connect_error {p[:80].decode(errors='replace')}")
        elif p.startswith(b"41"):
            run.dropped(self, "socket.io DISCONNECT from server")
        elif p.startswith(b"1"):
            run.dropped(self, "engine.io CLOSE from server")
        # '3' pong, '6' noop, anything else: nothing to do
