"""The base of the wire clients: one connection's life (queued, connecting, open, closed) and
the ``user count`` it holds; ``WsClient`` and ``SseClient`` parse their transport."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from bench.wire.frames import S_CLOSED, S_CONNECTING, S_OPEN, S_QUEUED, now

if TYPE_CHECKING:
    from bench.loadgen.tracking import Tracker


class Client(asyncio.Protocol):
    """One connection; subclasses parse their transport. Kept small: thousands are alive."""

    __slots__ = (
        "ch_counts",
        "channels",
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

    def __init__(self, run: Tracker, cid: int) -> None:
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
        # Channels asked for at connect (Socket.IO CONNECT auth, SSE ?channel=), and the last
        # ``channel count`` heard of each channel (None until one comes).
        self.channels: tuple[str, ...] = ()
        self.ch_counts: dict[str, int] | None = None

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
