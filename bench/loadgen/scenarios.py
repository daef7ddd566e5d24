"""The scenarios by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import shutdown as shutdown_scenario
from bench.loadgen.channels import ch_cost, ch_memory
from bench.loadgen.churn import churn
from bench.loadgen.fanout import fanout
from bench.loadgen.footprint import footprint
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.soak import soak
from bench.loadgen.steps import check_server, connect_phase, kind_for
from bench.loadgen.storm import storm


async def shutdown(run: Run) -> dict[str, Any]:
    """``bench/shutdown.py``, given the steps it needs."""
    helpers = shutdown_scenario.Helpers(connect_phase, check_server, kind_for, ScenarioFailed)
    return await shutdown_scenario.shutdown(run, helpers)


SCENARIOS: dict[str, Callable[[Run], Any]] = {
    "storm": storm,
    "fanout": fanout,
    "churn": churn,
    "footprint": footprint,
    "soak": soak,
    "shutdown": shutdown,
    "ch-cost": ch_cost,
    "ch-memory": ch_memory,
}
