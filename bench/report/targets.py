"""The performance issue's targets that a set of runs measures: what was measured, and met or
missed by how much (a target is never lowered to pass)."""

from __future__ import annotations

import statistics
from typing import Any

from bench.report import channels
from bench.report.metrics import Run, dig, errors, fan, fan_bad, shutdown, soak, storm

TARGET_HEADER = ["target (the performance issue's)", "measured", "verdict"]

Pairs = list[tuple[Run, Run | None]]
"""Our passed runs of one scenario, each with the Node peer's run of the same case, if any."""


def _verdict(met: bool, short: str) -> str:
    return "met" if met else f"MISSED: {short}"


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    """[target, measured, verdict] for each target of the performance issue that these runs
    measure: met, or missed and by how much (a target is never lowered to pass)."""
    runs: list[Run] = results["runs"]
    return [
        *storm_targets(pairs(runs, "storm")),
        *fanout_targets(pairs(runs, "fanout"), dig(results, "config", "rate")),
        *footprint_targets(pairs(runs, "footprint")),
        *shutdown_targets(pairs(runs, "shutdown")),
        *cold_start_targets(runs),
        *soak_targets(runs),
        *channels.target_rows(results),
    ]


def pairs(runs: list[Run], scenario: str) -> Pairs:
    ours = [r for r in runs if r["scenario"] == scenario and r["target"] == "ours"]
    node = {r["case"]: r for r in runs if r["scenario"] == scenario and r["target"] == "node"}
    return [(r, node.get(r["case"])) for r in ours if r["ok"]]


def storm_targets(storms: Pairs) -> list[list[str]]:
    rows: list[list[str]] = []
    for ours, node in storms:
        a, b = storm("converge_ms", "connect")(ours), storm("converge_ms", "connect")(node or {})
        if ours["clients"] >= 5000 and isinstance(a, int | float) and isinstance(b, int | float):
            x = b / a
            rows.append(
                [
                    f"storm {ours['case']}: all on the count >= 20x faster than Node, none dropped",
                    f"{a / 1000:.2f} s vs {b / 1000:.1f} s: {x:.1f}x; dropped {errors(ours)}",
                    _verdict(x >= 20 and errors(ours) == 0, f"{x:.1f}x of 20x"),
                ]
            )
        if ours["clients"] >= 10000:
            rows.append(
                [
                    f"{ours['clients']:,} connections held without errors",
                    f"errors + drops {errors(ours)}",
                    _verdict(errors(ours) == 0, f"{errors(ours)} errors"),
                ]
            )
    return rows


def fanout_targets(fanouts: Pairs, rate: Any) -> list[list[str]]:
    rows: list[list[str]] = []
    for ours, node in fanouts:
        if ours["clients"] < 5000:
            continue
        a, b = fan("deliveries_per_s")(ours), fan("deliveries_per_s")(node or {})
        if isinstance(a, int | float) and isinstance(b, int | float) and b:
            rows.append(
                [
                    f"fanout {ours['case']}: deliveries/s >= Node's",
                    f"{a:,.0f} vs {b:,.0f}: {a / b:.2f}x",
                    _verdict(a >= b, f"{(1 - a / b) * 100:.0f} % short"),
                ]
            )
        p99, bad = fan("latency_ms", "p99")(ours), fan_bad(ours)
        if rate == 50 and isinstance(p99, int | float):
            over = (p99 - 100) / 100 * 100
            rows.append(
                [
                    f"fanout {ours['case']} at 50/s: p99 < 100 ms, 0 lost or out of order",
                    f"p99 {p99:.0f} ms; lost + out of order + dup {bad}",
                    _verdict(p99 < 100 and bad == 0, f"{p99 - 100:.0f} ms ({over:.0f} %) over"),
                ]
            )
    return rows


def footprint_targets(footprints: Pairs) -> list[list[str]]:
    rows: list[list[str]] = []
    limits = {"sse": 40.0, "ws": 60.0}
    for ours, _ in footprints:
        transport = dig(ours, "result", "footprint", "transport")
        kb = dig(ours, "result", "footprint", "kb_per_connection")
        if transport in limits and isinstance(kb, int | float):
            limit = limits[transport]
            rows.append(
                [
                    f"footprint {ours['case']}: < {limit:.0f} KB per idle connection",
                    f"{kb:.1f} KB",
                    _verdict(kb < limit, f"{kb - limit:.1f} KB over"),
                ]
            )
    return rows


def shutdown_targets(shutdowns: Pairs) -> list[list[str]]:
    rows: list[list[str]] = []
    for ours, _ in shutdowns:
        ms, tracebacks = shutdown("exit_ms")(ours), ours.get("server_tracebacks")
        if ours["clients"] >= 5000 and isinstance(ms, int | float):
            rows.append(
                [
                    f"shutdown {ours['case']}, clients reconnecting: exit < 1 s after SIGTERM, "
                    "reconnects refused, no traceback",
                    f"{ms:.0f} ms; accepted {shutdown('accepted')(ours)}; tracebacks {tracebacks}",
                    _verdict(
                        ms < 1000 and not tracebacks,
                        f"{ms - 1000:.0f} ms over" if ms >= 1000 else f"{tracebacks} tracebacks",
                    ),
                ]
            )
    return rows


def cold_start_targets(runs: list[Run]) -> list[list[str]]:
    cold = [r["cold_start_ms"] for r in runs if r["target"] == "ours" and r.get("cold_start_ms")]
    if not cold:
        return []
    median = statistics.median(cold)
    return [
        [
            "cold start to first connection < 1 s (median)",
            f"{median:.0f} ms (slowest {max(cold):.0f})",
            _verdict(median < 1000, f"{median - 1000:.0f} ms over"),
        ]
    ]


def soak_targets(runs: list[Run]) -> list[list[str]]:
    """The soak's RSS, from a passed soak or a failed one (its figures are then its detail)."""
    rows: list[list[str]] = []
    for ours, _ in pairs(runs, "soak") + [
        (r, None) for r in runs if r["scenario"] == "soak" and not r["ok"]
    ]:
        pct, tol = soak("rss_end_vs_start_pct")(ours), soak("rss_tolerance")(ours)
        if isinstance(pct, int | float) and isinstance(tol, int | float):
            rows.append(
                [
                    f"soak {ours['case']}: RSS within {tol:.0%} of the start after all left",
                    f"{pct:+.1f} %",
                    _verdict(pct <= tol * 100, f"{pct - tol * 100:.1f} points over"),
                ]
            )
    return rows


def text_targets(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [TARGET_HEADER, *rows]) for i in range(3)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [TARGET_HEADER, *rows]
    )


def markdown_targets(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(TARGET_HEADER) + " |", "|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
