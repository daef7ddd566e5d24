"""The machine under the benchmark: its description, the open-files limit, and the CPU other
processes take from the benchmark's cores."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.servers import log


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


def _core_ticks() -> dict[int, list[int]]:
    """Each core's /proc/stat fields (user nice system idle iowait irq softirq steal ...)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            out[int(name[3:])] = [int(x) for x in fields]
    return out


def core_busy_ms() -> dict[int, float]:
    """CPU time spent busy (not idle or iowait) on each core since boot, from /proc/stat; steal
    (the hypervisor running something else on the core) counts as busy."""
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    return {core: (sum(v[:8]) - v[3] - v[4]) * tick for core, v in _core_ticks().items()}


def core_steal_ms() -> dict[int, float]:
    """CPU time the hypervisor took from each core since boot (/proc/stat's steal)."""
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    return {core: (v[7] if len(v) > 7 else 0) * tick for core, v in _core_ticks().items()}


def per_core_pct(
    before: dict[int, float], after: dict[int, float], wall_ms: float, cores: list[int]
) -> dict[str, float]:
    """What ``after - before`` is of ``wall_ms`` on each of ``cores``, in percent."""
    return {
        f"core{c}": round(max(0.0, after.get(c, 0.0) - before.get(c, 0.0)) / wall_ms * 100, 1)
        for c in cores
    }


QUIET_PCT = 10.0
"""A benchmark core busier than this (in percent) before a run is not quiet yet."""


def wait_quiet(cores: list[int], limit_s: float = 60.0, window_s: float = 1.0) -> dict[str, Any]:
    """Wait until each of ``cores`` was under ``QUIET_PCT`` busy over one ``window_s`` (the last
    run's processes gone, and whatever the machine did after them: a 3 GB Node process exiting,
    the kernel reclaiming its memory), at most ``limit_s``: how long it waited and how busy each
    core was over the last window."""
    waited = 0.0
    while True:
        before, t0 = core_busy_ms(), time.perf_counter()
        time.sleep(window_s)
        wall_ms = (time.perf_counter() - t0) * 1000
        busy = per_core_pct(before, core_busy_ms(), wall_ms, cores)
        waited += wall_ms / 1000
        quiet = all(pct < QUIET_PCT for pct in busy.values())
        if quiet or waited >= limit_s:
            if not quiet:
                log(f"WARNING: the benchmark's cores are still busy after {waited:.0f} s: {busy}")
            return {"waited_s": round(waited, 1), "busy_pct": busy, "quiet": quiet}


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
