"""The benchmark runs: a quick pass of every scenario against our server (no figures checked
here: targets live in the benchmark, never in a timed test)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import floor, report
from bench.host import QUIET_PCT, wait_quiet
from bench.options import CHANNELS, DEFAULT_SCENARIOS
from bench.runner import Bench

from tests.support import PROJECT_ROOT


@pytest.mark.timeout(240)
def test_bench_quick_runs_every_scenario_cleanly() -> None:
    """Every scenario but the channels' (the next test runs them, smaller)."""
    plain = [s for s in DEFAULT_SCENARIOS if s not in CHANNELS]
    result = subprocess.run(
        [
            str(PROJECT_ROOT / "bench" / "run"),
            "--quick",
            "--no-node",
            "--scenarios",
            ",".join(plain),
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
    scenarios = {run["scenario"] for run in report["runs"]}
    assert {"storm", "fanout", "churn", "footprint", "shutdown"} <= scenarios
    assert all(run["ok"] for run in report["runs"]), [r["error"] for r in report["runs"]]
    measured = {row["target (the performance issue's)"] for row in report["targets"]}
    assert "cold start to first connection < 1 s (median)" in measured
    assert "target (the performance issue's)" in result.stdout, "the targets follow the table"


@pytest.mark.timeout(120)
def test_bench_runs_the_channel_scenarios_cleanly() -> None:
    """ch-storm and ch-fanout (the kit's loadgen.js), ch-cost and ch-memory at tiny sizes: each
    passes its own checks (exact user and channel counts, routing, acks, the server's channel
    counts), and the table has their figures."""
    sizes = [
        "--ch-clients", "60", "--ch-storm-channels", "6", "--ch-fanout-channels", "6",
        "--ch-events", "60", "--ch-others", "120", "--ch-publishes", "30",
        "--ch-memory-clients", "60", "--ch-per-client", "3",
    ]  # fmt: skip
    # bench.main is what bench/run runs once set up (the test above goes through bench/run).
    result = subprocess.run(
        [sys.executable, "-m", "bench.main", "--quick", "--no-node", "--scenarios",
         ",".join(CHANNELS), *sizes],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    written = [line for line in result.stderr.splitlines() if "results: " in line]
    assert written, result.stderr[-3000:]
    runs = json.loads(Path(written[-1].split("results: ")[1].strip()).read_text())["runs"]
    assert [(r["scenario"], r["case"]) for r in runs] == [
        ("ch-storm", "N=60 K=6"),
        ("ch-fanout", "N=60 K=6 back to back"),
        ("ch-fanout", "N=60 K=6 at 500/s"),
        ("ch-cost", "others 100 vs 120"),
        ("ch-memory", "plain N=60"),
        ("ch-memory", "own channel N=60"),
        ("ch-memory", "3 channels each N=60"),
    ]
    assert all(r["ok"] for r in runs), [r["error"] for r in runs]
    by_case = {r["case"]: r["result"] for r in runs}
    assert by_case["N=60 K=6"]["errors"]["foreign"] == 0
    assert by_case["N=60 K=6 back to back"]["fanout"]["deliveries"] == 60 * 10
    assert by_case["others 100 vs 120"]["ch_cost"]["large"]["others"] == 120
    many = by_case["3 channels each N=60"]["ch_memory"]
    assert many["subscriptions"] == many["channels"] == 180
    assert many["acks"]["ok"] == many["acks"]["sent"] == 30  # the Socket.IO half subscribes
    assert many["server_channels"]["mismatched"] == 0
    for metric in ("deliveries/s", "all others / 100 others", "RSS per connection (KB)"):
        assert metric in result.stdout
    # the machine's floor, measured before the first ch-fanout case (bench/floor.py)
    machine = json.loads(Path(written[-1].split("results: ")[1].strip()).read_text())["floor"]
    assert machine["per_event"] == 10
    assert machine["paced_writes"] == machine["back_to_back_writes"] == 1000 * 10
    assert machine["paced_us_per_write"] > 0
    assert machine["back_to_back_us_per_write"] > 0
    assert "bare loopback write, paced, CPU (µs)" in result.stdout


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


def test_the_channel_targets_say_met_or_by_how_much_they_are_missed() -> None:
    fan = {"missing": 0, "outOfOrder": 0, "duplicates": 0, "malformed": 0, "foreign": 0}
    results: dict[str, Any] = {
        "config": {},
        "floor": {"paced_us_per_write": 17.23, "paced_share": 0.862},
        "runs": [
            run("ch-storm", "ours", 5000, {"convergeMs": {"connect": 9000}}),
            run("ch-storm", "node", 5000, {"convergeMs": {"connect": 150_000}}),
            {
                **run("ch-fanout", "ours", 5000, {"fanout": {**fan, "deliveriesPerS": 90_000}}),
                "case": "N=5000 K=50 back to back",
            },
            {
                **run("ch-fanout", "node", 5000, {"fanout": {**fan, "deliveriesPerS": 50_000}}),
                "case": "N=5000 K=50 back to back",
            },
            {
                **run("ch-fanout", "ours", 5000, {"fanout": {**fan, "latencyMs": {"p99": 12.5}}}),
                "case": "N=5000 K=50 at 500/s",
            },
            run(
                "ch-cost",
                "ours",
                10000,
                {
                    "ch_cost": {
                        "small": {"cpu_us_per_publish": 300.0},
                        "large": {"cpu_us_per_publish": 660.0, "others": 10000},
                    }
                },
            ),
            run(
                "ch-memory",
                "ours",
                10000,
                {"ch_memory": {"mode": "plain", "kb_per_connection": 40.0}},
            ),
            {
                **run(
                    "ch-memory",
                    "ours",
                    10000,
                    {"ch_memory": {"mode": "own", "kb_per_connection": 41.5}},
                ),
                "case": "own channel N=10000",
            },
            {
                **run(
                    "ch-memory",
                    "ours",
                    10000,
                    {"ch_memory": {"mode": "many", "channels": 100_000, "subscriptions": 100_000}},
                ),
                "case": "10 channels each N=10000",
                "ok": False,
                "error": "3 of 5000 subscribe acks not ok",
            },
        ],
    }
    rows = report.target_rows(results)
    verdicts = {target: verdict for target, _, verdict in rows}
    paced = next(measured for target, measured, _ in rows if "at 500/s" in target)
    assert paced.endswith(
        "machine floor: bare writes alone take 86 % of the core at this rate (17.23 µs each)"
    )
    assert verdicts == {
        "ch-storm N=5000: every client on its exact counts >= 20x faster than Node": "MISSED: "
        "16.7x of 20x",
        "ch-fanout N=5000 K=50 back to back: deliveries/s >= 2x Node's": "MISSED: 1.80x of 2x "
        "(10 % short)",
        "ch-fanout N=5000 K=50 at 500/s: p99 < 50 ms, none lost or out of order": "met",
        "ch-cost: CPU per publish to 10 subscribers, 10,000 others within 2x of 100": "MISSED: "
        "2.20x of 2x",
        "ch-memory N=10,000: RSS per subscription < 2 KB above a plain connection": "met",
        "ch-memory 10 channels each N=10000: every channel held without error": "MISSED: the run "
        "failed: 3 of 5000 subscribe acks not ok",
        "cold start to first connection < 1 s (median)": "met",
    }


def test_the_floor_is_the_share_of_a_core_the_bare_writes_take() -> None:
    assert floor.share(500, 100, 17.2) == pytest.approx(0.86)
    assert floor.share(100, 10, 10) == pytest.approx(0.01)


def test_a_run_others_disturbed_is_named_and_an_undisturbed_one_is_not() -> None:
    o = argparse.Namespace(server_core=0, loadgen_core=1, out_dir=PROJECT_ROOT / "bench")
    bench = Bench(o, "test")
    # As an undisturbed ch-cost run reads: the load generator's uncounted start-up.
    quiet = {
        "ok": True,
        "foreign_cpu_pct": {"core0": 9.7, "core1": 10.7},
        "steal_pct": {"core0": 1.0, "core1": 2.0},
    }
    assert bench.disturbance(quiet) is None
    busy = bench.disturbance({**quiet, "foreign_cpu_pct": {"core0": 19.9, "core1": 1.0}})
    assert busy is not None
    assert "19.9%" in busy
    # Others on the load generator's core only: its own figures say whether it kept up.
    assert bench.disturbance({**quiet, "foreign_cpu_pct": {"core0": 1.0, "core1": 40.0}}) is None
    stolen = bench.disturbance({**quiet, "steal_pct": {"core0": 0.0, "core1": 8.0}})
    assert stolen is not None
    assert "steal" in stolen
    failed = {**quiet, "ok": False, "foreign_cpu_pct": {"core0": 50.0}}
    assert bench.disturbance(failed) is None, "a failure is reported, not run again"


def test_waiting_for_quiet_cores_is_bounded_and_says_how_busy_they_were() -> None:
    quiet = wait_quiet([0], limit_s=0.3, window_s=0.1)
    assert 0.1 <= quiet["waited_s"] <= 1.0, quiet
    assert set(quiet["busy_pct"]) == {"core0"}
    assert quiet["quiet"] == (quiet["busy_pct"]["core0"] < QUIET_PCT)
