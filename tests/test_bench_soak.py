"""The benchmark's soak, run short: its checks are the benchmark's (docs/performance.md); here only
that it runs and passes them, so the 10-minute run does not rot between uses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_soak_passes_its_checks() -> None:
    result = subprocess.run(
        [
            str(PROJECT_ROOT / "bench" / "run"),
            "--soak",
            "--quick",
            "--soak-seconds",
            "10",
            # CPython's own allocator keeps its arenas after a peak: see "Memory return" in
            # docs/performance.md.
            "--server-env",
            "PYTHONMALLOC=malloc",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [line for line in result.stderr.splitlines() if "results: " in line]
    assert written, result.stderr[-3000:]
    report = json.loads(Path(written[-1].split("results: ")[1].strip()).read_text())
    (run,) = report["runs"]  # ours only: the Node peer has no soak
    assert (run["target"], run["scenario"], run["ok"]) == ("ours", "soak", True), run["error"]
    soak = run["result"]["soak"]
    assert all(soak["checks"].values()), soak["checks"]
    assert soak["passed"]
    assert min(soak["joins"], soak["leaves"]) > 0
    assert soak["samples"], "progress was reported"
