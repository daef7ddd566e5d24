"""``bench/run``: benchmark broadcast against the Node reference peer, side by side.

For every scenario and size it starts a fresh server pinned to one core (ours, then the Node
peer), runs ``bench/loadgen/`` pinned to the other core against it, stops it, and keeps the
load generator's JSON. At the end: a table on stdout (ours, node, ours/node), the JSON of every
run in bench/results/<timestamp>.json (with a Markdown table and a plot beside it) and the
servers' logs in bench/results/<timestamp>-logs/. ``--soak`` runs the soak (ours only): ten minutes
of joins and leaves around 2,000 clients, then exact counts and the memory back.

See docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

from bench.servers import ROOT

BENCH = Path(__file__).resolve().parent
CHANNELS = ("ch-storm", "ch-fanout", "ch-cost", "ch-memory")
SCENARIOS = ("storm", "fanout", "churn", "footprint", "shutdown", "soak", *CHANNELS)
# soak: when asked; the channel scenarios at sizes that take a minute or two (--ch-full: the
# issue's sizes, which take the Node peer several minutes)
DEFAULT_SCENARIOS = ("storm", "fanout", "churn", "footprint", "shutdown", *CHANNELS)
OURS_ONLY = ("soak", "shutdown")  # scenarios the Node peer does not run
# ch-cost and ch-memory connect their clients all at once; the Node peer sends every client
# every count change, N^2 frames: about 8 minutes at 10,000, with clients lost to ping timeouts
# (shared/bench/README.md, "Limits"). Above this many clients they run on ours only.
NODE_MAX_CLIENTS = 5000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the sizes --quick (or the defaults) leave unset filled in."""
    p = parser()
    o = p.parse_args(argv)
    resolve(o, p)
    return o


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated, of {','.join(SCENARIOS)} (default {','.join(DEFAULT_SCENARIOS)})",
    )
    p.add_argument("--sizes", default=None, help="clients for storm (and fanout): 500,1000,2000")
    p.add_argument("--fanout-sizes", default=None, help="clients for fanout (default: --sizes)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run under a minute")
    p.add_argument("--sse-ratio", type=float, default=0.5, help="fraction of clients over SSE")
    p.add_argument("--concurrency", type=int, default=200, help="connects in flight at once")
    p.add_argument("--events", type=int, default=None, help="fanout: events (default 200)")
    p.add_argument("--rate", type=float, default=None, help="fanout: events/s, 0 = back to back")
    p.add_argument("--churn-clients", type=int, default=None, help="default 1000")
    p.add_argument("--churn-duration", type=float, default=None, help="seconds (default 20)")
    p.add_argument("--churn-rate", type=float, default=100.0, help="joins+leaves per second")
    p.add_argument("--footprint-clients", type=int, default=None, help="default 1000")
    p.add_argument(
        "--shutdown-clients", type=int, default=None, help="shutdown: default 5000 (quick: 300)"
    )
    p.add_argument(
        "--ch-full",
        action="store_true",
        help="the channel scenarios at the issue's sizes: 5,000 clients (ch-storm, ch-fanout),\n"
        "10,000 (ch-cost, ch-memory)",
    )
    p.add_argument("--ch-clients", type=int, default=None, help="ch-storm, ch-fanout (1000)")
    p.add_argument(
        "--ch-storm-channels", type=int, default=None, help="ch-storm: channels (clients / 10)"
    )
    p.add_argument("--ch-fanout-channels", type=int, default=None, help="ch-fanout (50)")
    p.add_argument("--ch-events", type=int, default=None, help="ch-fanout: per case (2000)")
    p.add_argument(
        "--ch-rate", type=float, default=500.0, help="ch-fanout's paced case: publishes/s (500)"
    )
    p.add_argument("--ch-others", type=int, default=None, help="ch-cost: others, at most (1000)")
    p.add_argument("--ch-publishes", type=int, default=None, help="ch-cost: per burst (1000)")
    p.add_argument("--ch-memory-clients", type=int, default=None, help="ch-memory (1000)")
    p.add_argument(
        "--ch-per-client", type=int, default=10, help="ch-memory: channels each, many (10)"
    )
    p.add_argument(
        "--soak",
        action="store_true",
        help="run the soak (ours only): alone, or with the --scenarios given",
    )
    p.add_argument("--soak-seconds", type=float, default=None, help="default 600 (quick: 20)")
    p.add_argument("--soak-clients", type=int, default=None, help="default 2000 (quick: 200)")
    p.add_argument(
        "--soak-rate", type=float, default=20.0, help="soak: joins+leaves/s (default 20)"
    )
    p.add_argument(
        "--soak-report", type=float, default=None, help="soak: progress every S s (30; quick 5)"
    )
    p.add_argument(
        "--rss-tolerance",
        type=float,
        default=0.1,
        help="soak: RSS back within this fraction of the start (0.1)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for our server only (repeat), e.g. PYTHONMALLOC=malloc",
    )
    p.add_argument("--target", default=None, help="drive this running server instead of ours")
    p.add_argument("--target-pid", type=int, default=None, help="its PID, for CPU/RSS figures")
    p.add_argument("--no-node", action="store_true", help="skip the Node reference peer")
    p.add_argument(
        "--shared",
        type=Path,
        # A checkout's shared/ is beside it; a git worktree elsewhere names it in BENCH_SHARED.
        default=Path(os.environ.get("BENCH_SHARED") or ROOT.parent / "shared" / "bench"),
        help="the benchmark kit (default $BENCH_SHARED, else ../shared/bench)",
    )
    p.add_argument("--peer-dir", type=Path, default=None, help="a prepared peer (npm ci done)")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--loadgen-core", type=int, default=1)
    p.add_argument("--backlog", type=int, default=1024, help="our listen backlog (Node: 1024)")
    p.add_argument(
        "--worker-class", default="asyncio", choices=("asyncio", "uvloop"), help="hypercorn's loop"
    )
    p.add_argument(
        "--quiet-limit",
        type=float,
        default=None,
        help="seconds to wait for quiet cores before each case; a disturbed case runs again "
        "(default 60; quick: 0, neither)",
    )
    p.add_argument("--out-dir", type=Path, default=BENCH / "results")
    return p


