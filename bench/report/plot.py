"""The plot: storm convergence and fanout latency against clients, ours and node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report.metrics import Run, fan, per_s, storm


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
