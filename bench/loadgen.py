"""Load generator for broadcast and the Node reference peer: storm | fanout | churn | footprint
| soak | shutdown (``bench/shutdown.py``).

Speaks the wire formats itself (``bench/wire.py``: Engine.IO v4 over raw RFC 6455 WebSocket,
SSE over raw HTTP/1.1), so that one process on one core can hold thousands of clients and read
every frame the server writes. It follows the contract of shared/bench/loadgen.js: the same
scenarios and the same convergence rule (every open client's *last* ``user count`` equals the
number of clients open, plus any baseline the server already had).

    .venv/bin/python -m bench.loadgen --url http://127.0.0.1:8000 --scenario storm --clients 1000

Progress goes to stderr; the last stdout line is one JSON object (``--out`` appends it to a file).
Exit status: 0 ok, 1 a check failed, 2 not converged within ``--timeout``, 3 usage error.
Only loopback targets are accepted. Run it pinned to its own core (``taskset -c 1``);
``bench/run`` does, and reads its JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.wire import (
    S_CLOSED,
    S_CONNECTING,
    S_OPEN,
    S_QUEUED,
    Client,
    HttpConnection,
    SseClient,
    WsClient,
    fan_patterns,
    now,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
LAT_CAP = 5_000_000  # latency samples kept (memory bound for huge fanouts)


# ------------------------------------------------------------------------------------ helpers


def r1(x: float) -> float:
    return round(x, 1)


def r3(x: float) -> float:
    return round(x, 3)


def read_proc(pid: int | None) -> dict[str, Any] | None:
    """RSS, high-water mark, threads, fds and CPU time of ``pid`` from /proc."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError as exc:
        return {"error": str(exc)}
    fields = stat[stat.rfind(")") + 2 :].split()
    kb: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            kb[key] = int(value.split()[0])
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    utime = int(fields[11]) * 1000 / CLK_TCK
    stime = int(fields[12]) * 1000 / CLK_TCK
    return {
        "rss_kb": kb.get("VmRSS"),
        "hwm_kb": kb.get("VmHWM"),
        "threads": kb.get("Threads"),
        "fds": fds,
        "utime_ms": utime,
        "stime_ms": stime,
        "cpu_ms": utime + stime,
    }


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (the same rule as loadgen.js)."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * p // 100) - 1))
    return r3(sorted_values[int(i)])


# ------------------------------------------------------------------------------------- state


@dataclass
class Phase:
    """Counters of one phase (connect, close, fanout, ...), turned into a dict at its end."""

    name: str
    t0: float = field(default_factory=now)
    cpu0: float = field(default_factory=time.process_time)
    srv0: dict[str, Any] | None = None
    frames: int = 0
    count_frames: int = 0
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


