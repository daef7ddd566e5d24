"""A server whose fan-out pumps crash on one event (``tests/test_supervised_tasks.py``): the app
as ``create_app`` makes it, with a fault injected below the transports. Test-only.

Publishing ``crash-the-pump`` makes each transport's pump raise once it has taken that event
from its subscriber (as a bug in an encoder would). Restarts wait ``RESTART_SECONDS``, long
enough for a test to see the task reported down in ``/readyz``.

With ``FAULTY_HEARTBEAT`` set, the Socket.IO heartbeat's sweep raises once instead (as a bug in
it would), on its first round with a client to ping.

Served by ``hypercorn tests.faulty_app:app``; settings come from the environment.
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar

from broadcast import fanout, supervisor
from broadcast.app import create_app
from broadcast.overrides import engineio_ping
from broadcast.settings import load_settings

CRASH = "crash-the-pump"
RESTART_SECONDS = 3.0

supervisor.FIRST_DELAY = RESTART_SECONDS
_start = fanout.Passes.start


def _name(item: object) -> str | None:
    event = getattr(item, "event", item)  # an Event, or an entry that carries one
    name = getattr(event, "name", None)
    return name if isinstance(name, str) else None


async def _start_then_crash(self: fanout.Passes[Any]) -> None:
    await _start(self)
    if any(_name(item) == CRASH for item in self.log.items):
        self.log.items.clear()  # the poison is gone: the restarted pump carries on
        raise RuntimeError(f"injected fault: {CRASH!r}")


fanout.Passes.start = _start_then_crash  # type: ignore[method-assign]

# With FAULTY_HEARTBEAT set, the heartbeat sweep raises once, on its first round with a client.
_sweep = engineio_ping.PingSweep.sweep
_heartbeat_crashed: list[bool] = []


async def _sweep_then_crash(self: engineio_ping.PingSweep, now: float, tick: float) -> None:
    if os.environ.get("FAULTY_HEARTBEAT") and len(self) and not _heartbeat_crashed:
        _heartbeat_crashed.append(True)
        raise RuntimeError("injected fault: the heartbeat")
    await _sweep(self, now, tick)


engineio_ping.PingSweep.sweep = _sweep_then_crash  # type: ignore[method-assign]

app: Litestar = create_app(load_settings())
