"""churn: N clients, then joins and leaves at random for ``--duration`` s; then every client and
the server must agree on the count."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from bench.loadgen.measure import r1
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.steps import (
    JoinLeave,
    close_all,
    connect_phase,
    kind_for,
    server_count_agrees,
    stragglers,
)
from bench.wire import now


async def churn(run: Run) -> dict[str, Any]:
    o = run.o
    kinds = [kind_for(i, o.sse_ratio) for i in range(o.clients)]
    await connect_phase(run, "connect", kinds)

    ops = await churn_phase(run, random.Random(o.seed))
    expected, converge_ms, mismatch, sc = await settle_phase(run)
    server_mismatch = sc - expected if isinstance(sc, int) else None
    result: dict[str, Any] = {
        "connect_ops": ops.joins,
        "disconnect_ops": ops.leaves,
        "min_open": ops.min_open,
        "max_open": ops.max_open,
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


async def churn_phase(run: Run, rnd: random.Random) -> JoinLeave:
    """Joins and leaves at --churn-rate for --duration s, the population within
    N(1±--churn-spread)."""
    o = run.o
    run.begin_phase("churn")
    run.target, run.at_target = -1, 0  # nothing to converge to while clients come and go
    lo = max(0, int(o.clients * (1 - o.churn_spread)))
    hi = max(lo + 1, -int(-o.clients * (1 + o.churn_spread) // 1))
    ops = JoinLeave(run, rnd, o.churn_rate, lo, hi)
    end = ops.last + o.duration
    while True:  # bounded by --duration (the loop ends at `end`)
        await asyncio.sleep(0.01)
        t = now()
        ops.step(t)
        if t >= end:
            break
    run.end_phase(
        connect_ops=ops.joins,
        disconnect_ops=ops.leaves,
        ops_per_s=r1((ops.joins + ops.leaves) / o.duration),
        min_open=ops.min_open,
        max_open=ops.max_open,
    )
    return ops


async def settle_phase(run: Run) -> tuple[int, float | None, int, int | str | None]:
    """Every connect settled, then: (the count expected, ms until every client held it or None,
    clients off it, the server's count)."""
    run.begin_phase("settle")
    await run.wait_idle()
    run.set_target(run.baseline + len(run.open_list))
    expected = run.target
    tc = await run.wait_converged(run.o.settle)
    converge_ms = r1((tc - run.phase.t0) * 1000) if tc is not None else None
    mismatch = len(run.open_list) - run.at_target
    sc = await server_count_agrees(run, expected, run.o.settle)
    run.end_phase(
        clients=len(run.open_list),
        expected_count=expected,
        converge_ms=converge_ms,
        mismatch=mismatch,
        server_count=sc,
        server_mismatch=sc - expected if isinstance(sc, int) else None,
    )
    return expected, converge_ms, mismatch, sc
