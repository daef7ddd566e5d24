"""Turns the runs' JSON into the comparison table (text and Markdown), the targets' verdicts
and the plot; ``python -m bench.report`` prints past runs' table again.

``metrics``: the figures of a run and which way is better; ``table``: the ours/node table;
``targets``: the performance issue's targets, met or by how much missed; ``plot``: the plot.
"""

from bench.report.metrics import dig
from bench.report.plot import plot
from bench.report.table import HEADER, markdown_table, table_rows, text_table
from bench.report.targets import TARGET_HEADER, markdown_targets, target_rows, text_targets

__all__ = [
    "HEADER",
    "TARGET_HEADER",
    "dig",
    "markdown_table",
    "markdown_targets",
    "plot",
    "table_rows",
    "target_rows",
    "text_table",
    "text_targets",
]
