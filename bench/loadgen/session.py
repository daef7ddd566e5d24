"""One load-generator run: ``Run`` is the clients' bookkeeping (``Tracker``) plus the phases
(each with its counters and the server's /proc figures), the monitor of the load generator's
own CPU, and the HTTP probes of the server (its ``/stats`` count)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from bench.loadgen.measure import r1, read_proc
from bench.loadgen.tracking import Phase, Tracker
from bench.wire import HttpConnection, now


class ScenarioFailed(Exception):
    """Ends the run with a JSON line saying what went wrong (exit ``code``)."""

    def __init__(self, error: str, code: int, detail: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.code = code
        self.detail = detail or {}


class Run(Tracker):
    """Everything one load-generator run shares: options, open clients, convergence, counters."""

    def __init__(self, opts: argparse.Namespace, host: str, port: int, base_path: str) -> None:
        super().__init__(opts, host, port, base_path)
        self.phases: list[dict[str, Any]] = []
        self.t_start = now()
        self.cpu_start = time.process_time()
        self.peak_cpu_pct = 0.0
        self.srv_before = read_proc(opts.server_pid)
        self.stats_exposed: bool | None = None
        self.last_stats: Any = None
        self.last_stats_error: str | None = None

    def log(self, msg: str) -> None:
        if not self.o.quiet:
            sys.stderr.write(f"[loadgen {now() - self.t_start:7.1f}s] {msg}\n")

    # -------------------------------------------------------------------- phases

    def begin_phase(self, name: str) -> None:
        self.phase = Phase(name, srv0=read_proc(self.o.server_pid))
        self.log(f"phase {name}")

    def end_phase(self, **extra: Any) -> dict[str, Any]:
        ph = self.phase
        wall = max(1e-9, now() - ph.t0)
        cpu = time.process_time() - ph.cpu0
        out: dict[str, Any] = {
            "name": ph.name,
            "ms": r1(wall * 1000),
            **extra,
            "frames": ph.frames,
            "count_frames": ph.count_frames,
            "connects": ph.connects,
            "connect_errors": ph.connect_errors,
            "drops": ph.drops,
            "max_connect_ms": r1(ph.max_connect_ms),
            "loadgen_cpu_ms": r1(cpu * 1000),
            "loadgen_cpu_pct": r1(cpu / wall * 100),
            "loadgen_peak_cpu_pct": r1(ph.peak_cpu_pct),
        }
        srv1 = read_proc(self.o.server_pid)
        if srv1 and ph.srv0 and "cpu_ms" in srv1 and "cpu_ms" in ph.srv0:
            out["server_cpu_ms"] = r1(srv1["cpu_ms"] - ph.srv0["cpu_ms"])
            out["server_cpu_pct"] = r1((srv1["cpu_ms"] - ph.srv0["cpu_ms"]) / wall / 10)
            out["server_rss_kb"] = srv1["rss_kb"]
            out["server_hwm_kb"] = srv1["hwm_kb"]
        self.phases.append(out)
        brief = {k: out[k] for k in ("ms", "converge_ms", "frames", "drops") if k in out}
        self.log(
            f"phase {ph.name} done: {brief} server cpu {out.get('server_cpu_pct', '?')}%, "
            f"loadgen cpu {out['loadgen_cpu_pct']}% (peak {out['loadgen_peak_cpu_pct']}%)"
        )
        return out

    async def monitor(self) -> None:
        """Samples the load generator's own CPU every 0.5 s (is *it* the bottleneck?) and
        prints progress every 2 s."""
        last_t, last_cpu, tick = now(), time.process_time(), 0
        while True:
            await asyncio.sleep(0.5)
            t, cpu = now(), time.process_time()
            pct = (cpu - last_cpu) / max(1e-9, t - last_t) * 100
            last_t, last_cpu = t, cpu
            self.peak_cpu_pct = max(self.peak_cpu_pct, pct)
            self.phase.peak_cpu_pct = max(self.phase.peak_cpu_pct, pct)
            tick += 1
            # The soak reports by itself: a line every 2 s for 10 minutes says nothing more.
            quiet = self.o.scenario == "soak" and self.phase.name in ("soak", "memory")
            if tick % 4 == 0 and not quiet:
                fan = self.fan
                self.log(
                    f"{self.phase.name}: open={len(self.open_list)} pending={self.pending} "
                    f"target={self.target} at_target={self.at_target} frames={self.phase.frames} "
                    f"errors={self.errors} cpu={pct:.0f}%"
                    + (f" deliveries={fan.deliveries}/{fan.expected}" if fan else "")
                )

    # -------------------------------------------------------------------- HTTP

    async def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        limit_s: float = 10.0,
        conn: HttpConnection | None = None,
    ) -> tuple[int, bytes]:
        """One request; (-1, error) when the server did not answer."""
        own = conn is None
        c = conn or HttpConnection(self.host, self.port)
        try:
            return await asyncio.wait_for(
                c.request(method, self.base_path + path, body, headers, close=own), limit_s
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            c.close()
            return -1, f"{type(exc).__name__}: {exc}".encode()
        finally:
            if own:
                c.close()

    async def server_count(self, limit_s: float = 10.0) -> int | str | None:
        """The server's own count: an int; None if it exposes none; "no answer" on a timeout.

        Accepts ``currentUsers`` (the Node peer) and ``user_count`` (broadcast), as loadgen.js.
        """
        if not self.o.stats_path or self.stats_exposed is False:
            return None
        status, body = await self.http("GET", self.o.stats_path, limit_s=limit_s)
        if status == -1:
            self.last_stats_error = body.decode(errors="replace")
            return "no answer"
        try:
            j = json.loads(body) if status == 200 else None
        except ValueError:
            j = None
        if j is None:
            self.stats_exposed = False
            return None
        self.last_stats = j
        n: int | None = j if isinstance(j, int) else None
        if isinstance(j, dict):
            for key in ("currentUsers", "current_users", "user_count", "count", "users"):
                if isinstance(j.get(key), int):
                    n = j[key]
                    break
        self.stats_exposed = n is not None
        return n
