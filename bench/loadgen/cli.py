"""``python -m bench.loadgen``: the options, the event loop, and the JSON line on stdout."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

import bench.loadgen
from bench.loadgen.driver import amain
from bench.loadgen.scenarios import SCENARIOS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=bench.loadgen.__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
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
    p.add_argument("--ch-subscribers", type=int, default=10, help="ch-cost: the channel's")
    p.add_argument("--ch-small-others", type=int, default=100, help="ch-cost: others, first")
    p.add_argument("--ch-publishes", type=int, default=1000, help="ch-cost: per burst")
    p.add_argument("--ch-bursts", type=int, default=3, help="ch-cost: bursts (median)")
    p.add_argument("--ch-settle", type=float, default=1.0, help="ch-*: quiet before RSS/CPU (s)")
    p.add_argument(
        "--ch-memory-mode", choices=("plain", "own", "many"), default="own", help="ch-memory"
    )
    p.add_argument("--ch-per-client", type=int, default=10, help="ch-memory many: channels")
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