def resolve(o: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """The scenarios as a list, the sizes left unset filled in (small ones with --quick), the
    --server-env pairs as a dict; a usage error (exit 2) for what does not parse."""
    if o.scenarios is None:
        o.scenarios = "soak" if o.soak else ",".join(DEFAULT_SCENARIOS)
    elif o.soak:
        o.scenarios += ",soak"
    o.scenarios = list(dict.fromkeys(s.strip() for s in o.scenarios.split(",") if s.strip()))
    unknown = set(o.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    q = o.quick
    o.sizes = ints(o.sizes) or ([100, 300] if q else [500, 1000, 2000])
    o.fanout_sizes = ints(o.fanout_sizes) or o.sizes
    o.events = o.events if o.events is not None else (50 if q else 200)
    o.rate = o.rate if o.rate is not None else 100.0
    o.churn_clients = o.churn_clients or (200 if q else 1000)
    o.churn_duration = o.churn_duration or (4.0 if q else 20.0)
    o.footprint_clients = o.footprint_clients or (200 if q else 1000)
    o.shutdown_clients = o.shutdown_clients or (300 if q else 5000)
    o.soak_seconds = o.soak_seconds or (20.0 if q else 600.0)
    o.soak_clients = o.soak_clients or (200 if q else 2000)
    o.soak_report = o.soak_report or (5.0 if q else 30.0)
    o.quiet_limit = o.quiet_limit if o.quiet_limit is not None else (0.0 if q else 60.0)
    full = o.ch_full
    o.ch_clients = o.ch_clients or (200 if q else 5000 if full else 1000)
    o.ch_storm_channels = o.ch_storm_channels or max(1, o.ch_clients // 10)
    o.ch_fanout_channels = o.ch_fanout_channels or (20 if q else 50)
    o.ch_events = o.ch_events or (300 if q else 5000 if full else 2000)
    o.ch_others = o.ch_others or (200 if q else 10000 if full else 1000)
    o.ch_publishes = o.ch_publishes or (100 if q else 1000)
    o.ch_memory_clients = o.ch_memory_clients or (200 if q else 10000 if full else 1000)
    env = {}
    for item in o.server_env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            p.error(f"--server-env wants NAME=VALUE, not {item!r}")
        env[name] = value
    o.server_env = env
    if o.target:
        u = urlsplit(o.target)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            p.error("--target must be a loopback URL")


def ints(text: str | None) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []
