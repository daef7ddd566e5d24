"""The comparison table: one row per scenario, case and metric, ours beside node."""

from __future__ import annotations

import statistics
from typing import Any

from bench.report import channels
from bench.report.metrics import METRICS as PLAIN_METRICS
from bench.report.metrics import Run

METRICS = {**PLAIN_METRICS, **channels.METRICS}

HEADER = ["scenario", "metric", "ours", "node", "ours/node"]


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(ours: Any, node: Any, better: str) -> str:
    if better == "zero":
        if ours is None:  # ours did not measure it (a failed run): say so only for Node
            return "node!" if node else "-"
        return "ok" if ours == 0 and node in (0, None) else ("ours!" if ours else "node!")
    if not isinstance(ours, int | float) or not isinstance(node, int | float) or node == 0:
        return "-"
    r = ours / node
    if r >= 10:
        return f"{r:.0f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """[scenario, metric, ours, node, ours/node] rows, in run order."""
    runs: list[Run] = results["runs"]
    rows = startup_rows(runs) + floor_rows(results.get("floor"))
    seen: list[tuple[str, str]] = []
    for r in runs:
        key = (r["scenario"], r["case"])
        if key not in seen:
            seen.append(key)
    # Scenario by scenario (merged files may interleave them), sizes in the order they ran.
    order = list(METRICS)
    seen.sort(key=lambda key: order.index(key[0]))
    for scenario, case in seen:
        pair = {r["target"]: r for r in runs if (r["scenario"], r["case"]) == (scenario, case)}
        ours, node = pair.get("ours"), pair.get("node")
        label = f"{scenario} {case}"
        for name in ("ours", "node"):
            failed = pair.get(name)
            if failed is not None and not failed["ok"]:
                rows.append([label, f"FAILED ({name})", str(failed.get("error"))[:60], "", ""])
        for name in ("ours", "node"):
            run = pair.get(name) or {}
            # Run again when the first try was disturbed (bench/runner.py): say so, and say
            # when the second was too (its figures then say little about the server).
            if run.get("disturbed"):
                rows.append([label, f"DISTURBED ({name})", str(run["disturbed"])[:80], "", ""])
            elif run.get("disturbed_first_try"):
                why = str(run["disturbed_first_try"])[:70]
                rows.append([label, f"run again ({name})", f"first try: {why}", "", ""])
        for metric, get, better in METRICS[scenario]:
            a = get(ours) if ours else None
            b = get(node) if node else None
            if a is None and b is None:
                continue
            rows.append([label, metric, fmt(a), fmt(b), ratio(a, b, better) if better else ""])
    return rows


def startup_rows(runs: list[Run]) -> list[list[str]]:
    """The cold starts of every run: median and slowest."""
    rows: list[list[str]] = []
    cold = {
        t: [r["cold_start_ms"] for r in runs if r["target"] == t and r.get("cold_start_ms")]
        for t in ("ours", "node")
    }
    if cold["ours"] or cold["node"]:
        med = {t: statistics.median(v) if v else None for t, v in cold.items()}
        mx = {t: max(v) if v else None for t, v in cold.items()}
        n = max(len(cold["ours"]), len(cold["node"]))
        rows.append(
            [
                "startup",
                f"cold start, median of {n} (ms)",
                fmt(med["ours"]),
                fmt(med["node"]),
                ratio(med["ours"], med["node"], "lower"),
            ]
        )
        rows.append(
            [
                "startup",
                "cold start, slowest (ms)",
                fmt(mx["ours"]),
                fmt(mx["node"]),
                ratio(mx["ours"], mx["node"], "lower"),
            ]
        )
    return rows


def floor_rows(floor: Any) -> list[list[str]]:
    """The machine's floor for a fan-out (``bench/floor.py``): the same for both servers."""
    if not isinstance(floor, dict):
        return []
    if "error" in floor:
        return [["machine", "bare loopback write: not measured", str(floor["error"])[:60], "", ""]]
    rows = []
    for mode, label in (("paced", "paced"), ("back_to_back", "back to back")):
        us = floor.get(f"{mode}_us_per_write")
        rows.append(["machine", f"bare loopback write, {label}, CPU (µs)", fmt(us), fmt(us), ""])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    out = []
    last = None
    for r in [HEADER, *rows]:
        if last is not None and r[0] != last:
            out.append("")
        last = r[0]
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|--:|--:|--:|"]
    last = None
    for r in rows:
        first = r[0] if r[0] != last else ""
        last = r[0]
        lines.append("| " + " | ".join([first, *r[1:]]) + " |")
    return "\n".join(lines)
