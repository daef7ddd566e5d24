"""footprint: the server's RSS per idle connection of one transport, and what it keeps after
every client has gone."""

from __future__ import annotations

from typing import Any

from bench.loadgen.measure import r3, read_proc
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.steps import check_server, close_all, connect_phase, count_mismatches, rss_kb


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
