"""The one owner of every long-lived task the app runs (pumps, keep-alive, watchdog, broker
loops): started by name, restarted when they crash, stopped together.

Why one owner: a fan-out pump that raised once used to stop fan-out for good, with nothing
logged and ``/readyz`` still answering 200. Here a task that raises is logged with its
traceback, counted (``broadcast_task_crashes{task}``), reported down (``/readyz`` answers 503
with the reason while any task is down), and started again from its factory after a capped
exponential backoff, so a bug that hits every time cannot spin the CPU. A task that returns has
finished its work (a pump whose subscriber was closed at shutdown) and is not restarted.

Each restart calls the factory again: a task's state (a hub subscription, say) is made afresh
by the factory, never shared with the run that crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
"""Makes a fresh run of a task (a coroutine to run until cancelled)."""

FIRST_DELAY = 0.1
"""Seconds before the first restart; doubled after each crash that follows soon after."""
MAX_DELAY = 5.0
"""The longest wait between two restarts."""
HEALTHY_AFTER = 30.0
"""A run that lasted this long resets the backoff: its crash is a new incident."""


@dataclass
class _Supervised:
    name: str
    factory: TaskFactory
    task: asyncio.Task[None] | None = None
    down_since: float | None = None
    reason: str | None = None
    crashes: int = 0
    # Read when the task starts, not when this class is made: FIRST_DELAY is the one setting.
    delay: float = field(default_factory=lambda: FIRST_DELAY)
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, on_crash: Callable[[str], None] | None = None) -> None:
        """``on_crash(name)`` is told of every crash (the metrics counter)."""
        self._on_crash = on_crash
        self._tasks: dict[str, _Supervised] = {}
        self._stopping = False

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as the task ``name``, restarted whenever it crashes."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        supervised = self._tasks[name] = _Supervised(name, factory)
        supervised.task = asyncio.create_task(self._run(supervised), name=name)

    @property
    def down(self) -> dict[str, str]:
        """The tasks that crashed and are waiting to restart, with why."""
        return {
            name: supervised.reason
            for name, supervised in self._tasks.items()
            if supervised.reason is not None
        }

    def crashes(self, name: str) -> int:
        return self._tasks[name].crashes

    def running(self, name: str) -> bool:
        """Whether ``name`` runs now (started, not crashed, not finished)."""
        supervised = self._tasks.get(name)
        return bool(
            supervised is not None
            and supervised.task is not None
            and not supervised.task.done()
            and supervised.reason is None
        )

    async def cancel(self, name: str) -> None:
        """Stop the task ``name`` (its owner is stopping), if it runs."""
        supervised = self._tasks.pop(name, None)
        if supervised is not None and supervised.task is not None:
            await _cancel(supervised.task)

    async def stop(self) -> None:
        """Cancel every task, the last started first, and wait for each."""
        self._stopping = True
        for supervised in reversed(list(self._tasks.values())):
            if supervised.task is not None:
                await _cancel(supervised.task)
        self._tasks.clear()
        self._stopping = False

    async def _run(self, supervised: _Supervised) -> None:
        while True:
            supervised.started = time.monotonic()
            try:
                await supervised.factory()
                return  # finished its work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    return
                self._crashed(supervised, exc)
            await asyncio.sleep(supervised.delay)
            supervised.delay = min(supervised.delay * 2, MAX_DELAY)
            supervised.reason = None
            logger.warning("restarting task %s", supervised.name)

    def _crashed(self, supervised: _Supervised, exc: Exception) -> None:
        if time.monotonic() - supervised.started >= HEALTHY_AFTER:
            supervised.delay = FIRST_DELAY
        supervised.crashes += 1
        supervised.reason = f"task {supervised.name} crashed: {type(exc).__name__}: {exc}"
        logger.error(
            "task %s crashed (restarting in %.1f s)",
            supervised.name,
            supervised.delay,
            exc_info=exc,
        )
        if self._on_crash is not None:
            self._on_crash(supervised.name)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a cancellation was swallowed
    (redis-py swallows one that lands in the middle of a command)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
