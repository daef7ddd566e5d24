"""Every case on every server: a fresh server per run, the load generator pinned beside it,
its JSON kept with the server's figures and log."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import floor, kit
from bench.host import (
    core_busy_ms,
    core_steal_ms,
    foreign_cpu,
    loadavg,
    machine,
    per_core_pct,
    wait_quiet,
)
from bench.options import NODE_MAX_CLIENTS, OURS_ONLY
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

DISTURBED_FOREIGN_PCT = 15.0
"""Others' share of the server's core above which a run counts as disturbed (``foreign_cpu``
reads some 2-10 % on an undisturbed run: the load generator's own start-up, uncounted)."""
DISTURBED_STEAL_PCT = 5.0
"""Steal on a benchmark core above which a run counts as disturbed."""


Case = tuple[str, str, int, list[str], float]
"""(scenario, case label, clients, extra load generator arguments, timeout s)."""


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
        self.peer_dir: Path | None = None
        self.floor: dict[str, Any] | None = None

    def cases(self) -> list[Case]:
        """(scenario, case label, clients, extra loadgen args, timeout s) in run order."""
        o = self.o
        out: list[Case] = []
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
        out += self.channel_cases(common)
        if "soak" in o.scenarios:
            n, d = o.soak_clients, o.soak_seconds
            args = [
                *common, "--soak-seconds", str(d), "--soak-rate", str(o.soak_rate),
                "--soak-report", str(o.soak_report), "--rss-tolerance", str(o.rss_tolerance),
                "--settle", "30",
            ]  # fmt: skip
            out.append(("soak", f"N={n} {d:g}s", n, args, d + 300 + 0.05 * n))
        return out

    def channel_cases(self, common: list[str]) -> list[Case]:
        """The channel scenarios' cases (docs/performance.md, "channels")."""
        o = self.o
        out: list[Case] = []
        n = o.ch_clients
        # The Node peer's connect storm costs N^2 frames (~2 min at 5,000 here).
        storm_s = 60 + 5e-5 * n * n
        if "ch-storm" in o.scenarios:
            k = o.ch_storm_channels
            args = [*common, "--channels", str(k)]
            out.append(("ch-storm", f"N={n} K={k}", n, args, storm_s))
        if "ch-fanout" in o.scenarios:
            k, m = o.ch_fanout_channels, o.ch_events
            for rate, label in ((0.0, "back to back"), (o.ch_rate, f"at {o.ch_rate:g}/s")):
                args = [
                    *common, "--channels", str(k), "--events", str(m), "--rate", str(rate),
                    "--settle", "60",
                ]  # fmt: skip
                timeout = storm_s + 60 + m / 20
                out.append(("ch-fanout", f"N={n} K={k} {label}", n, args, timeout))
        if "ch-cost" in o.scenarios:
            n = o.ch_others
            args = [
                *common, "--ch-publishes", str(o.ch_publishes), "--settle", "30",
                "--ch-settle", "0.5" if o.quick else "1",
            ]  # fmt: skip
            out.append(("ch-cost", f"others 100 vs {n}", n, args, 120 + 5e-5 * n * n))
        if "ch-memory" in o.scenarios:
            n = o.ch_memory_clients
            settle = "0.5" if o.quick else "1"
            for mode, label in (
                ("plain", "plain"),
                ("own", "own channel"),
                ("many", f"{o.ch_per_client} channels each"),
            ):
                args = [
                    *common, "--ch-memory-mode", mode, "--ch-per-client", str(o.ch_per_client),
                    "--ch-settle", settle, "--settle", "60",
                ]  # fmt: skip
                out.append(("ch-memory", f"{label} N={n}", n, args, 120 + 5e-5 * n * n))
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
                self.peer_dir = peer
                targets.append(node_spec(o.server_core, peer))
        return targets

    def run_measured(self, target: ServerSpec | str, case: Case) -> dict[str, Any]:
        """One case on a quiet machine (``wait_quiet`` first); a run that something else
        disturbed (``disturbance``) is run once more, and the second kept, with what disturbed
        the first: a figure measured while another process or the hypervisor took the server's
        core says nothing about the server."""
        cores, limit = [self.o.server_core, self.o.loadgen_core], self.o.quiet_limit
        if limit <= 0:  # a smoke run (--quick): neither waits nor runs again
            return self.run_one(target, *case)
        first_try: str | None = None
        while True:
            quiet = wait_quiet(cores, limit)
            entry = self.run_one(target, *case)  # logs a disturbance it finds
            entry["quiet_before"] = quiet
            why = self.disturbance(entry)
            if first_try is not None:
                entry["disturbed_first_try"] = first_try
                if why is not None:
                    entry["disturbed"] = why
                return entry
            if why is None:
                return entry
            log(f"{entry['target']}: {case[0]} {case[1]}: running it again")
            first_try = why

    def disturbance(self, entry: dict[str, Any]) -> str | None:
        """What disturbed a run, if anything: others on the server's core (over
        ``DISTURBED_FOREIGN_PCT``), the hypervisor on either core (``DISTURBED_STEAL_PCT``)."""
        if not entry.get("ok"):
            return None  # a failure is reported as one, not retried
        server = f"core{self.o.server_core}"
        foreign = entry.get("foreign_cpu_pct", {}).get(server, 0.0)
        steal = max(entry.get("steal_pct", {}).values(), default=0.0)
        if foreign > DISTURBED_FOREIGN_PCT:
            return f"others used {foreign}% of the server's core"
        if steal > DISTURBED_STEAL_PCT:
            return f"steal: the hypervisor took {steal}% of a benchmark core"
        return None

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
        # Before the server starts: finding loadgen.js's node_modules may fail (raise), and a
        # server started by then would be left running.
        env = kit.environment(self.kit_modules()) if scenario in kit.JS_SCENARIOS else None
        if isinstance(target, ServerSpec):
            server = self.start_server(target, scenario, case, entry)
            url, pid, stats_path = server.url, server.pid, server.spec.stats_path
        else:
            url, pid, stats_path = target, self.o.target_pid, "/stats"
        entry["loadavg_before"] = loadavg()
        busy0, steal0 = core_busy_ms(), core_steal_ms()
        if scenario in kit.JS_SCENARIOS:
            entry["loadgen"] = "shared/bench/loadgen.js --lean"
            cmd = kit.command(
                self.o.shared, self.o.loadgen_core, scenario, url, n, timeout, stats_path,
                self.token, args, pid,
            )  # fmt: skip
        else:
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
        result = drive(cmd, timeout, entry, env)
        if scenario in kit.JS_SCENARIOS:
            result = kit.normalise(result)
        wall_ms = (time.perf_counter() - t0) * 1000
        entry["wall_s"] = round(wall_ms / 1000, 1)
        own = {self.o.loadgen_core: float(dig(result, "loadgen", "cpu_ms") or 0.0)}
        if server is not None:  # a --target server is not pinned: its core is unknown
            own[self.o.server_core] = float(dig(result, "server", "cpu_ms") or 0.0)
        entry["foreign_cpu_pct"] = foreign_cpu(busy0, core_busy_ms(), wall_ms, own)
        entry["steal_pct"] = per_core_pct(
            steal0, core_steal_ms(), wall_ms, [self.o.server_core, self.o.loadgen_core]
        )
        if server is not None:
            entry["server_exit"] = server.stop()
            entry["server_log"] = server.notable_log_lines()
            entry["server_tracebacks"] = server.tracebacks()
            if server.children:
                entry["server_children"] = server.children
        entry["result"] = result
        entry["ok"] = bool(result.get("ok"))
        entry["error"] = result.get("error")
        self.log_outcome(entry)
        return entry

    def kit_modules(self) -> Path:
        """A node_modules with ``ws`` for loadgen.js: the Node peer's installed copy, else the
        project's own (``scripts/setup --dev`` installs it; ws comes with socket.io-client),
        else the Node peer's, installed now."""
        if self.peer_dir is None:
            own = ROOT / "node_modules"
            if (own / "ws").is_dir():
                return own
            self.peer_dir = prepare_peer(self.o.shared, self.o.peer_dir)
        return self.peer_dir / "node_modules"

    def start_server(
        self, spec: ServerSpec, scenario: str, case: str, entry: dict[str, Any]
    ) -> ServerProcess:
        """A fresh server for one run, its cold start, PID and log recorded in ``entry``."""
        if scenario == "shutdown" and spec.name == "ours":
            spec = serve_spec(spec)  # the prompt shutdown is `broadcast serve`'s
        log_path = self.logs / f"{spec.name}-{scenario}-{case.replace(' ', '_')}.log"
        server = ServerProcess(spec, free_port(), log_path)
        server.start()
        entry.update(cold_start_ms=server.cold_start_ms, server_pid=server.pid, log=str(log_path))
        return server

    def log_outcome(self, entry: dict[str, Any]) -> None:
        """One run's verdict and load-generator CPU; warnings for a disturbed server core and
        for what the server logged."""
        name, scenario, case = entry["target"], entry["scenario"], entry["case"]
        lg: dict[str, Any] = entry["result"].get("loadgen") or {}
        status = "ok" if entry["ok"] else f"FAILED: {entry['error']}"
        log(
            f"{name}: {scenario} {case}: {status} in {entry['wall_s']} s; loadgen cpu "
            f"{lg.get('cpu_pct')}% (busiest 0.5 s {lg.get('peak_cpu_pct')}%)"
            + (" [LOAD GENERATOR BOUND]" if lg.get("bottleneck") else "")
        )
        # Others on the server's core, or steal on either (``disturbance``): run_measured
        # runs such a case once more.
        if (why := self.disturbance(entry)) is not None:
            log(f"WARNING: {name}: {scenario} {case}: disturbed ({why}): its figures say little")
        notable = entry.get("server_log", {})
        if notable.get("count"):
            log(f"{name} server logged {notable['count']} notable line(s), e.g.:")
            for line in notable["samples"][:3]:
                log(f"    {line}")

    def run(self) -> dict[str, Any]:
        o = self.o
        targets = self.specs()
        cases = self.cases()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        log(f"{len(cases)} case(s) x {len(targets)} server(s); results -> {o.out_dir}")
        for scenario, case, n, args, timeout in cases:
            if scenario == "ch-fanout" and self.floor is None:
                self.floor = self.measure_floor()
            for target in targets:
                if (
                    scenario in OURS_ONLY
                    and isinstance(target, ServerSpec)
                    and target.name != "ours"
                ):
                    continue
                if (
                    scenario in ("ch-cost", "ch-memory")
                    and n > NODE_MAX_CLIENTS
                    and isinstance(target, ServerSpec)
                    and target.name != "ours"
                ):
                    log(
                        f"node: {scenario} {case}: not run (above {NODE_MAX_CLIENTS:,} clients "
                        "the Node peer's connect storm takes minutes and drops clients)"
                    )
                    continue
                try:
                    self.runs.append(self.run_measured(target, (scenario, case, n, args, timeout)))
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    # the server did not start, or loadgen.js's Node peer copy could not be made
                    name = target.name if isinstance(target, ServerSpec) else "ours"
                    log(f"{name}: {scenario} {case}: failed to start: {exc}")
                    self.runs.append(
                        {"target": name, "scenario": scenario, "case": case, "clients": n,
                         "ok": False, "error": f"failed to start: {str(exc)[:300]}", "result": {}}
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
        } | ({"floor": self.floor} if self.floor is not None else {})

    def measure_floor(self) -> dict[str, Any]:
        """The machine's CPU per bare loopback write, before the first ``ch-fanout`` case
        (``bench/floor.py``): what its latency target costs this machine before any server."""
        o = self.o
        per_event = max(1, o.ch_clients // o.ch_fanout_channels)
        result: dict[str, Any] = floor.run(
            o.server_core, o.loadgen_core, o.ch_clients, per_event, o.ch_rate
        )
        log(f"machine floor: {result}")
        return result


def drive(
    cmd: list[str], timeout: float, entry: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run the load generator; its JSON result (or why there is none), its exit code in
    ``entry``."""
    try:
        # Progress lines (stderr) pass through; the last stdout line is the JSON result.
        # The load generator bounds itself; this is the bound if it hangs anyway.
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout + 180,
            check=False,
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
    return result
