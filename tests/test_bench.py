"""The benchmark runs: a quick pass of every scenario against our server (no figures checked
here: targets live in the benchmark, never in a timed test)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bench import report

from tests.support import PROJECT_ROOT


@pytest.mark.timeout(240)
def test_bench_quick_runs_every_scenario_cleanly() -> None:
    result = subprocess.run(
        [str(PROJECT_ROOT / "bench" / "run"), "--quick", "--no-node"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [line for line in result.stderr.splitlines() if "results: " in line]
    assert written, result.stderr[-3000:]
    report = json.loads(Path(written[-1].split("results: ")[1].strip()).read_text())
    scenarios = {run["scenario"] for run in report["runs"]}
    assert {"storm", "fanout", "churn", "footprint", "shutdown"} <= scenarios
    assert all(run["ok"] for run in report["runs"]), [r["error"] for r in report["runs"]]
    measured = {row["target (the performance issue's)"] for row in report["targets"]}
    assert "cold start to first connection < 1 s (median)" in measured
    assert "target (the performance issue's)" in result.stdout, "the targets follow the table"


def run(scenario: str, target: str, clients: int, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "target": target,
        "case": f"N={clients}",
        "clients": clients,
        "ok": True,
        "cold_start_ms": 700 if target == "ours" else None,
        "result": {"errors": {"connect": 0, "dropped": 0}, **result},
    }


def test_the_targets_say_met_or_by_how_much_they_are_missed() -> None:
    fanout = {"missing": 0, "out_of_order": 0, "duplicates": 0, "malformed": 0}
    results = {
        "config": {"rate": 50},
        "runs": [
            run("storm", "ours", 5000, {"storm": {"converge_ms": {"connect": 6000}}}),
            run("storm", "node", 5000, {"storm": {"converge_ms": {"connect": 100_000}}}),
            run(
                "fanout",
                "ours",
                5000,
                {"fanout": {**fanout, "deliveries_per_s": 240_000, "latency_ms": {"p99": 128}}},
            ),
            run("fanout", "node", 5000, {"fanout": {**fanout, "deliveries_per_s": 70_000}}),
            run(
                "footprint",
                "ours",
                1000,
                {"footprint": {"transport": "sse", "kb_per_connection": 41}},
            ),
            run("shutdown", "ours", 5000, {"shutdown": {"exit_ms": 1200, "accepted": 0}}),
        ],
    }
    verdicts = {target: verdict for target, _, verdict in report.target_rows(results)}
    storm = "storm N=5000: all on the count >= 20x faster than Node, none dropped"
    assert verdicts == {
        storm: "MISSED: 16.7x of 20x",
        "fanout N=5000: deliveries/s >= Node's": "met",
        "fanout N=5000 at 50/s: p99 < 100 ms, 0 lost or out of order": "MISSED: 28 ms (28 %) over",
        "footprint N=1000: < 40 KB per idle connection": "MISSED: 1.0 KB over",
        "cold start to first connection < 1 s (median)": "met",
        "shutdown N=5000, clients reconnecting: exit < 1 s after SIGTERM, reconnects refused, "
        "no traceback": "MISSED: 200 ms over",
    }
