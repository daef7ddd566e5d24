"""Turns the runs' JSON into the comparison table (text and Markdown) and the plot."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Run = dict[str, Any]  # one entry of results["runs"]
Getter = Callable[[Run], float | int | str | None]


def dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def per_s(ms: Any) -> float | None:
    return round(ms / 1000, 2) if isinstance(ms, int | float) else None


def mb(kb: Any) -> float | None:
    return round(kb / 1024, 1) if isinstance(kb, int | float) else None


def errors(r: Run) -> int | None:
    e = dig(r, "result", "errors")
    return e["connect"] + e["dropped"] if isinstance(e, dict) else None


def fan_bad(r: Run) -> int | None:
    f = dig(r, "result", "fanout") or dig(r, "result", "detail", "fanout")
    if not isinstance(f, dict):
        return None
    return int(f["missing"] + f["out_of_order"] + f["duplicates"] + f["malformed"])


def fan(*keys: str) -> Getter:
    def get(r: Run) -> Any:
        return dig(r, "result", "fanout", *keys) or dig(r, "result", "detail", "fanout", *keys)

    return get


def fan_cpu_per_delivery(r: Run) -> float | None:
    """The server's CPU time per delivery in the fanout phase (µs): its cost per message sent,
    the figure least disturbed by a saturated core or by the publish rate."""
    phases = dig(r, "result", "phases") or []
    f = [p for p in phases if p.get("name") == "fanout"]
    deliveries = int(dig(r, "result", "fanout", "deliveries") or 0)
    if not f or "server_cpu_ms" not in f[0] or not deliveries:
        return None
    return round(float(f[0]["server_cpu_ms"]) * 1000 / deliveries, 1)


def storm(*keys: str) -> Getter:
    return lambda r: dig(r, "result", "storm", *keys)


def soak(*keys: str) -> Getter:
    """A soak figure, also from a failed soak (its result is then under ``detail``)."""

    def get(r: Run) -> Any:
        found = dig(r, "result", "soak", *keys)
        return found if found is not None else dig(r, "result", "detail", "soak", *keys)

    return get


def soak_ops(r: Run) -> int | None:
    joins, leaves = soak("joins")(r), soak("leaves")(r)
    return joins + leaves if isinstance(joins, int) and isinstance(leaves, int) else None


def shutdown(*keys: str) -> Getter:
    return lambda r: dig(r, "result", "shutdown", *keys)


def soak_verdict(r: Run) -> str | None:
    checks = soak("checks")(r)
    if not isinstance(checks, dict):
        return None
    failed = [name for name, ok in checks.items() if not ok]
    return "FAIL: " + "; ".join(failed) if failed else f"pass ({len(checks)} of {len(checks)})"


# (metric, getter, which way is better) per scenario; "lower"/"higher"/"zero"/"" (information)
METRICS: dict[str, list[tuple[str, Getter, str]]] = {
    "storm": [
        ("connect: all hold N (s)", lambda r: per_s(storm("converge_ms", "connect")(r)), "lower"),
        (
            "close half: rest hold N/2 (s)",
            lambda r: per_s(storm("converge_ms", "close")(r)),
            "lower",
        ),
        (
            "reconnect half: all hold N (s)",
            lambda r: per_s(storm("converge_ms", "reconnect")(r)),
            "lower",
        ),
        ("frames per client (connect)", storm("frames_per_client", "connect"), "lower"),
        ("slowest connect (ms)", storm("max_connect_ms"), "lower"),
        (
            "server CPU, whole storm (s)",
            lambda r: per_s(dig(r, "result", "server", "cpu_ms")),
            "lower",
        ),
        ("server peak RSS (MB)", lambda r: mb(dig(r, "result", "server", "hwm_kb")), "lower"),
        ("connect errors + drops", errors, "zero"),
        (
            "loadgen busiest 0.5 s (% core)",
            lambda r: dig(r, "result", "loadgen", "peak_cpu_pct"),
            "",
        ),
    ],
    "fanout": [
        ("deliveries/s", fan("deliveries_per_s"), "higher"),
        ("publishes/s achieved", fan("publish_rate_per_s"), "higher"),
        ("latency p50 (ms)", fan("latency_ms", "p50"), "lower"),
        ("latency p99 (ms)", fan("latency_ms", "p99"), "lower"),
        ("latency max (ms)", fan("latency_ms", "max"), "lower"),
        ("server's own fan-out p50, bucket (ms)", fan("server_fanout_ms", "p50"), ""),
        ("server's own fan-out p99, bucket (ms)", fan("server_fanout_ms", "p99"), ""),
        ("missing + out-of-order + dup", fan_bad, "zero"),
        ("connect errors + drops", errors, "zero"),
        ("server CPU per delivery (µs)", fan_cpu_per_delivery, "lower"),
        ("server CPU (%)", lambda r: dig(r, "result", "server", "cpu_pct"), ""),
        (
            "loadgen busiest 0.5 s (% core)",
            lambda r: dig(r, "result", "loadgen", "peak_cpu_pct"),
            "",
        ),
    ],
    "churn": [
        (
            "joins + leaves",
            lambda r: (
                (dig(r, "result", "churn", "connect_ops") or 0)
                + (dig(r, "result", "churn", "disconnect_ops") or 0)
            ),
            "",
        ),
        ("converge after churn (ms)", lambda r: dig(r, "result", "churn", "converge_ms"), "lower"),
        ("clients off the open count", lambda r: dig(r, "result", "churn", "mismatch"), "zero"),
        ("server count - open", lambda r: dig(r, "result", "churn", "server_mismatch"), "zero"),
        ("connect errors + drops", errors, "zero"),
        ("server CPU (%)", lambda r: dig(r, "result", "server", "cpu_pct"), ""),
    ],
    "footprint": [
        (
            "RSS per idle connection (KB)",
            lambda r: dig(r, "result", "footprint", "kb_per_connection"),
            "lower",
        ),
        (
            "RSS idle, no clients (MB)",
            lambda r: mb(dig(r, "result", "footprint", "rss_base_kb")),
            "lower",
        ),
        (
            "RSS kept after all left (MB)",
            lambda r: mb(dig(r, "result", "footprint", "retained_kb")),
            "lower",
        ),
        ("connect errors + drops", errors, "zero"),
    ],
    "shutdown": [
        ("SIGTERM to exit (ms)", shutdown("exit_ms"), "lower"),
        ("SIGTERM to the last client closed (ms)", shutdown("last_close_ms"), "lower"),
        ("clients closed by the server", shutdown("closed_by_server"), ""),
        ("reconnects refused (while draining)", shutdown("refused_while_draining"), ""),
        ("reconnects accepted", shutdown("accepted"), "zero"),
        ("tracebacks in the log", lambda r: r.get("server_tracebacks"), "zero"),
    ],
    "soak": [
        ("joins + leaves", soak_ops, ""),
        ("population min", soak("min_open"), ""),
        ("population max", soak("max_open"), ""),
        ("clients off the true count", soak("clients_off_count"), "zero"),
        ("server count - true count", soak("server_mismatch"), "zero"),
        ("connect errors + drops", errors, "zero"),
        ("server RSS at the start (MB)", lambda r: mb(soak("rss_start_kb")(r)), "lower"),
        ("server RSS peak (MB)", lambda r: mb(soak("rss_peak_kb")(r)), "lower"),
        ("server RSS after all left (MB)", lambda r: mb(soak("rss_end_kb")(r)), "lower"),
        ("after all left vs start (%)", soak("rss_end_vs_start_pct"), "lower"),
        ("RSS back within target after (s)", lambda r: per_s(soak("rss_returned_ms")(r)), ""),
        ("server CPU (%)", lambda r: dig(r, "result", "server", "cpu_pct"), ""),
        ("targets", soak_verdict, ""),
    ],
}


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
        for metric, get, better in METRICS[scenario]:
            a = get(ours) if ours else None
            b = get(node) if node else None
            if a is None and b is None:
                continue
            rows.append([label, metric, fmt(a), fmt(b), ratio(a, b, better) if better else ""])
    return rows


HEADER = ["scenario", "metric", "ours", "node", "ours/node"]

TARGET_HEADER = ["target (the performance issue's)", "measured", "verdict"]


def _verdict(met: bool, short: str) -> str:
    return "met" if met else f"MISSED: {short}"


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    """[target, measured, verdict] for each target of the performance issue that these runs
    measure: met, or missed and by how much (a target is never lowered to pass)."""
    runs: list[Run] = results["runs"]
    rate = dig(results, "config", "rate")
    rows: list[list[str]] = []

    def pairs(scenario: str) -> list[tuple[Run, Run | None]]:
        ours = [r for r in runs if r["scenario"] == scenario and r["target"] == "ours"]
        node = {r["case"]: r for r in runs if r["scenario"] == scenario and r["target"] == "node"}
        return [(r, node.get(r["case"])) for r in ours if r["ok"]]

    for ours, node in pairs("storm"):
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
    for ours, node in pairs("fanout"):
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
    limits = {"sse": 40.0, "ws": 60.0}
    for ours, _ in pairs("footprint"):
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
    for ours, _ in pairs("shutdown"):
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
    cold = [r["cold_start_ms"] for r in runs if r["target"] == "ours" and r.get("cold_start_ms")]
    if cold:
        median = statistics.median(cold)
        rows.append(
            [
                "cold start to first connection < 1 s (median)",
                f"{median:.0f} ms (slowest {max(cold):.0f})",
                _verdict(median < 1000, f"{median - 1000:.0f} ms over"),
            ]
        )
    for ours, _ in pairs("soak") + [
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


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Storm convergence and fanout latency against clients; returns why not, if not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        return "matplotlib is not installed (.venv/bin/pip install matplotlib)"
    runs: list[Run] = results["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"ours": "tab:blue", "node": "tab:orange"}
    labels = {"ours": "broadcast", "node": "Node peer"}
    for target in ("ours", "node"):
        pts = sorted(
            (r["clients"], per_s(storm("converge_ms", "connect")(r)))
            for r in runs
            if r["scenario"] == "storm" and r["target"] == target and r["ok"]
        )
        if pts:
            ax1.plot(*zip(*pts, strict=True), "o-", color=colors[target], label=labels[target])
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            lat = sorted(
                (r["clients"], fan("latency_ms", pct)(r))
                for r in runs
                if r["scenario"] == "fanout" and r["target"] == target and r["ok"]
            )
            if lat:
                ax2.plot(
                    *zip(*lat, strict=True),
                    style,
                    color=colors[target],
                    label=f"{labels[target]} {pct}",
                )
    cfg = results["config"]
    ax1.set_title(f"storm: time until every client holds N (sse {cfg['sse_ratio']})")
    ax1.set_xlabel("clients (N)")
    ax1.set_ylabel("seconds")
    ax2.set_title(f"fanout: publish -> receipt latency ({cfg['events']} events at {cfg['rate']}/s)")
    ax2.set_xlabel("clients")
    ax2.set_ylabel("milliseconds")
    for ax, scenario in ((ax1, "storm"), (ax2, "fanout")):
        sizes = sorted({r["clients"] for r in runs if r["scenario"] == scenario})
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Plain numbers on the axes: the sizes we ran, not powers of ten.
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        if sizes:
            ax.set_xticks(sizes)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(
        f"broadcast vs Node peer, server on 1 core, load generator on another "
        f"({results['started']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report RESULTS.json... [--markdown] [--plot FILE.png]``: the table (and
    plot) of past runs again; several files are merged, e.g. a default run and a big storm."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--plot", type=Path, default=None)
    o = p.parse_args(argv)
    loaded = [json.loads(f.read_text()) for f in o.results]
    merged = {**loaded[0], "runs": [r for d in loaded for r in d["runs"]]}
    rows = table_rows(merged)
    print(markdown_table(rows) if o.markdown else text_table(rows))
    targets = target_rows(merged)
    if targets:
        print()
        print(markdown_targets(targets) if o.markdown else text_targets(targets))
    if o.plot is not None:
        why_not = plot(merged, o.plot)
        if why_not:
            print(f"no plot: {why_not}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
