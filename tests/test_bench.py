"""The benchmark runs: a quick pass of every scenario against our server (no figures checked
here: targets live in the benchmark, never in a timed test)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

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
    assert {"storm", "fanout", "churn", "footprint"} <= scenarios
    assert all(run["ok"] for run in report["runs"]), [r["error"] for r in report["runs"]]
