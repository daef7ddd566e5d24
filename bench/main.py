"""``python -m bench.main``, what ``bench/run`` runs (its options and ``--help``:
``bench/options.py``): every run (``bench/runner.py``), then the results written beside each
other (JSON, Markdown, plot) and the table and targets on stdout."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

from bench import report
from bench.host import raise_fd_limit
from bench.options import parse_args
from bench.runner import Bench
from bench.servers import log


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    limits = prepare(o)
    if limits is None:
        return 3
    o.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bench = Bench(o, stamp)
    results = bench.run()
    results["fd_limit"] = limits
    write(o, stamp, results)
    failed = [r for r in results["runs"] if not r["ok"]]
    for r in failed:
        log(f"FAILED: {r['target']} {r['scenario']} {r['case']}: {r['error']}")
    return 1 if failed else 0


def prepare(o: argparse.Namespace) -> dict[str, int] | None:
    """This process on the load generator's core, the open-files limit raised for the largest
    run; the limits, or None when a tool the benchmark needs is missing."""
    if (os.cpu_count() or 1) < 2 or o.server_core == o.loadgen_core:
        log("WARNING: the server and the load generator share a core; figures mean little")
    # This process only waits; keep it off the server's core too.
    os.sched_setaffinity(0, {o.loadgen_core})
    need = (
        max(
            [
                *o.sizes,
                *o.fanout_sizes,
                o.churn_clients * 2,
                o.footprint_clients,
                o.soak_clients * 2,
                o.shutdown_clients * 2,
                o.ch_clients,
                o.ch_others + 200,
                o.ch_memory_clients,
            ]
        )
        * 2
        + 200
    )
    limits = raise_fd_limit(need)
    for tool in ("taskset",):
        if shutil.which(tool) is None:
            log(f"{tool} is needed (util-linux)")
            return None
    return limits


def write(o: argparse.Namespace, stamp: str, results: dict[str, Any]) -> None:
    """The JSON (with the table and the targets), the Markdown and the plot in --out-dir; the
    table and the targets on stdout."""
    rows = report.table_rows(results)
    results["table"] = [dict(zip(report.HEADER, r, strict=True)) for r in rows]
    json_path = o.out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1))
    targets = report.target_rows(results)
    results["targets"] = [dict(zip(report.TARGET_HEADER, r, strict=True)) for r in targets]
    json_path.write_text(json.dumps(results, indent=1))
    md_path = o.out_dir / f"{stamp}.md"
    md_text = report.markdown_table(rows) + "\n"
    if targets:
        md_text += "\n" + report.markdown_targets(targets) + "\n"
    md_path.write_text(md_text)
    png_path = o.out_dir / f"{stamp}.png"
    why_not = report.plot(results, png_path)
    print(report.text_table(rows))
    if targets:
        print()
        print(report.text_targets(targets))
    log(f"results: {json_path}")
    log(f"table (Markdown): {md_path}")
    log(f"plot: {png_path}" if why_not is None else f"no plot: {why_not}")


if __name__ == "__main__":
    sys.exit(main())
