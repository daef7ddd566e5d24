"""storm: N clients connect at once, half of each transport closes, then comes back; each time,
how long until every open client holds the exact count."""

from __future__ import annotations

from typing import Any

from bench.loadgen.measure import r1
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.steps import check_server, close_all, connect_phase, count_mismatches, kind_for
from bench.wire import Client


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
