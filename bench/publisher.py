"""The fanout scenario's publisher, in a process of its own (on the load generator's core).

Why a process: the load generator's event loop is busy reading hundreds of thousands of
deliveries a second; publishing from that same loop, each POST would wait behind those reads,
and the publish rate would measure the load generator, not the server. A backend that publishes
is another process in real life too.

Open loop, as loadgen.js: event ``i`` is due at ``t0 + i / rate`` whether or not the server has
answered the previous ones, and its ``t`` is that due time; a server that cannot take ``rate``
events per second falls behind, and the latency shows it. Publishes go one at a time, in order,
on one keep-alive connection. ``--rate 0``: back to back, ``t`` the time of sending.

Prints one JSON object: how many went out, errors (with a sample), the worst lag behind the
schedule, each request's round trip (p50, p99, max) and which request was the slowest, and the
wall-clock times of the first and last publish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from bench.wire import HttpConnection, epoch_ms, now


async def publish_all(o: argparse.Namespace) -> dict[str, Any]:
    conn = HttpConnection(o.host, o.port)
    headers = {"Authorization": f"Bearer {o.token}"} if o.token else {}
    interval = 1.0 / o.rate if o.rate > 0 else 0.0
    result: dict[str, Any] = {"published": 0, "errors": 0, "error_sample": None, "max_lag_ms": 0.0}
    rtts: list[float] = []  # each request's round trip (ms)
    t0, e0 = now(), epoch_ms()
    for i in range(o.events):
        if interval:
            due = t0 + i * interval
            wait = due - now()
            if wait > 0.001:
                await asyncio.sleep(wait)
            result["max_lag_ms"] = max(result["max_lag_ms"], (now() - due) * 1000)
            ts = e0 + i * interval * 1000
        else:
            ts = epoch_ms()
        sent = epoch_ms()
        result.setdefault("first_send", sent)
        result["last_send"] = sent
        result["published"] += 1
        body = json.dumps({"event": o.event_name, "data": {"seq": i, "t": ts}}).encode()
        started = now()
        try:
            status, text = await asyncio.wait_for(
                conn.request("POST", o.path, body, headers, close=False), 30.0
            )
        except (OSError, TimeoutError) as exc:
            status, text = -1, repr(exc).encode()
        rtts.append((now() - started) * 1000)
        if rtts[-1] == max(rtts):
            result["slowest_request"] = i
        if status not in (200, 201, 202):
            result["errors"] += 1
            result["error_sample"] = result["error_sample"] or f"HTTP {status} {text[:80]!r}"
    conn.close()
    rtts.sort()
    if rtts:
        result["request_ms"] = {
            "p50": round(rtts[len(rtts) // 2], 1),
            "p99": round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], 1),
            "max": round(rtts[-1], 1),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.publisher", description=__doc__)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True, help="the publish path, e.g. /publish")
    p.add_argument("--token", default="")
    p.add_argument("--event-name", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="events/s; 0: back to back")
    o = p.parse_args(argv)
    print(json.dumps(asyncio.run(publish_all(o))))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
