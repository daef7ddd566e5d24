"""One run of one scenario, start to end: the baseline, the scenario within ``--timeout``, and
the JSON summary (what went wrong, when something did)."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.loadgen.fanout import fan_stats
from bench.loadgen.measure import r1, read_proc
from bench.loadgen.scenarios import SCENARIOS
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.steps import establish_baseline, stragglers
from bench.wire import now


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
