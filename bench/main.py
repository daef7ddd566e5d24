"""``bench/run``: benchmark broadcast against the Node reference peer, side by side.

For every scenario and size it starts a fresh server pinned to one core (ours, then the Node
peer), runs ``bench/loadgen.py`` pinned to the other core against it, stops it, and keeps the
load generator's JSON. At the end: a table on stdout (ours, node, ours/node), the JSON of every
run in bench/results/<timestamp>.json (with a Markdown table and a plot beside it) and the
servers' logs in bench/results/<timestamp>-logs/. ``--soak`` runs the soak (ours only): ten minutes
of joins and leaves around 2,000 clients, then exact counts and the memory back.

See docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import report
from bench.report import dig
from bench.servers import (
    ROOT,
    ServerProcess,
    ServerSpec,
    free_port,
    log,
    node_spec,
    ours_spec,
    prepare_peer,
    serve_spec,
)

BENCH = Path(__file__).resolve().parent
SCENARIOS = ("storm", "fanout", "churn", "footprint", "shutdown", "soak")
DEFAULT_SCENARIOS = ("storm", "fanout", "churn", "footprint", "shutdown")  # soak: when asked
OURS_ONLY = ("soak", "shutdown")  # scenarios the Node peer does not run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "bench")
    p.add_argument("--peer-dir", type=Path, default=None, help="a prepared peer (npm ci done)")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--loadgen-core", type=int, default=1)
    p.add_argument("--backlog", type=int, default=1024, help="our listen backlog (Node: 1024)")
    p.add_argument(
        "--worker-class", default="asyncio", choices=("asyncio", "uvloop"), help="hypercorn's loop"
    )
    p.add_argument("--out-dir", type=Path, default=BENCH / "results")
    o = p.parse_args(argv)
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
    return o


def ints(text: str | None) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def raise_fd_limit(need: int) -> dict[str, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (Node does this itself, Python does not); the
    servers and the load generator inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft < need:
        log(f"WARNING: open-files limit {soft} < {need} needed; raise the hard limit")
    return {"soft": soft, "hard": hard}


def machine() -> dict[str, Any]:
    def first(cmd: list[str]) -> str | None:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            return out.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": first(["node", "--version"]),
        "packages": versions(),
    }


def versions() -> dict[str, str | None]:
    """Versions of what is measured: the server's stack and the load generator's helpers."""
    out: dict[str, str | None] = {}
    for name in ("hypercorn", "litestar", "python-socketio", "python-engineio", "uvloop", "orjson"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def core_busy_ms() -> dict[int, float]:
    """CPU time spent busy (not idle or iowait) on each core since boot, from /proc/stat."""
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in fields]
            busy[int(name[3:])] = (sum(v[:8]) - v[3] - v[4]) * tick
    return busy


def foreign_cpu(
    before: dict[int, float], after: dict[int, float], wall_ms: float, own: dict[int, float]
) -> dict[str, float]:
    """Percent of each benchmark core used by *other* processes during a run: the machine's
    busy time on that core minus what the server or the load generator used there. Anything
    much above zero means the figures of that run are disturbed."""
    out = {}
    for core, own_ms in own.items():
        used = after.get(core, 0.0) - before.get(core, 0.0)
        out[f"core{core}"] = round(max(0.0, (used - own_ms) / wall_ms * 100), 1)
    return out


class Bench:
    def __init__(self, o: argparse.Namespace, stamp: str) -> None:
        self.o = o
        self.stamp = stamp
        self.logs = o.out_dir / f"{stamp}-logs"
        self.token = os.environ.get("BROADCAST_PUBLISH_TOKEN", "").split(",")[0].strip()
        if len(self.token) < 16:
            self.token = secrets.token_urlsafe(24)
        self.runs: list[dict[str, Any]] = []
        self.node_error: str | None = None

    def cases(self) -> list[tuple[str, str, int, list[str], float]]:
        """(scenario, case label, clients, extra loadgen args, timeout s) in run order."""
        o = self.o
        out: list[tuple[str, str, int, list[str], float]] = []
        common = ["--sse-ratio", str(o.sse_ratio), "--concurrency", str(o.concurrency)]
        if "storm" in o.scenarios:
            for n in o.sizes:
                # Node's storm costs N^2 frames: ~8 s at 1000 clients here, ~25x that at 5000.
                out.append(("storm", f"N={n}", n, common, 60 + 5e-5 * n * n))
        if "fanout" in o.scenarios:
            for n in o.fanout_sizes:
                args = [*common, "--events", str(o.events), "--rate", str(o.rate), "--settle", "60"]
                out.append(("fanout", f"N={n}", n, args, 90 + 0.05 * n + 0.01 * n * o.events))
        if "churn" in o.scenarios:
            n, d = o.churn_clients, o.churn_duration
            args = [*common, "--duration", str(d), "--churn-rate", str(o.churn_rate)]
            out.append(("churn", f"N={n} {d:g}s", n, args, d + 120 + 0.02 * n))
        if "footprint" in o.scenarios:
            n = o.footprint_clients
            settle = "0.5" if o.quick else "1"
            for kind in ("sse", "ws"):
                args = ["--footprint-transport", kind, "--footprint-settle", settle]
                label = f"{'SSE' if kind == 'sse' else 'Socket.IO'} N={n}"
                out.append(("footprint", label, n, args, 60 + 0.05 * n))
        if "shutdown" in o.scenarios:
            # SIGTERM to `broadcast serve` with every client reconnecting (bench/shutdown.py).
            n = o.shutdown_clients
            out.append(("shutdown", f"N={n}", n, common, 90 + 0.02 * n))
        if "soak" in o.scenarios:
            n, d = o.soak_clients, o.soak_seconds
            args = [
                *common, "--soak-seconds", str(d), "--soak-rate", str(o.soak_rate),
                "--soak-report", str(o.soak_report), "--rss-tolerance", str(o.rss_tolerance),
                "--settle", "30",
            ]  # fmt: skip
            out.append(("soak", f"N={n} {d:g}s", n, args, d + 300 + 0.05 * n))
        return out

    def specs(self) -> list[ServerSpec | str]:
        """What to drive: our spec (or the --target URL), then the Node peer's."""
        o = self.o
        targets: list[ServerSpec | str] = []
        targets.append(
            o.target
            or ours_spec(o.server_core, self.token, o.backlog, o.worker_class, o.server_env)
        )
        if not o.no_node and any(s not in OURS_ONLY for s in o.scenarios):
            try:
                peer = prepare_peer(o.shared, o.peer_dir)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                log(f"WARNING: no Node reference: {exc}")
                self.node_error = str(exc)
            else:
                targets.append(node_spec(o.server_core, peer))
        return targets

    def run_one(
        self,
        target: ServerSpec | str,
        scenario: str,
        case: str,
        n: int,
        args: list[str],
        timeout: float,
    ) -> dict[str, Any]:
        name = target.name if isinstance(target, ServerSpec) else "ours"
        entry: dict[str, Any] = {"target": name, "scenario": scenario, "case": case, "clients": n}
        server: ServerProcess | None = None
        if isinstance(target, ServerSpec):
            if scenario == "shutdown" and name == "ours":
                target = serve_spec(target)  # the prompt shutdown is `broadcast serve`'s
            log_path = self.logs / f"{name}-{scenario}-{case.replace(' ', '_')}.log"
            server = ServerProcess(target, free_port(), log_path)
            server.start()
            url, pid = server.url, server.pid
            entry.update(cold_start_ms=server.cold_start_ms, server_pid=pid, log=str(log_path))
            stats_path = target.stats_path
        else:
            url, pid, stats_path = target, self.o.target_pid, "/stats"
        entry["loadavg_before"] = loadavg()
        busy0 = core_busy_ms()
        cmd = [
            "taskset", "-c", str(self.o.loadgen_core), sys.executable, "-m", "bench.loadgen",
            "--url", url, "--scenario", scenario, "--clients", str(n),
            "--timeout", f"{timeout:.0f}", "--stats-path", stats_path,
            f"--token={self.token}",  # one word: a generated token may start with "-"
            *args,
        ]  # fmt: skip
        if pid:
            cmd += ["--server-pid", str(pid)]
        log(f"{name}: {scenario} {case} -> {url}" + (f" (pid {pid})" if pid else ""))
        t0 = time.perf_counter()
        try:
            # Progress lines (stderr) pass through; the last stdout line is the JSON result.
            # The load generator bounds itself; this is the bound if it hangs anyway.
            proc = subprocess.run(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout + 180, check=False
            )
            lines = proc.stdout.strip().splitlines()
            result: dict[str, Any] = (
                json.loads(lines[-1]) if lines else {"ok": False, "error": "no output"}
            )
            entry["exit_code"] = proc.returncode
        except subprocess.TimeoutExpired:
            result = {"ok": False, "error": f"load generator killed after {timeout + 180:.0f}s"}
            entry["exit_code"] = None
        except json.JSONDecodeError as exc:
            result = {"ok": False, "error": f"unreadable load generator output: {exc}"}
        wall_ms = (time.perf_counter() - t0) * 1000
        entry["wall_s"] = round(wall_ms / 1000, 1)
        own = {self.o.loadgen_core: float(dig(result, "loadgen", "cpu_ms") or 0.0)}
        if server is not None:  # a --target server is not pinned: its core is unknown
            own[self.o.server_core] = float(dig(result, "server", "cpu_ms") or 0.0)
        entry["foreign_cpu_pct"] = foreign_cpu(busy0, core_busy_ms(), wall_ms, own)
        if server is not None:
            entry["server_exit"] = server.stop()
            entry["server_log"] = server.notable_log_lines()
            entry["server_tracebacks"] = server.tracebacks()
            if server.children:
                entry["server_children"] = server.children
        entry["result"] = result
        entry["ok"] = bool(result.get("ok"))
        entry["error"] = result.get("error")
        lg: dict[str, Any] = result.get("loadgen") or {}
        status = "ok" if entry["ok"] else f"FAILED: {entry['error']}"
        log(
            f"{name}: {scenario} {case}: {status} in {entry['wall_s']} s; loadgen cpu "
            f"{lg.get('cpu_pct')}% (busiest 0.5 s {lg.get('peak_cpu_pct')}%)"
            + (" [LOAD GENERATOR BOUND]" if lg.get("bottleneck") else "")
        )
        # The server's core is the one that matters (the load generator's also runs this
        # script and the load generator's own start-up, which it does not count).
        foreign = entry["foreign_cpu_pct"].get(f"core{self.o.server_core}", 0.0)
        if foreign > 10:
            log(
                f"WARNING: other processes used {foreign}% of the server's core during this "
                f"run: its figures are disturbed"
            )
        notable = entry.get("server_log", {})
        if notable.get("count"):
            log(f"{name} server logged {notable['count']} notable line(s), e.g.:")
            for line in notable["samples"][:3]:
                log(f"    {line}")
        return entry

    def run(self) -> dict[str, Any]:
        o = self.o
        targets = self.specs()
        cases = self.cases()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        log(f"{len(cases)} case(s) x {len(targets)} server(s); results -> {o.out_dir}")
        for scenario, case, n, args, timeout in cases:
            for target in targets:
                if (
                    scenario in OURS_ONLY
                    and isinstance(target, ServerSpec)
                    and target.name != "ours"
                ):
                    continue
                try:
                    self.runs.append(self.run_one(target, scenario, case, n, args, timeout))
                except RuntimeError as exc:  # the server did not start
                    name = target.name if isinstance(target, ServerSpec) else "ours"
                    log(f"{name}: {scenario} {case}: server failed: {exc}")
                    self.runs.append(
                        {"target": name, "scenario": scenario, "case": case, "clients": n,
                         "ok": False, "error": f"server failed: {str(exc)[:300]}", "result": {}}
                    )  # fmt: skip
        return {
            "started": started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine(),
            "config": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(o).items()
                if k not in ("target_pid",)
            }
            | {"target_pid": o.target_pid, "node_error": self.node_error},
            "runs": self.runs,
        }


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    if (os.cpu_count() or 1) < 2 or o.server_core == o.loadgen_core:
        log("WARNING: the server and the load generator share a core; figures mean little")
    # This process only waits; keep it off the server's core too.
    os.sched_setaffinity(0, {o.loadgen_core})
    need = (
        max(
            [
                *o.sizes,
                *o.fanout_sizes,
                o.churn_clients * 2,
                o.footprint_clients,
                o.soak_clients * 2,
                o.shutdown_clients * 2,
            ]
        )
        * 2
        + 200
    )
    limits = raise_fd_limit(need)
    for tool in ("taskset",):
        if shutil.which(tool) is None:
            log(f"{tool} is needed (util-linux)")
            return 3
    o.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bench = Bench(o, stamp)
    results = bench.run()
    results["fd_limit"] = limits
    rows = report.table_rows(results)
    results["table"] = [dict(zip(report.HEADER, r, strict=True)) for r in rows]
    json_path = o.out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1))
    targets = report.target_rows(results)
    results["targets"] = [dict(zip(report.TARGET_HEADER, r, strict=True)) for r in targets]
    json_path.write_text(json.dumps(results, indent=1))
    md_path = o.out_dir / f"{stamp}.md"
    md_text = report.markdown_table(rows) + "\n"
    if targets:
        md_text += "\n" + report.markdown_targets(targets) + "\n"
    md_path.write_text(md_text)
    png_path = o.out_dir / f"{stamp}.png"
    why_not = report.plot(results, png_path)
    print(report.text_table(rows))
    if targets:
        print()
        print(report.text_targets(targets))
    log(f"results: {json_path}")
    log(f"table (Markdown): {md_path}")
    log(f"plot: {png_path}" if why_not is None else f"no plot: {why_not}")
    failed = [r for r in results["runs"] if not r["ok"]]
    for r in failed:
        log(f"FAILED: {r['target']} {r['scenario']} {r['case']}: {r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
