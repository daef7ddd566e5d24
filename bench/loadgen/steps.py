"""The steps the scenarios are made of: the baseline, a connect phase (connect, then wait for
convergence), the server's count beside the clients', the teardown, a population that joins
and leaves at random, and the server's RSS after a quiet spell."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from bench.loadgen.measure import r1, read_proc
from bench.loadgen.session import Run, ScenarioFailed
from bench.wire import now


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
    run: Run,
    name: str,
    kinds: list[str],
    within: float | None = None,
    channels: list[tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """Connect ``kinds`` clients (client i subscribing to ``channels[i]`` as it connects, when
    given); wait until every open client holds the count (at most ``within`` s, when given:
    beyond it the scenario fails)."""
    run.begin_phase(name)
    run.set_target(run.baseline + len(run.open_list) + len(kinds))
    for i, k in enumerate(kinds):
        run.enqueue(run.new_client(k, channels[i] if channels else ()))
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


def stragglers(run: Run) -> dict[str, Any]:
    """Who did not converge: a histogram of the last counts of the clients off target."""
    hist: dict[int, int] = {}
    for c in run.open_list:
        if c.last_count != run.target:
            hist[c.last_count] = hist.get(c.last_count, 0) + 1
    top = sorted(hist.items(), key=lambda kv: -kv[1])[:10]
    return {"off_target": sum(hist.values()), "last_counts": {str(k): v for k, v in top}}


async def server_count_agrees(run: Run, expected: int, within: float) -> int | str | None:
    """The server's own count, polled until it is ``expected`` or ``within`` s have passed."""
    sc = await run.server_count()
    deadline = now() + within
    while isinstance(sc, int) and sc != expected and now() < deadline:
        await asyncio.sleep(0.1)  # polling the server's count until it agrees, or the deadline
        sc = await run.server_count()
    return sc


class JoinLeave:
    """Clients joining and leaving at random, ``rate`` operations per second, the population
    (open or connecting) kept within ``lo``..``hi``: at a bound it moves back inside, between
    them a join or a leave is a coin toss; a join is over SSE with the run's --sse-ratio."""

    def __init__(self, run: Run, rnd: random.Random, rate: float, lo: int, hi: int) -> None:
        self.run = run
        self.rnd = rnd
        self.rate = rate
        self.lo = lo
        self.hi = hi
        self.joins = 0
        self.leaves = 0
        self.budget = 0.0
        self.last = now()
        self.min_open = self.max_open = len(run.open_list)

    def step(self, t: float) -> None:
        """The operations due from the last step until ``t`` (monotonic s)."""
        run, rnd = self.run, self.rnd
        self.budget += (t - self.last) * self.rate
        self.last = t
        while self.budget >= 1:
            self.budget -= 1
            live = len(run.open_list) + run.pending
            join = live <= self.lo or (live < self.hi and rnd.random() < 0.5)
            if join:
                run.enqueue(run.new_client("sse" if rnd.random() < run.o.sse_ratio else "ws"))
                self.joins += 1
            elif run.open_list:
                run.close_client(run.open_list[rnd.randrange(len(run.open_list))])
                self.leaves += 1
        self.min_open = min(self.min_open, len(run.open_list))
        self.max_open = max(self.max_open, len(run.open_list))


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


def rss_now(run: Run) -> int | None:
    p = read_proc(run.o.server_pid)
    rss = p.get("rss_kb") if p else None
    return int(rss) if rss is not None else None
