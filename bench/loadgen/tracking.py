"""The bookkeeping the wire clients report to: the open clients, the bounded connect queue,
the convergence rule (every open client's *last* ``user count`` equals the number of clients
open, plus any baseline the server already had), the error counters and the fanout's
deliveries. ``bench.loadgen.session.Run`` adds the phases and the server probes on top."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.wire import (
    S_CLOSED,
    S_CONNECTING,
    S_OPEN,
    S_QUEUED,
    Client,
    SseClient,
    WsClient,
    fan_patterns,
    now,
)

LAT_CAP = 5_000_000  # latency samples kept (memory bound for huge fanouts)


@dataclass
class Phase:
    """Counters of one phase (connect, close, fanout, ...), turned into a dict at its end."""

    name: str
    t0: float = field(default_factory=now)
    cpu0: float = field(default_factory=time.process_time)
    srv0: dict[str, Any] | None = None
    frames: int = 0
    count_frames: int = 0
    channel_count_frames: int = 0
    other_frames: int = 0
    connects: int = 0
    connect_errors: int = 0
    drops: int = 0
    max_connect_ms: float = 0.0
    peak_cpu_pct: float = 0.0  # busiest 0.5 s window of the load generator in this phase


@dataclass
class Fan:
    """Fanout bookkeeping: what was published, what each client received."""

    m: int
    expected: int
    deliveries: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    malformed: int = 0
    lat: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_send: float = 0.0
    last_recv: float = 0.0
    published: int = 0
    publish_errors: int = 0
    max_lag_ms: float = 0.0
    request_ms: dict[str, float] | None = None
    waiter: asyncio.Future[None] | None = None


class Tracker:
    """The clients of one run and where they stand (what ``bench.wire``'s clients call)."""

    def __init__(self, opts: argparse.Namespace, host: str, port: int, base_path: str) -> None:
        self.o = opts
        self.host = host
        self.port = port
        self.host_header = f"{host}:{port}".encode()
        self.ws_request_path = f"{base_path}{opts.sio_path}?EIO=4&transport=websocket".encode()
        self.sse_request_path = f"{base_path}{opts.sse_path}".encode()
        self.base_path = base_path
        self.loop = asyncio.get_running_loop()
        self.open_list: list[Client] = []  # swap-remove via Client.open_idx
        self.pending = 0  # queued + connecting
        self.connecting = 0
        self.target = -1  # the count every open client should reach (-1: none)
        self.at_target = 0  # open clients whose last_count == target
        self.baseline = 0  # users the server had before we started
        self.converge_waiter: asyncio.Future[float] | None = None
        self.idle_waiters: list[asyncio.Future[None]] = []
        self.queue: deque[Client] = deque()
        self.errors = {"connect": 0, "dropped": 0, "protocol": 0, "publish": 0}
        self.err_samples: dict[str, int] = {}
        self.phase = Phase("setup")
        self.fan: Fan | None = None
        # The clients' fast path for the fanout event (the name as the servers encode it: JSON
        # in a Socket.IO packet, raw in an SSE field).
        self.fan_ws_match, self.fan_sse_match = fan_patterns(
            json.dumps(opts.event_name, ensure_ascii=False).encode(), opts.event_name.encode()
        )
        self.created = {"ws": 0, "sse": 0}
        self.next_id = 0
        self.on_drop: Callable[[Client, str], None] | None = None
        """Set by a scenario that expects the server to close its clients (shutdown)."""
        self.on_event: Callable[[Client, Any, float], None] | None = None
        """Set by a scenario that counts ``--event-name`` events itself (outside a fanout)."""
        self.acks: dict[tuple[int, int], asyncio.Future[Any]] = {}
        """Acknowledgements awaited: (client id, ack id) -> the ACK's arguments."""

    def sample_err(self, kind: str, why: str) -> None:
        key = f"{kind}: {why[:120]}"
        self.err_samples[key] = self.err_samples.get(key, 0) + 1

    # -------------------------------------------------------------------- convergence

    def set_target(self, target: int) -> None:
        self.target = target
        self.at_target = sum(1 for c in self.open_list if c.last_count == target)
        self.check_converged()

    def is_converged(self) -> bool:
        n = len(self.open_list)
        return self.pending == 0 and self.target == self.baseline + n and self.at_target == n

    def check_converged(self) -> None:
        w = self.converge_waiter
        if w is not None and not w.done() and self.is_converged():
            self.converge_waiter = None
            w.set_result(now())

    async def wait_converged(self, within: float | None = None) -> float | None:
        """The moment every open client holds the target; None if ``within`` s passed first."""
        fut: asyncio.Future[float] = self.loop.create_future()
        self.converge_waiter = fut
        self.check_converged()
        try:
            return await asyncio.wait_for(fut, within)
        except TimeoutError:
            return None
        finally:
            self.converge_waiter = None

    async def wait_idle(self) -> None:
        """Until no connect is queued or in flight."""
        if self.pending == 0:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self.idle_waiters.append(fut)
        await fut

    def lost_one(self) -> None:
        """A client the phase expected to be open is not: lower the expectation."""
        if self.target != -1:
            self.set_target(self.target - 1)

    # -------------------------------------------------------------------- connections

    def enqueue(self, c: Client) -> None:
        self.pending += 1
        c.state = S_QUEUED
        self.queue.append(c)
        self.pump()

    def pump(self) -> None:
        # Bounded concurrency: at most --concurrency connects in flight, the rest wait here.
        while self.connecting < self.o.concurrency and self.queue:
            c = self.queue.popleft()
            if c.state != S_QUEUED:
                continue
            self.connecting += 1
            c.start()

    def settled(self) -> None:
        self.connecting -= 1
        self.pending -= 1
        self.pump()
        if self.pending == 0 and self.idle_waiters:
            waiters, self.idle_waiters = self.idle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def connect_ok(self, c: Client) -> None:
        if c.state != S_CONNECTING:
            return
        c.cancel_timer()
        c.state = S_OPEN
        c.open_idx = len(self.open_list)
        self.open_list.append(c)
        if c.last_count == self.target:
            self.at_target += 1
        ph = self.phase
        ph.connects += 1
        dt = (now() - c.t0) * 1000
        if dt > ph.max_connect_ms:
            ph.max_connect_ms = dt
        self.settled()
        self.check_converged()

    def connect_fail(self, c: Client, why: str) -> None:
        if c.state != S_CONNECTING:
            return
        c.cancel_timer()
        c.state = S_CLOSED
        self.errors["connect"] += 1
        self.phase.connect_errors += 1
        self.sample_err("connect", why)
        c.abort()
        self.lost_one()
        self.settled()
        self.check_converged()

    def remove_open(self, c: Client) -> None:
        last = self.open_list.pop()
        if last is not c:
            self.open_list[c.open_idx] = last
            last.open_idx = c.open_idx
        c.open_idx = -1
        if c.last_count == self.target:
            self.at_target -= 1

    def dropped(self, c: Client, why: str) -> None:
        """The server (or the network) closed a client we still wanted open."""
        if self.on_drop is not None:
            if c.state == S_OPEN:
                self.remove_open(c)
                c.state = S_CLOSED
                c.abort()
                self.on_drop(c, why)
            return
        if c.state == S_CONNECTING:
            self.connect_fail(c, why)
            return
        if c.state != S_OPEN:
            return
        self.remove_open(c)
        c.state = S_CLOSED
        self.errors["dropped"] += 1
        self.phase.drops += 1
        self.sample_err("dropped", why)
        c.abort()
        self.lost_one()
        self.check_converged()

    def close_client(self, c: Client) -> None:
        """We close a client on purpose."""
        if c.state == S_OPEN:
            self.remove_open(c)
        elif c.state == S_CONNECTING:
            c.cancel_timer()
            c.state = S_CLOSED
            self.settled()
        elif c.state == S_QUEUED:
            c.state = S_CLOSED
            self.connecting += 1  # never started: settle it as if it had
            self.settled()
        c.state = S_CLOSED
        c.close()

    def new_client(self, kind: str, channels: tuple[str, ...] = ()) -> Client:
        """A client of ``kind``, subscribing to ``channels`` as it connects."""
        self.created[kind] += 1
        self.next_id += 1
        c: Client = WsClient(self, self.next_id) if kind == "ws" else SseClient(self, self.next_id)
        c.channels = channels
        return c

    def expect_ack(self, c: Client, ack_id: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.acks[(c.id, ack_id)] = fut
        return fut

    def on_ack(self, c: Client, ack_id: int, args: Any) -> None:
        """A Socket.IO ACK ``43<id>[...]`` from the server: its arguments."""
        fut = self.acks.pop((c.id, ack_id), None)
        if fut is None:
            self.errors["protocol"] += 1
            self.sample_err("protocol", f"unexpected ack {ack_id}")
        elif not fut.done():
            fut.set_result(args)

    # -------------------------------------------------------------------- events

    def dispatch(self, c: Client, name: str, data: Any, t: float) -> None:
        """An event that took no fast path, received at ``t`` (epoch ms)."""
        if name == "user count":
            try:
                c.on_count(int(data))
            except (TypeError, ValueError):
                self.errors["protocol"] += 1
                self.sample_err("protocol", f"user count {data!r}"[:60])
            return
        if self.fan is not None and name == self.o.event_name:
            self.on_fan(c, data, t)
            return
        if name == "channel count":
            self.on_channel_count(c, data)
            return
        if self.on_event is not None and name == self.o.event_name:
            self.on_event(c, data, t)
            return
        self.phase.frames += 1
        self.phase.other_frames += 1

    def on_channel_count(self, c: Client, data: Any) -> None:
        """``channel count`` ``{"channel", "count"}``: kept per channel; one of a channel the
        client is not in is an error (``foreign``)."""
        self.phase.frames += 1
        self.phase.channel_count_frames += 1
        channel = data.get("channel") if isinstance(data, dict) else None
        count = data.get("count") if isinstance(data, dict) else None
        if not isinstance(channel, str) or not isinstance(count, int):
            self.errors["protocol"] += 1
            self.sample_err("protocol", f"channel count {data!r}"[:80])
            return
        if channel not in c.channels:
            self.errors["foreign"] = self.errors.get("foreign", 0) + 1
            self.sample_err("foreign", f"channel count of {channel!r} to a client of {c.channels}")
            return
        if c.ch_counts is None:
            c.ch_counts = {}
        c.ch_counts[channel] = count

    def on_fan(self, c: Client, data: Any, t: float) -> None:
        """A fanout event the clients' fast path did not recognise: decoded JSON, any shape."""
        seq = data.get("seq") if isinstance(data, dict) else None
        sent = data.get("t") if isinstance(data, dict) else None
        self.fan_one(
            c,
            seq if isinstance(seq, int) else -1,  # -1: malformed
            sent if isinstance(sent, int | float) else None,  # None: no latency sample
            t,
        )

    def fan_one(self, c: Client, seq: int, sent: float | None, t: float) -> None:
        """One fanout delivery to ``c``: event ``seq`` (< 0: malformed) published at ``sent``,
        received at ``t`` (epoch ms). The clients' fast path calls it for every delivery it
        recognises, up to a few hundred thousand times a second: keep it lean."""
        f = self.fan
        assert f is not None
        self.phase.frames += 1
        f.deliveries += 1
        if t > f.last_recv:
            f.last_recv = t
        if not 0 <= seq < f.m:
            f.malformed += 1
            return
        if sent is not None and len(f.lat) < LAT_CAP:
            f.lat.append(t - sent)
        seen = c.fan_seen
        if seen is None:
            seen = c.fan_seen = bytearray(f.m)
        if seen[seq]:
            f.duplicates += 1
            return
        seen[seq] = 1
        c.fan_unique += 1
        if seq < c.fan_next:
            f.out_of_order += 1
        else:
            c.fan_next = seq + 1
        if f.deliveries >= f.expected and f.waiter is not None and not f.waiter.done():
            f.waiter.set_result(None)
