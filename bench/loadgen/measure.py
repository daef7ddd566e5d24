"""Figures from /proc and the rounding and percentile rules of the load generator's JSON."""

from __future__ import annotations

import os
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def r1(x: float) -> float:
    return round(x, 1)


def r3(x: float) -> float:
    return round(x, 3)


def read_proc(pid: int | None) -> dict[str, Any] | None:
    """RSS, high-water mark, threads, fds and CPU time of ``pid`` from /proc."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError as exc:
        return {"error": str(exc)}
    fields = stat[stat.rfind(")") + 2 :].split()
    kb: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            kb[key] = int(value.split()[0])
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    utime = int(fields[11]) * 1000 / CLK_TCK
    stime = int(fields[12]) * 1000 / CLK_TCK
    return {
        "rss_kb": kb.get("VmRSS"),
        "hwm_kb": kb.get("VmHWM"),
        "threads": kb.get("Threads"),
        "fds": fds,
        "utime_ms": utime,
        "stime_ms": stime,
        "cpu_ms": utime + stime,
    }


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (the same rule as loadgen.js)."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * p // 100) - 1))
    return r3(sorted_values[int(i)])


def mb_text(kb: int | None) -> str:
    return f"{kb / 1024:.1f}" if kb is not None else "?"
