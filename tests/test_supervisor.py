"""``Supervisor``: every long-lived task is restarted when it crashes, counted and reported."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from broadcast import supervisor as supervisor_module
from broadcast.supervisor import Supervisor
from tests.support import until


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(supervisor_module, "MAX_DELAY", 0.05)


async def test_a_crash_is_logged_counted_reported_down_and_the_task_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashed: list[str] = []
    runs: list[int] = []
    release = asyncio.Event()
    supervisor = Supervisor(on_crash=crashed.append)

    async def pump() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("boom")
        await release.wait()  # the second run stays up

    with caplog.at_level(logging.INFO, logger="broadcast.supervisor"):
        supervisor.start("pump", pump)
        await until(lambda: len(runs) == 2, 5, "a restart")
    assert crashed == ["pump"]
    assert supervisor.crashes("pump") == 1
    assert supervisor.running("pump")
    assert supervisor.down == {}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None  # with its traceback
    assert "task pump crashed" in errors[0].getMessage()
    release.set()
    await supervisor.stop()


async def test_a_task_is_down_between_its_crash_and_its_restart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Set after the module was imported (as tests/faulty_app.py does): it must still apply.
    monkeypatch.setattr(supervisor_module, "FIRST_DELAY", 60.0)  # stays down for this test
    supervisor = Supervisor()

    async def broken() -> None:
        raise ValueError("bad state")

    with caplog.at_level(logging.ERROR, logger="broadcast.supervisor"):
        supervisor.start("sse-pump", broken)
        await until(lambda: bool(supervisor.down), 5, "the crash to be reported")
    assert "restarting in 60.0 s" in caplog.records[0].getMessage()
    assert supervisor.down == {"sse-pump": "task sse-pump crashed: ValueError: bad state"}
    assert not supervisor.running("sse-pump")
    await supervisor.stop()  # cancels the wait before the restart
    assert supervisor.down == {}


async def test_a_task_that_always_crashes_backs_off_instead_of_spinning() -> None:
    supervisor = Supervisor()
    started: list[float] = []

    async def always() -> None:
        started.append(time.monotonic())
        raise RuntimeError("again")

    supervisor.start("always", always)
    await until(lambda: len(started) >= 5, 5, "a few restarts")
    await supervisor.stop()
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    # Waits of 0.01, 0.02, 0.04 s, then capped at 0.05 s: a tight loop would not wait at all.
    assert gaps[0] >= 0.01
    assert gaps[1] >= 0.02
    assert gaps[2] >= 0.04
    assert gaps[3] >= 0.05
    assert sum(gaps[:4]) < 2


async def test_a_task_that_returns_is_finished_not_restarted() -> None:
    supervisor = Supervisor()
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    supervisor.start("once", once)
    await until(lambda: runs == 1 and not supervisor.running("once"), 5, "the task to finish")
    assert supervisor.down == {}
    assert supervisor.crashes("once") == 0
    await supervisor.stop()
    assert runs == 1


async def test_stop_cancels_every_task_the_last_started_first() -> None:
    supervisor = Supervisor()
    started: list[str] = []
    stopped: list[str] = []

    def forever(name: str) -> supervisor_module.TaskFactory:
        async def run() -> None:
            started.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(name)

        return run

    supervisor.start("first", forever("first"))
    supervisor.start("second", forever("second"))
    await until(lambda: len(started) == 2, 5, "both tasks to start")
    await supervisor.stop()
    assert stopped == ["second", "first"]


async def test_names_are_unique() -> None:
    supervisor = Supervisor()

    async def idle() -> None:
        await asyncio.Event().wait()

    supervisor.start("pump", idle)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("pump", idle)
    await supervisor.stop()