class ScenarioFailed(Exception):
    """Ends the run with a JSON line saying what went wrong (exit ``code``)."""

    def __init__(self, error: str, code: int, detail: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.code = code
        self.detail = detail or {}


class Run:
    """Everything one load-generator run shares: options, open clients, convergence, counters."""

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
        self.phases: list[dict[str, Any]] = []
        self.fan: Fan | None = None
        # The clients' fast path for the fanout event (the name as the servers encode it: JSON
        # in a Socket.IO packet, raw in an SSE field).
        self.fan_ws_match, self.fan_sse_match = fan_patterns(
            json.dumps(opts.event_name, ensure_ascii=False).encode(), opts.event_name.encode()
        )
        self.created = {"ws": 0, "sse": 0}
        self.next_id = 0
        self.t_start = now()
        self.cpu_start = time.process_time()
        self.peak_cpu_pct = 0.0
        self.srv_before = read_proc(opts.server_pid)
        self.stats_exposed: bool | None = None
        self.last_stats: Any = None
        self.last_stats_error: str | None = None
        self.on_drop: Callable[[Client, str], None] | None = None
        """Set by a scenario that expects the server to close its clients (shutdown)."""

    # -------------------------------------------------------------------- logging, errors

    def log(self, msg: str) -> None:
        if not self.o.quiet:
            sys.stderr.write(f"[loadgen {now() - self.t_start:7.1f}s] {msg}\n")

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

    def new_client(self, kind: str) -> Client:
        self.created[kind] += 1
        self.next_id += 1
        if kind == "ws":
            return WsClient(self, self.next_id)
        return SseClient(self, self.next_id)

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
        self.phase.frames += 1
        self.phase.other_frames += 1

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

    # -------------------------------------------------------------------- phases

    def begin_phase(self, name: str) -> None:
        self.phase = Phase(name, srv0=read_proc(self.o.server_pid))
        self.log(f"phase {name}")

    def end_phase(self, **extra: Any) -> dict[str, Any]:
        ph = self.phase
        wall = max(1e-9, now() - ph.t0)
        cpu = time.process_time() - ph.cpu0
        out: dict[str, Any] = {
            "name": ph.name,
            "ms": r1(wall * 1000),
            **extra,
            "frames": ph.frames,
            "count_frames": ph.count_frames,
            "connects": ph.connects,
            "connect_errors": ph.connect_errors,
            "drops": ph.drops,
            "max_connect_ms": r1(ph.max_connect_ms),
            "loadgen_cpu_ms": r1(cpu * 1000),
            "loadgen_cpu_pct": r1(cpu / wall * 100),
            "loadgen_peak_cpu_pct": r1(ph.peak_cpu_pct),
        }
        srv1 = read_proc(self.o.server_pid)
        if srv1 and ph.srv0 and "cpu_ms" in srv1 and "cpu_ms" in ph.srv0:
            out["server_cpu_ms"] = r1(srv1["cpu_ms"] - ph.srv0["cpu_ms"])
            out["server_cpu_pct"] = r1((srv1["cpu_ms"] - ph.srv0["cpu_ms"]) / wall / 10)
            out["server_rss_kb"] = srv1["rss_kb"]
            out["server_hwm_kb"] = srv1["hwm_kb"]
        self.phases.append(out)
        brief = {k: out[k] for k in ("ms", "converge_ms", "frames", "drops") if k in out}
        self.log(
            f"phase {ph.name} done: {brief} server cpu {out.get('server_cpu_pct', '?')}%, "
            f"loadgen cpu {out['loadgen_cpu_pct']}% (peak {out['loadgen_peak_cpu_pct']}%)"
        )
        return out

    async def monitor(self) -> None:
        """Samples the load generator's own CPU every 0.5 s (is *it* the bottleneck?) and
        prints progress every 2 s."""
        last_t, last_cpu, tick = now(), time.process_time(), 0
        while True:
            await asyncio.sleep(0.5)
            t, cpu = now(), time.process_time()
            pct = (cpu - last_cpu) / max(1e-9, t - last_t) * 100
            last_t, last_cpu = t, cpu
            self.peak_cpu_pct = max(self.peak_cpu_pct, pct)
            self.phase.peak_cpu_pct = max(self.phase.peak_cpu_pct, pct)
            tick += 1
            # The soak reports by itself: a line every 2 s for 10 minutes says nothing more.
            quiet = self.o.scenario == "soak" and self.phase.name in ("soak", "memory")
            if tick % 4 == 0 and not quiet:
                fan = self.fan
                self.log(
                    f"{self.phase.name}: open={len(self.open_list)} pending={self.pending} "
                    f"target={self.target} at_target={self.at_target} frames={self.phase.frames} "
                    f"errors={self.errors} cpu={pct:.0f}%"
                    + (f" deliveries={fan.deliveries}/{fan.expected}" if fan else "")
                )

    # -------------------------------------------------------------------- HTTP

    async def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        limit_s: float = 10.0,
        conn: HttpConnection | None = None,
    ) -> tuple[int, bytes]:
        """One request; (-1, error) when the server did not answer."""
        own = conn is None
        c = conn or HttpConnection(self.host, self.port)
        try:
            return await asyncio.wait_for(
                c.request(method, self.base_path + path, body, headers, close=own), limit_s
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            c.close()
            return -1, f"{type(exc).__name__}: {exc}".encode()
        finally:
            if own:
                c.close()

    async def server_count(self, limit_s: float = 10.0) -> int | str | None:
        """The server's own count: an int; None if it exposes none; "no answer" on a timeout.

        Accepts ``currentUsers`` (the Node peer) and ``user_count`` (broadcast), as loadgen.js.
        """
        if not self.o.stats_path or self.stats_exposed is False:
            return None
        status, body = await self.http("GET", self.o.stats_path, limit_s=limit_s)
        if status == -1:
            self.last_stats_error = body.decode(errors="replace")
            return "no answer"
        try:
            j = json.loads(body) if status == 200 else None
        except ValueError:
            j = None
        if j is None:
            self.stats_exposed = False
            return None
        self.last_stats = j
        n: int | None = j if isinstance(j, int) else None
        if isinstance(j, dict):
            for key in ("currentUsers", "current_users", "user_count", "count", "users"):
                if isinstance(j.get(key), int):
                    n = j[key]
                    break
        self.stats_exposed = n is not None
        return n


# --------------------------------------------------------------------------------- scenarios


def kind_for(i: int, ratio: float) -> str:
    """SSE spread evenly over the clients (0.5: every other one), as loadgen.js."""
    return "sse" if int((i + 1) * ratio + 1e-9) - int(i * ratio + 1e-9) >= 1 else "ws"


async def establish_baseline(run: Run) -> None:
    """Wait (up to --drain s) for the server's count to reach 0; what remains is the baseline."""
    deadline = now() + run.o.drain
    sc = await run.server_count()
    if sc is None:
        run.log(f"server exposes no count at {run.o.stats_path!r}; assuming baseline 0")
        return
    while sc != 0 and now() < deadline:
        await asyncio.sleep(0.2)
        sc = await run.server_count()
    if not isinstance(sc, int):
        raise ScenarioFailed(f"server did not answer {run.o.stats_path}: {sc}", 2)
    run.baseline = sc
    if sc:
        run.log(f"WARNING: server already reports {sc} users; using it as the baseline")


async def connect_phase(
    run: Run, name: str, kinds: list[str], within: float | None = None
) -> dict[str, Any]:
    """Connect ``kinds`` clients; wait until every open client holds the count (at most
    ``within`` s, when given: beyond it the scenario fails)."""
    run.begin_phase(name)
    run.set_target(run.baseline + len(run.open_list) + len(kinds))
    for k in kinds:
        run.enqueue(run.new_client(k))
    await run.wait_idle()
    connect_ms = (now() - run.phase.t0) * 1000
    run.log(f"{name}: every connect settled in {connect_ms:.0f} ms, open={len(run.open_list)}")
    if kinds and not run.open_list:
        raise ScenarioFailed("no client could connect", 1)
    tc = await run.wait_converged(within)
    if tc is None:
        raise ScenarioFailed(f"{name}: clients did not all hold the count within {within}s", 2)
    clients = len(run.open_list)
    return run.end_phase(
        clients=clients,
        connect_ms=r1(connect_ms),
        converge_ms=r1((tc - run.phase.t0) * 1000),
        frames_per_client=r1(run.phase.frames / max(1, clients)),
    )


async def check_server(run: Run, phase: dict[str, Any]) -> None:
    """Record the server's own count next to the number of clients open."""
    phase["server_count"] = await run.server_count()
    phase["expected_count"] = run.baseline + len(run.open_list)


async def close_all(run: Run) -> dict[str, Any]:
    """Teardown: close every client, then wait for the server's count to return to baseline."""
    run.begin_phase("teardown")
    for c in list(run.open_list):
        run.close_client(c)
    run.target = -1
    drain_ms = None
    sc = None
    if run.o.stats_path:
        deadline = now() + run.o.drain
        while True:
            sc = await run.server_count()
            if sc is None or sc == run.baseline:
                drain_ms = r1((now() - run.phase.t0) * 1000) if sc is not None else None
                break
            if now() > deadline:
                break
            await asyncio.sleep(0.1)
    return run.end_phase(server_count_after=sc, server_drain_ms=drain_ms)


def count_mismatches(phases: list[dict[str, Any]]) -> list[str]:
    return [
        f"{p['name']}: server {p['server_count']} != {p['expected_count']} open"
        for p in phases
        if isinstance(p.get("server_count"), int) and p["server_count"] != p["expected_count"]
    ]


async def storm(run: Run) -> dict[str, Any]:
    o = run.o
    kinds = [kind_for(i, o.sse_ratio) for i in range(o.clients)]
    p1 = await connect_phase(run, "connect", kinds)
    await check_server(run, p1)

    # Close a fraction, keeping the ws/sse mix: evenly spaced clients of each kind.
    run.begin_phase("close")
    by_kind: dict[str, list[Client]] = {"ws": [], "sse": []}
    for c in sorted(run.open_list, key=lambda c: c.id):
        by_kind[c.kind].append(c)
    victims: list[Client] = []
    for group in by_kind.values():
        want = round(len(group) * o.close_fraction)
        step = len(group) / want if want else 0
        victims += [group[int(j * step)] for j in range(want)]
    for c in victims:
        run.close_client(c)
    run.set_target(run.baseline + len(run.open_list))
    tc = await run.wait_converged()
    assert tc is not None
    clients = len(run.open_list)
    p2 = run.end_phase(
        closed=len(victims),
        clients=clients,
        converge_ms=r1((tc - run.phase.t0) * 1000),
        frames_per_client=r1(run.phase.frames / max(1, clients)),
    )
    await check_server(run, p2)

    p3 = await connect_phase(run, "reconnect", [c.kind for c in victims])
    await check_server(run, p3)
    teardown = await close_all(run)
    result: dict[str, Any] = {
        "converge_ms": {
            "connect": p1["converge_ms"],
            "close": p2["converge_ms"],
            "reconnect": p3["converge_ms"],
        },
        "frames_per_client": {
            "connect": p1["frames_per_client"],
            "close": p2["frames_per_client"],
            "reconnect": p3["frames_per_client"],
        },
        "frames_total": sum(p["frames"] for p in run.phases),
        "max_connect_ms": max(p1["max_connect_ms"], p3["max_connect_ms"]),
        "server_drain_ms": teardown["server_drain_ms"],
    }
    mismatches = count_mismatches([p1, p2, p3])
    if mismatches:
        raise ScenarioFailed("server count differs from clients open", 1, {"storm": result})
    return {"storm": result}


async def fanout(run: Run) -> dict[str, Any]:
    o = run.o
    kinds = [kind_for(i, o.sse_ratio) for i in range(o.clients)]
    await connect_phase(run, "connect", kinds)

    buckets_before = await fanout_buckets(run)
    run.begin_phase("fanout")
    f = run.fan = Fan(m=o.events, expected=o.events * len(run.open_list))
    # The publisher is a process of its own (bench/publisher.py): publishing from this loop,
    # busy reading the deliveries, would pace the publishes by the load generator.
    publisher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.publisher",
        "--host", run.host,
        "--port", str(run.port),
        "--path", run.base_path + o.publish_path,
        "--token", o.token or "",
        "--event-name", o.event_name,
        "--events", str(f.m),
        "--rate", str(o.rate),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await publisher.communicate()
    try:
        published = json.loads(out)
    except ValueError:
        raise ScenarioFailed(f"the publisher failed (exit {publisher.returncode})", 2) from None
    f.published = published["published"]
    f.publish_errors = published["errors"]
    f.max_lag_ms = published["max_lag_ms"]
    f.first_send = published.get("first_send", 0.0)
    f.last_send = published.get("last_send", 0.0)
    f.request_ms = published.get("request_ms")
    run.log(f"publisher: {published}")
    if f.publish_errors:
        run.errors["publish"] += f.publish_errors
        run.sample_err("publish", str(published["error_sample"]))
    run.log(f"published {f.m} events; waiting for {f.expected - f.deliveries} more deliveries")
    if f.deliveries < f.expected:
        f.waiter = run.loop.create_future()
        try:
            await asyncio.wait_for(f.waiter, o.settle)
        except TimeoutError:
            run.log(f"settle time over: {f.deliveries}/{f.expected} delivered")
    stats = fan_stats(run, f)
    stats["server_fanout_ms"] = await server_fanout_ms(run, buckets_before)
    run.end_phase(clients=len(run.open_list), deliveries=f.deliveries)
    await close_all(run)
    bad = (
        stats["missing"]
        + stats["out_of_order"]
        + stats["duplicates"]
        + stats["malformed"]
        + stats["publish_errors"]
    )
    if bad:
        raise ScenarioFailed(
            "missing, out-of-order, duplicate or failed deliveries", 1, {"fanout": stats}
        )
    return {"fanout": stats}


async def fanout_buckets(run: Run) -> dict[float, float]:
    """The server's ``broadcast_fanout_seconds`` histogram (broadcast's /metrics; the Node peer
    has none): cumulative batch counts by bucket bound, both transports added up."""
    status, body = await run.http("GET", "/metrics", limit_s=10.0)
    buckets: dict[float, float] = {}
    if status != 200:
        return buckets
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("broadcast_fanout_seconds_bucket{"):
            labels, _, value = line.rpartition(" ")
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            le = float("inf") if bound == "+Inf" else float(bound)
            buckets[le] = buckets.get(le, 0.0) + float(value)
    return buckets


async def server_fanout_ms(run: Run, before: dict[float, float]) -> dict[str, float | None] | None:
    """The server's own view of the fanout phase, when it has one: how long a batch's oldest
    event took from reaching a transport's fan-out to being written to its last client, p50
    and p99 over the phase's batches (the histogram now less ``before``), as the upper bounds of
    their buckets. Against the load generator's latency, this says how much of it is the
    server's."""
    after = await fanout_buckets(run)
    buckets = {le: n - before.get(le, 0.0) for le, n in after.items()}
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None

    def quantile(q: float) -> float | None:
        for le in sorted(buckets):
            if total and buckets[le] >= q * total:
                return None if le == float("inf") else r1(le * 1000)
        return None

    return {"batches": total, "p50": quantile(0.5), "p99": quantile(0.99)}


def fan_stats(run: Run, f: Fan) -> dict[str, Any]:
    lat = sorted(f.lat)
    missing = clients_missing = 0
    for c in run.open_list:
        m = f.m - c.fan_unique
        if m > 0:
            missing += m
            clients_missing += 1
    span_s = (f.last_recv - f.first_send) / 1000
    return {
        "events": f.m,
        "published": f.published,
        "publish_errors": f.publish_errors,
        "publish_rate_per_s": (
            r1((f.published - 1) / ((f.last_send - f.first_send) / 1000))
            if f.last_send > f.first_send
            else None
        ),
        "max_publish_lag_ms": r1(f.max_lag_ms),
        "publish_request_ms": f.request_ms,
        "receivers": len(run.open_list),
        "expected": f.expected,
        "deliveries": f.deliveries,
        "deliveries_per_s": round(f.deliveries / span_s) if span_s > 0 else None,
        "latency_ms": {
            "p50": percentile(lat, 50),
            "p90": percentile(lat, 90),
            "p99": percentile(lat, 99),
            "max": r3(lat[-1]) if lat else None,
            "mean": r3(sum(lat) / len(lat)) if lat else None,
        },
        "missing": missing,
        "clients_missing": clients_missing,
        "out_of_order": f.out_of_order,
        "duplicates": f.duplicates,
        "malformed": f.malformed,
    }


async def churn(run: Run) -> dict[str, Any]:
    o = run.o
    rnd = random.Random(o.seed)
    kinds = [kind_for(i, o.sse_ratio) for i in range(o.clients)]
    await connect_phase(run, "connect", kinds)

    run.begin_phase("churn")
    run.target, run.at_target = -1, 0  # nothing to converge to while clients come and go
    lo = max(0, int(o.clients * (1 - o.churn_spread)))
    hi = max(lo + 1, -int(-o.clients * (1 + o.churn_spread) // 1))
    connect_ops = disconnect_ops = 0
    budget = 0.0
    last = now()
    end = last + o.duration
    min_open = max_open = len(run.open_list)
    while True:  # bounded by --duration (the loop ends at `end`)
        await asyncio.sleep(0.01)
        t = now()
        budget += (t - last) * o.churn_rate
        last = t
        while budget >= 1:
            budget -= 1
            live = len(run.open_list) + run.pending
            if live <= lo:
                connect = True
            elif live >= hi:
                connect = False
            else:
                connect = rnd.random() < 0.5
            if connect:
                run.enqueue(run.new_client("sse" if rnd.random() < o.sse_ratio else "ws"))
                connect_ops += 1
            elif run.open_list:
                run.close_client(run.open_list[rnd.randrange(len(run.open_list))])
                disconnect_ops += 1
        min_open = min(min_open, len(run.open_list))
        max_open = max(max_open, len(run.open_list))
        if t >= end:
            break
    run.end_phase(
        connect_ops=connect_ops,
        disconnect_ops=disconnect_ops,
        ops_per_s=r1((connect_ops + disconnect_ops) / o.duration),
        min_open=min_open,
        max_open=max_open,
    )

    run.begin_phase("settle")
    await run.wait_idle()
    run.set_target(run.baseline + len(run.open_list))
    expected = run.target
    tc = await run.wait_converged(o.settle)
    converge_ms = r1((tc - run.phase.t0) * 1000) if tc is not None else None
    mismatch = len(run.open_list) - run.at_target
    # The server's own count, polled until it agrees or the settle time ends.
    sc = await run.server_count()
    deadline = now() + o.settle
    while isinstance(sc, int) and sc != expected and now() < deadline:
        await asyncio.sleep(0.1)
        sc = await run.server_count()
    server_mismatch = sc - expected if isinstance(sc, int) else None
    run.end_phase(
        clients=len(run.open_list),
        expected_count=expected,
        converge_ms=converge_ms,
        mismatch=mismatch,
        server_count=sc,
        server_mismatch=server_mismatch,
    )
    result: dict[str, Any] = {
        "connect_ops": connect_ops,
        "disconnect_ops": disconnect_ops,
        "min_open": min_open,
        "max_open": max_open,
        "expected_count": expected,
        "converge_ms": converge_ms,
        "mismatch": mismatch,
        "server_count": sc,
        "server_mismatch": server_mismatch,
    }
    if mismatch:
        result["stragglers"] = stragglers(run)
    await close_all(run)
    if mismatch or (isinstance(sc, int) and sc != expected) or sc == "no answer":
        raise ScenarioFailed(
            "client counts or server count disagree with clients open", 1, {"churn": result}
        )
    return {"churn": result}


async def rss_kb(run: Run, settle: float) -> int | None:
    """The server's RSS after ``settle`` s of quiet: the lowest of a few reads, so a transient
    allocation does not count as footprint."""
    await asyncio.sleep(settle)
    values = []
    for _ in range(3):
        p = read_proc(run.o.server_pid)
        if p and p.get("rss_kb") is not None:
            values.append(int(p["rss_kb"]))
        await asyncio.sleep(0.1)
    return min(values) if values else None


async def footprint(run: Run) -> dict[str, Any]:
    """RSS per idle connection of one transport (--footprint-transport), and what is left after
    every client has gone (a fresh server per transport keeps the two figures independent)."""
    o = run.o
    kind = o.footprint_transport
    # Warm up: the first connections of a transport load code and fill caches; that is start-up
    # cost, not per-connection cost.
    await connect_phase(run, "warmup", [kind] * min(20, o.clients))
    await close_all(run)
    base = await rss_kb(run, o.footprint_settle)
    p = await connect_phase(run, "open", [kind] * o.clients)
    await check_server(run, p)
    loaded = await rss_kb(run, o.footprint_settle)
    proc = read_proc(o.server_pid) or {}
    await close_all(run)
    after = await rss_kb(run, o.footprint_settle * 2)
    per_conn = None
    opened = p["clients"]
    if base is not None and loaded is not None and opened:
        per_conn = r3((loaded - base) / opened)
    result = {
        "transport": kind,
        "clients": opened,
        "rss_base_kb": base,
        "rss_loaded_kb": loaded,
        "rss_after_kb": after,
        "kb_per_connection": per_conn,
        "retained_kb": (after - base) if after is not None and base is not None else None,
        "server_fds_loaded": proc.get("fds"),
        "server_threads": proc.get("threads"),
        "converge_ms": p["converge_ms"],
    }
    if count_mismatches([p]):
        raise ScenarioFailed("server count differs from clients open", 1, {"footprint": result})
    return {"footprint": result}


def rss_now(run: Run) -> int | None:
    p = read_proc(run.o.server_pid)
    rss = p.get("rss_kb") if p else None
    return int(rss) if rss is not None else None


def mb_text(kb: int | None) -> str:
    return f"{kb / 1024:.1f}" if kb is not None else "?"


async def soak(run: Run) -> dict[str, Any]:
    """A long run around a target population (--clients): Socket.IO and SSE clients join and
    leave at random (--soak-rate operations/s, the population kept within N(1±--soak-spread))
    for --soak-seconds, with progress every --soak-report s. Then every open client's last
    ``user count`` and the server's own count must equal the number of clients open; then all
    leave, and the server's RSS must come back within --rss-tolerance of where it was at the
    start (after a warm-up), within --rss-wait s."""
    o = run.o
    rnd = random.Random(o.seed)
    checks: dict[str, bool] = {}
    result: dict[str, Any] = {
        "seconds": o.soak_seconds,
        "target_clients": o.clients,
        "rate_per_s": o.soak_rate,
        "spread": o.soak_spread,
        "rss_tolerance": o.rss_tolerance,
        "checks": checks,
    }
    # Warm up: the first connections of each transport load code and fill caches (start-up
    # cost, not memory the soak should give back); the baseline is taken after them.
    result["rss_cold_kb"] = (run.srv_before or {}).get("rss_kb")
    warm = [kind_for(i, o.sse_ratio) for i in range(min(40, o.clients))]
    await connect_phase(run, "warmup", warm, within=o.settle)
    await close_all(run)
    rss_start = await rss_kb(run, 1.0)
    result["rss_start_kb"] = rss_start

    ramp = await connect_phase(
        run, "ramp", [kind_for(i, o.sse_ratio) for i in range(o.clients)], within=o.settle
    )
    result["ramp_converge_ms"] = ramp["converge_ms"]

    run.begin_phase("soak")
    run.target, run.at_target = -1, 0  # nothing to converge to while clients come and go
    lo = max(1, int(o.clients * (1 - o.soak_spread)))
    hi = max(lo + 1, math.ceil(o.clients * (1 + o.soak_spread)))
    joins = leaves = 0
    budget = 0.0
    t0 = last = now()
    end = t0 + o.soak_seconds
    next_report = t0 + o.soak_report
    samples: list[dict[str, Any]] = []
    min_open = max_open = len(run.open_list)
    srv_last, t_last = read_proc(o.server_pid), t0
    peak_rss = rss_start or 0
    run.log(
        f"soak: {o.soak_seconds:g} s around {o.clients} clients (within {lo}..{hi}), "
        f"{o.soak_rate:g} joins+leaves/s; server RSS at the start {mb_text(rss_start)} MB"
    )
    while True:  # bounded by --soak-seconds (the loop ends at `end`)
        await asyncio.sleep(0.02)  # the pace of joins and leaves (no waiting on anything)
        t = now()
        budget += (t - last) * o.soak_rate
        last = t
        while budget >= 1:
            budget -= 1
            live = len(run.open_list) + run.pending
            join = live <= lo or (live < hi and rnd.random() < 0.5)
            if join:
                run.enqueue(run.new_client("sse" if rnd.random() < o.sse_ratio else "ws"))
                joins += 1
            elif run.open_list:
                run.close_client(run.open_list[rnd.randrange(len(run.open_list))])
                leaves += 1
        min_open = min(min_open, len(run.open_list))
        max_open = max(max_open, len(run.open_list))
        if t >= next_report or t >= end:
            next_report += o.soak_report
            srv = read_proc(o.server_pid)
            cpu_pct = None
            if srv and srv_last and "cpu_ms" in srv and "cpu_ms" in srv_last and t > t_last:
                cpu_pct = r1((srv["cpu_ms"] - srv_last["cpu_ms"]) / (t - t_last) / 10)
            srv_last, t_last = srv, t
            rss = srv.get("rss_kb") if srv else None
            if isinstance(rss, int):
                peak_rss = max(peak_rss, rss)
            sc = await run.server_count(limit_s=5.0)
            sample = {
                "t_s": r1(t - t0),
                "open": len(run.open_list),
                "connecting": run.pending,
                "joins": joins,
                "leaves": leaves,
                "server_count": sc,
                "rss_kb": rss,
                "server_cpu_pct": cpu_pct,
                "errors": dict(run.errors),
            }
            samples.append(sample)
            errs = run.errors
            run.log(
                f"soak {t - t0:5.0f}/{o.soak_seconds:g} s: population {len(run.open_list)} "
                f"(+{run.pending} connecting), joins {joins}, leaves {leaves}, server count "
                f"{sc}, server RSS {mb_text(rss if isinstance(rss, int) else None)} MB "
                f"(start {mb_text(rss_start)}), server cpu {cpu_pct}%, errors: "
                f"connect {errs['connect']} dropped {errs['dropped']} protocol {errs['protocol']}"
            )
        if t >= end:
            break
    run.end_phase(joins=joins, leaves=leaves, min_open=min_open, max_open=max_open)
    result.update(joins=joins, leaves=leaves, min_open=min_open, max_open=max_open, samples=samples)

    # Every connect settled, then: every client holds the true count, and so does the server.
    run.begin_phase("settle")
    try:
        await asyncio.wait_for(run.wait_idle(), o.connect_timeout + 10)
    except TimeoutError:
        raise ScenarioFailed("connects still pending after the soak", 2, {"soak": result}) from None
    true_count = run.baseline + len(run.open_list)
    run.set_target(true_count)
    tc = await run.wait_converged(o.settle)
    mismatch = len(run.open_list) - run.at_target
    sc = await run.server_count()
    deadline = now() + o.settle
    while isinstance(sc, int) and sc != true_count and now() < deadline:
        await asyncio.sleep(0.1)  # polling the server's count until it agrees, or the deadline
        sc = await run.server_count()
    run.end_phase(clients=len(run.open_list), expected_count=true_count, server_count=sc)
    result.update(
        final_clients=len(run.open_list),
        true_count=true_count,
        converge_ms=r1((tc - run.phase.t0) * 1000) if tc is not None else None,
        clients_off_count=mismatch,
        server_count=sc,
        server_mismatch=sc - true_count if isinstance(sc, int) else None,
    )
    if mismatch:
        result["stragglers"] = stragglers(run)
    checks["clients hold the true count"] = mismatch == 0
    checks["server count is the true count"] = sc == true_count

    # Everyone leaves; the server's count returns to its baseline and its RSS to the start's.
    teardown = await close_all(run)
    result["server_count_after"] = teardown["server_count_after"]
    checks["server count back to baseline"] = teardown["server_count_after"] == run.baseline
    run.begin_phase("memory")
    limit = int(rss_start * (1 + o.rss_tolerance)) if rss_start is not None else None
    rss = rss_now(run)
    rss_min = rss
    deadline = now() + o.rss_wait
    while rss is not None and limit is not None and rss > limit and now() < deadline:
        await asyncio.sleep(0.5)  # polling RSS until it is back, or the deadline
        rss = rss_now(run)
        if rss is not None and rss_min is not None:
            rss_min = min(rss_min, rss)
    returned = rss is not None and limit is not None and rss <= limit
    run.end_phase(rss_kb=rss, rss_limit_kb=limit)
    srv = read_proc(o.server_pid) or {}
    result.update(
        rss_peak_kb=max(peak_rss, int(srv.get("hwm_kb") or 0)),
        rss_end_kb=rss,
        rss_min_after_kb=rss_min,
        rss_limit_kb=limit,
        rss_end_vs_start_pct=r1((rss - rss_start) / rss_start * 100)
        if rss is not None and rss_start
        else None,
        rss_returned_ms=r1((now() - run.phase.t0) * 1000) if returned else None,
    )
    if limit is not None:  # no --server-pid: RSS is not measured, so not checked
        checks[f"RSS within {o.rss_tolerance:.0%} of the start"] = returned
    errs = run.errors
    checks["no connect error, drop or protocol error"] = (
        errs["connect"] + errs["dropped"] + errs["protocol"] == 0
    )
    result["passed"] = all(checks.values())
    run.log(
        f"soak done: {joins} joins, {leaves} leaves; clients off the count {mismatch}, server "
        f"count {sc} for {true_count}; RSS start {mb_text(rss_start)} MB, peak "
        f"{mb_text(result['rss_peak_kb'])}, after all left {mb_text(rss)} (limit "
        f"{mb_text(limit)}); "
        + ("PASSED" if result["passed"] else "FAILED: ")
        + ", ".join(k for k, v in checks.items() if not v)
    )
    if not result["passed"]:
        failed = ", ".join(k for k, v in checks.items() if not v)
        raise ScenarioFailed(f"soak targets missed: {failed}", 1, {"soak": result})
    return {"soak": result}


async def shutdown(run: Run) -> dict[str, Any]:
    """In a module of its own, given this module's helpers: run as ``python -m bench.loadgen``,
    this module is ``__main__``, and importing ``bench.loadgen`` there would load a second copy
    (whose ``ScenarioFailed`` ``amain`` here would not catch)."""
    from bench import shutdown as scenario

    helpers = scenario.Helpers(connect_phase, check_server, kind_for, ScenarioFailed)
    return await scenario.shutdown(run, helpers)


SCENARIOS: dict[str, Callable[[Run], Any]] = {
    "storm": storm,
    "fanout": fanout,
    "churn": churn,
    "footprint": footprint,
    "soak": soak,
    "shutdown": shutdown,
}


# -------------------------------------------------------------------------------------- main


def stragglers(run: Run) -> dict[str, Any]:
    """Who did not converge: a histogram of the last counts of the clients off target."""
    hist: dict[int, int] = {}
    for c in run.open_list:
        if c.last_count != run.target:
            hist[c.last_count] = hist.get(c.last_count, 0) + 1
    top = sorted(hist.items(), key=lambda kv: -kv[1])[:10]
    return {"off_target": sum(hist.values()), "last_counts": {str(k): v for k, v in top}}


def summary(run: Run, ok: bool) -> dict[str, Any]:
    o = run.o
    wall = max(1e-9, now() - run.t_start)
    cpu = time.process_time() - run.cpu_start
    max_phase = max((p["loadgen_cpu_pct"] for p in run.phases if p["ms"] >= 500), default=0.0)
    s: dict[str, Any] = {
        "ok": ok,
        "scenario": o.scenario,
        "url": o.url,
        "clients": o.clients,
        "sse_ratio": o.sse_ratio if o.scenario != "footprint" else None,
        "concurrency": o.concurrency,
        "created": run.created,
        "wall_ms": r1(wall * 1000),
        "baseline": run.baseline,
        "errors": run.errors,
        "error_samples": run.err_samples,
        "phases": run.phases,
        "loadgen": {
            "loop": o.loop_name,
            "cpu_ms": r1(cpu * 1000),
            "cpu_pct": r1(cpu / wall * 100),
            "max_phase_cpu_pct": max_phase,
            "peak_cpu_pct": r1(run.peak_cpu_pct),
            # A phase of 0.5 s or more at >= 90 % of a core: the figures are bounded by the
            # load generator, not by the server.
            "bottleneck": max_phase >= 90,
        },
    }
    if run.last_stats is not None:
        s["server_stats"] = run.last_stats
    if o.server_pid:
        after = read_proc(o.server_pid)
        before = run.srv_before
        s["server"] = {"pid": o.server_pid, "before": before, "after": after}
        if before and after and "cpu_ms" in before and "cpu_ms" in after:
            s["server"]["cpu_ms"] = r1(after["cpu_ms"] - before["cpu_ms"])
            s["server"]["cpu_pct"] = r1((after["cpu_ms"] - before["cpu_ms"]) / wall / 10)
            s["server"]["hwm_kb"] = after["hwm_kb"]
    return s


async def amain(
    o: argparse.Namespace, host: str, port: int, base_path: str
) -> tuple[dict[str, Any], int]:
    run = Run(o, host, port, base_path)
    monitor = asyncio.create_task(run.monitor())
    run.log(
        f"{o.scenario}: {o.clients} clients (sse-ratio {o.sse_ratio}) -> {o.url} [{o.loop_name}]"
    )
    code = 0
    try:
        await establish_baseline(run)
        result = await asyncio.wait_for(SCENARIOS[o.scenario](run), o.timeout)
        s = summary(run, True)
        s.update(result)
        dropped = run.errors["dropped"] + run.errors["connect"]
        if dropped:
            s["ok"] = False
            s["error"] = (
                f"{run.errors['dropped']} client(s) dropped by the server, "
                f"{run.errors['connect']} connect error(s)"
            )
            code = 1
    except (TimeoutError, ScenarioFailed) as exc:
        if isinstance(exc, ScenarioFailed):
            error, code, detail = exc.error, exc.code, exc.detail
        else:
            error, code, detail = f"not done within --timeout {o.timeout}s", 2, {}
        s = summary(run, False)
        s["error"] = error
        s["phase"] = run.phase.name
        s["detail"] = {
            **detail,
            "open": len(run.open_list),
            "pending": run.pending,
            "target": run.target,
            "at_target": run.at_target,
            **stragglers(run),
        }
        if run.fan is not None:
            s["detail"]["fanout"] = fan_stats(run, run.fan)
        sc = await run.server_count(limit_s=2.0)
        s["detail"]["server_count"] = sc
    finally:
        monitor.cancel()
        for c in list(run.open_list):
            c.abort()
    return s, code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="target (loopback only)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="storm")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--sse-ratio", type=float, default=0.5, help="fraction of clients over SSE")
    p.add_argument("--concurrency", type=int, default=200, help="connects in flight at once")
    p.add_argument("--timeout", type=float, default=120.0, help="bound on the whole scenario (s)")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="per-client limit (s)")
    p.add_argument("--server-pid", type=int, default=None, help="read /proc/PID for figures")
    p.add_argument("--sse-path", default="/events")
    p.add_argument("--sio-path", default="/socket.io/")
    p.add_argument("--publish-path", default="/publish")
    p.add_argument("--stats-path", default="/stats", help='"" when the server has none')
    p.add_argument("--drain", type=float, default=30.0, help="wait for the server count (s)")
    p.add_argument("--close-fraction", type=float, default=0.5, help="storm")
    p.add_argument("--events", type=int, default=200, help="fanout: events to publish")
    p.add_argument("--rate", type=float, default=100.0, help="fanout: events/s, 0 = back to back")
    p.add_argument("--event-name", default="bench")
    p.add_argument("--token", default=os.environ.get("BROADCAST_PUBLISH_TOKEN", ""))
    p.add_argument("--duration", type=float, default=20.0, help="churn (s)")
    p.add_argument("--churn-rate", type=float, default=100.0, help="churn: operations/s")
    p.add_argument("--churn-spread", type=float, default=0.1, help="churn: open within N(1±F)")
    p.add_argument("--settle", type=float, default=10.0, help="fanout/churn stragglers (s)")
    p.add_argument("--footprint-transport", choices=("ws", "sse"), default="ws")
    p.add_argument("--footprint-settle", type=float, default=1.0, help="quiet before RSS (s)")
    p.add_argument("--soak-seconds", type=float, default=600.0, help="soak: duration (s)")
    p.add_argument("--soak-rate", type=float, default=20.0, help="soak: joins+leaves per second")
    p.add_argument("--soak-spread", type=float, default=0.1, help="soak: open within N(1±F)")
    p.add_argument("--soak-report", type=float, default=30.0, help="soak: progress every S s")
    p.add_argument("--rss-tolerance", type=float, default=0.1, help="soak: RSS back within F")
    p.add_argument("--rss-wait", type=float, default=90.0, help="soak: for RSS to come back (s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    p.add_argument("--quiet", action="store_true")
    o = p.parse_args(argv)
    if o.clients < 1 or o.concurrency < 1 or o.events < 0:
        p.error("--clients and --concurrency must be >= 1, --events >= 0")
    if not 0 <= o.sse_ratio <= 1:
        p.error("--sse-ratio must be within 0..1")
    if o.scenario == "churn":
        o.timeout = max(o.timeout, o.duration + 2 * o.settle + 30)
    if o.scenario == "soak":
        if o.soak_seconds <= 0 or o.soak_rate < 0 or o.soak_report <= 0:
            p.error("--soak-seconds and --soak-report must be > 0, --soak-rate >= 0")
        bound = o.soak_seconds + 4 * o.settle + 2 * o.drain + o.connect_timeout + o.rss_wait
        o.timeout = max(o.timeout, bound + 60)
    return o


def loop_factory(disabled: bool) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    if not disabled:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    u = urlsplit(o.url)
    host = (u.hostname or "").strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1") or u.scheme not in ("http", "ws"):
        sys.stderr.write(f"loadgen: refusing {o.url}: only http:// loopback targets\n")
        print(json.dumps({"ok": False, "error": "usage", "message": "loopback only"}))
        return 3
    host = "127.0.0.1" if host == "localhost" else host
    factory, o.loop_name = loop_factory(o.no_uvloop)
    # Thousands of long-lived protocol objects: a generational collection would scan them all
    # in the middle of a measurement. Nothing here makes reference cycles worth collecting.
    gc.disable()
    with asyncio.Runner(loop_factory=factory) as runner:
        # The scenario has its own --timeout; this outer bound also covers the drain waits.
        bound = o.timeout + 2 * o.drain + 30
        main_task = amain(o, host, u.port or 80, u.path.rstrip("/"))
        try:
            s, code = runner.run(asyncio.wait_for(main_task, bound))
        except TimeoutError:
            s, code = {"ok": False, "scenario": o.scenario, "error": f"hung past {bound:.0f}s"}, 2
    line = json.dumps(s)
    if o.out:
        with open(o.out, "a") as f:
            f.write(line + "\n")
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
