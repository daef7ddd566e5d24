"""The kit's own load generator, ``shared/bench/loadgen.js``, for ``ch-storm`` and ``ch-fanout``.

Why loadgen.js there and not ``bench/loadgen/``: its ``--channels K`` mode is the kit's
definition of those two scenarios (client i in channel ``bench:``((i + i // K) mod K), event i
to channel i mod K) and checks everything the issue asks of them: every client's last ``user
count`` and ``channel count``, ``/stats`` ``channels``, routing (a delivery or a ``channel
count`` of another channel is a ``foreign`` error), missing, duplicate and out-of-order events.
Both servers are driven by the very code the kit's own figures come from. It runs ``--lean``
(its raw WebSocket and SSE clients), the setting the kit's README reads the Node peer's figures
with; it needs the ``ws`` package only to load (``Bench.kit_modules``).

Its JSON is camelCase; ``normalise`` adds the few snake_case figures the runner and the report
read from every run (the load generator's and the server's CPU, the server's peak RSS).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Our scenario -> loadgen.js's
JS_SCENARIOS = {"ch-storm": "storm", "ch-fanout": "fanout"}


def command(
    shared: Path,
    core: int,
    scenario: str,
    url: str,
    clients: int,
    timeout: float,
    stats_path: str,
    token: str,
    args: list[str],
    pid: int | None,
) -> list[str]:
    cmd = [
        "taskset", "-c", str(core), "node", str(shared / "loadgen.js"),
        "--url", url, "--scenario", JS_SCENARIOS[scenario], "--clients", str(clients),
        "--timeout", f"{timeout:.0f}", f"--stats-path={stats_path}",
        f"--token={token}",  # one word: a generated token may start with "-"
        "--lean", *args,
    ]  # fmt: skip
    if pid:
        cmd += ["--server-pid", str(pid)]
    return cmd


def environment(node_modules: Path) -> dict[str, str]:
    """loadgen.js ``require``s ``ws`` (even ``--lean``, which never uses it): from
    ``node_modules``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    modules = str(node_modules)
    env["NODE_PATH"] = modules + (os.pathsep + env["NODE_PATH"] if env.get("NODE_PATH") else "")
    return env


def normalise(result: dict[str, Any]) -> dict[str, Any]:
    """loadgen.js's summary with the snake_case figures every run has beside its own."""
    lg = result.get("loadgen")
    if isinstance(lg, dict):
        lg.setdefault("cpu_ms", lg.get("cpuMs"))
        lg.setdefault("cpu_pct", lg.get("cpuPct"))
        # loadgen.js has no 0.5 s windows: its busiest phase of 0.5 s or more stands for it.
        lg.setdefault("peak_cpu_pct", lg.get("maxPhaseCpuPct"))
    srv = result.get("server")
    if isinstance(srv, dict):
        srv.setdefault("cpu_ms", srv.get("cpuMs"))
        srv.setdefault("cpu_pct", srv.get("cpuPct"))
        after = srv.get("after")
        if isinstance(after, dict):
            srv.setdefault("hwm_kb", after.get("hwmKB"))
    return result
