"""``python -m bench.report``: past runs' table (and plot) again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.report.plot import plot
from bench.report.table import markdown_table, table_rows, text_table
from bench.report.targets import markdown_targets, target_rows, text_targets


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report RESULTS.json... [--markdown] [--plot FILE.png]``: the table (and
    plot) of past runs again; several files are merged, e.g. a default run and a big storm."""
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
