"""fanout: N clients hold on while a publisher (``bench/publisher.py``, a process of its own)
publishes ``--events`` events; every client must receive every event once, in order; the
latency from publish to receipt, and the server's own view of its fan-out (``/metrics``)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench.loadgen.measure import percentile, r1, r3
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.steps import close_all, connect_phase, kind_for
from bench.loadgen.tracking import Fan


async def fanout(run: Run) -> dict[str, Any]:
    o = run.o
    kinds = [kind_for(i, o.sse_ratio) for i in range(o.clients)]
    await connect_phase(run, "connect", kinds)

    buckets_before = await fanout_buckets(run)
    run.begin_phase("fanout")
    f = run.fan = Fan(m=o.events, expected=o.events * len(run.open_list))
    await publish(run, f)
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


async def publish(run: Run, f: Fan) -> None:
    """Publish the events (``bench/publisher.py``) and record what it says in ``f``."""
    o = run.o
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
