"""soak: a long run of joins and leaves around a population, then exact counts and the
server's memory back where it started."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen.measure import mb_text, r1, read_proc
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.steps import (
    JoinLeave,
    close_all,
    connect_phase,
    kind_for,
    rss_kb,
    rss_now,
    server_count_agrees,
    stragglers,
)
from bench.wire import now


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

    progress = await soak_phase(run, rnd, rss_start)
    ops = progress.ops
    result.update(
        joins=ops.joins,
        leaves=ops.leaves,
        min_open=ops.min_open,
        max_open=ops.max_open,
        samples=progress.samples,
    )
    mismatch, sc, true_count = await settle_phase(run, result, checks)

    # Everyone leaves; the server's count returns to its baseline and its RSS to the start's.
    teardown = await close_all(run)
    result["server_count_after"] = teardown["server_count_after"]
    checks["server count back to baseline"] = teardown["server_count_after"] == run.baseline
    rss, limit = await memory_phase(run, result, checks, rss_start, progress.peak_rss)
    errs = run.errors
    checks["no connect error, drop or protocol error"] = (
        errs["connect"] + errs["dropped"] + errs["protocol"] == 0
    )
    result["passed"] = all(checks.values())
    run.log(
        f"soak done: {ops.joins} joins, {ops.leaves} leaves; clients off the count {mismatch}, "
        f"server count {sc} for {true_count}; RSS start {mb_text(rss_start)} MB, peak "
        f"{mb_text(result['rss_peak_kb'])}, after all left {mb_text(rss)} (limit "
        f"{mb_text(limit)}); "
        + ("PASSED" if result["passed"] else "FAILED: ")
        + ", ".join(k for k, v in checks.items() if not v)
    )
    if not result["passed"]:
        failed = ", ".join(k for k, v in checks.items() if not v)
        raise ScenarioFailed(f"soak targets missed: {failed}", 1, {"soak": result})
    return {"soak": result}


@dataclass
class Progress:
    """The soak's progress reports: a sample every --soak-report s, and the RSS peak seen."""

    ops: JoinLeave
    t0: float
    rss_start: int | None
    srv_last: dict[str, Any] | None
    """The server's /proc figures at the last sample (its CPU since then is the sample's)."""
    t_last: float
    peak_rss: int
    samples: list[dict[str, Any]] = field(default_factory=list)

    async def report(self, run: Run, t: float) -> None:
        """One sample at ``t`` (monotonic s): the population, the server's count, RSS and CPU
        since the last sample, the errors; logged too."""
        o, ops, t_last = run.o, self.ops, self.t_last
        srv = read_proc(o.server_pid)
        cpu_pct = None
        srv_last = self.srv_last
        if srv and srv_last and "cpu_ms" in srv and "cpu_ms" in srv_last and t > t_last:
            cpu_pct = r1((srv["cpu_ms"] - srv_last["cpu_ms"]) / (t - t_last) / 10)
        self.srv_last, self.t_last = srv, t
        rss = srv.get("rss_kb") if srv else None
        if isinstance(rss, int):
            self.peak_rss = max(self.peak_rss, rss)
        sc = await run.server_count(limit_s=5.0)
        sample = {
            "t_s": r1(t - self.t0),
            "open": len(run.open_list),
            "connecting": run.pending,
            "joins": ops.joins,
            "leaves": ops.leaves,
            "server_count": sc,
            "rss_kb": rss,
            "server_cpu_pct": cpu_pct,
            "errors": dict(run.errors),
        }
        self.samples.append(sample)
        errs = run.errors
        run.log(
            f"soak {t - self.t0:5.0f}/{o.soak_seconds:g} s: population {len(run.open_list)} "
            f"(+{run.pending} connecting), joins {ops.joins}, leaves {ops.leaves}, server count "
            f"{sc}, server RSS {mb_text(rss if isinstance(rss, int) else None)} MB "
            f"(start {mb_text(self.rss_start)}), server cpu {cpu_pct}%, errors: "
            f"connect {errs['connect']} dropped {errs['dropped']} protocol {errs['protocol']}"
        )


async def soak_phase(run: Run, rnd: random.Random, rss_start: int | None) -> Progress:
    """Joins and leaves for --soak-seconds, with a progress report every --soak-report s."""
    o = run.o
    run.begin_phase("soak")
    run.target, run.at_target = -1, 0  # nothing to converge to while clients come and go
    lo = max(1, int(o.clients * (1 - o.soak_spread)))
    hi = max(lo + 1, math.ceil(o.clients * (1 + o.soak_spread)))
    ops = JoinLeave(run, rnd, o.soak_rate, lo, hi)
    t0 = ops.last
    end = t0 + o.soak_seconds
    next_report = t0 + o.soak_report
    progress = Progress(ops, t0, rss_start, read_proc(o.server_pid), t0, rss_start or 0)
    run.log(
        f"soak: {o.soak_seconds:g} s around {o.clients} clients (within {lo}..{hi}), "
        f"{o.soak_rate:g} joins+leaves/s; server RSS at the start {mb_text(rss_start)} MB"
    )
    while True:  # bounded by --soak-seconds (the loop ends at `end`)
        await asyncio.sleep(0.02)  # the pace of joins and leaves (no waiting on anything)
        t = now()
        ops.step(t)
        if t >= next_report or t >= end:
            next_report += o.soak_report
            await progress.report(run, t)
        if t >= end:
            break
    run.end_phase(joins=ops.joins, leaves=ops.leaves, min_open=ops.min_open, max_open=ops.max_open)
    return progress


async def settle_phase(
    run: Run, result: dict[str, Any], checks: dict[str, bool]
) -> tuple[int, int | str | None, int]:
    """Every connect settled, then: every client holds the true count, and so does the server.
    Returns (clients off the count, the server's count, the true count)."""
    o = run.o
    run.begin_phase("settle")
    try:
        await asyncio.wait_for(run.wait_idle(), o.connect_timeout + 10)
    except TimeoutError:
        raise ScenarioFailed("connects still pending after the soak", 2, {"soak": result}) from None
    true_count = run.baseline + len(run.open_list)
    run.set_target(true_count)
    tc = await run.wait_converged(o.settle)
    mismatch = len(run.open_list) - run.at_target
    sc = await server_count_agrees(run, true_count, o.settle)
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
    return mismatch, sc, true_count


async def memory_phase(
    run: Run,
    result: dict[str, Any],
    checks: dict[str, bool],
    rss_start: int | None,
    peak_rss: int,
) -> tuple[int | None, int | None]:
    """After everyone left: the server's RSS, polled until it is back within --rss-tolerance of
    the start or --rss-wait s have passed. Returns (the last RSS, the limit)."""
    o = run.o
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
    return rss, limit
