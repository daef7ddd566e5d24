"""The ``shutdown`` scenario of ``bench/loadgen/``: SIGTERM with N clients connected (half SSE)
that reconnect as soon as the server closes them, as browsers do.

It connects every client, checks they all hold the count, sends SIGTERM to ``--server-pid`` and
measures the time until that process has exited (a pidfd: exact, without being its parent).
Every client the server closes tries to reconnect at once, then every ``RETRY_SECONDS`` until
the process is gone: each attempt must be *refused* (the node stopped listening, so a real
client goes to another node), never accepted. An accepted attempt fails the scenario; the
exit time is the figure (the target: < 1 s, in ``bench/report/targets.py``). The server's log is
checked for tracebacks by ``bench/runner.py``, which holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from bench.wire import Client, now

if TYPE_CHECKING:
    from bench.loadgen import Run

RETRY_SECONDS = 0.1
"""Between two refused attempts of one client (its first attempt is at once)."""
EXIT_WITHIN = 30.0
"""Seconds the server gets to exit after SIGTERM before the scenario gives up."""


class Helpers(NamedTuple):
    """``bench/loadgen/``'s own (see its ``shutdown``)."""

    connect_phase: Callable[[Run, str, list[str]], Awaitable[dict[str, Any]]]
    check_server: Callable[[Run, dict[str, Any]], Awaitable[None]]
    kind_for: Callable[[int, float], str]
    failed: Callable[..., Exception]


def r1(x: float) -> float:
    return round(x, 1)


@dataclass
class Reconnects:
    closed: int = 0
    """Clients the server closed."""
    last_close: float = 0.0
    attempts: int = 0
    refused: int = 0
    refused_while_running: int = 0
    """Refused while the server process was still draining (not yet gone)."""
    accepted: int = 0
    accepted_samples: dict[str, int] = field(default_factory=dict)


async def attempt(run: Run, request: bytes) -> str | None:
    """One reconnect: None when refused, else what the server did with it."""
    try:
        reader, writer = await asyncio.open_connection(run.host, run.port)
    except ConnectionRefusedError:
        return None
    except OSError as exc:
        return f"connect failed otherwise: {type(exc).__name__}"
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readline(), 1.0)
        return head.decode(errors="replace").strip()[:40] or "accepted, then closed"
    except (OSError, TimeoutError) as exc:
        return f"accepted, then {type(exc).__name__}"
    finally:
        writer.close()


async def reconnect(run: Run, c: Client, stats: Reconnects, gone: asyncio.Event) -> None:
    request = c.request()
    while not gone.is_set():
        stats.attempts += 1
        outcome = await attempt(run, request)
        if outcome is None:
            stats.refused += 1
            stats.refused_while_running += not gone.is_set()
        else:
            stats.accepted += 1
            stats.accepted_samples[outcome] = stats.accepted_samples.get(outcome, 0) + 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), RETRY_SECONDS)


async def shutdown(run: Run, helpers: Helpers) -> dict[str, Any]:
    connect_phase, check_server, kind_for, ScenarioFailed = helpers
    o = run.o
    pid = o.server_pid
    if not pid:
        raise ScenarioFailed("the shutdown scenario needs --server-pid (it sends SIGTERM)", 3)
    kinds = [kind_for(i, o.sse_ratio) for i in range(o.clients)]
    p = await connect_phase(run, "connect", kinds)
    await check_server(run, p)

    stats = Reconnects()
    gone = asyncio.Event()
    loops: list[asyncio.Task[None]] = []

    def closed_by_server(c: Client, _: str) -> None:
        stats.closed += 1
        stats.last_close = now()
        loops.append(asyncio.create_task(reconnect(run, c, stats, gone)))

    pidfd = os.pidfd_open(pid)
    exited: asyncio.Future[float] = run.loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(now())
        gone.set()

    run.loop.add_reader(pidfd, on_exit)
    run.begin_phase("shutdown")
    run.on_drop = closed_by_server
    open_at_signal = len(run.open_list)
    signalled = now()
    os.kill(pid, signal.SIGTERM)
    try:
        t_exit = await asyncio.wait_for(exited, EXIT_WITHIN)
    except TimeoutError:
        raise ScenarioFailed(f"the server did not exit within {EXIT_WITHIN:.0f} s", 2) from None
    finally:
        run.loop.remove_reader(pidfd)
        os.close(pidfd)
        gone.set()
    await asyncio.gather(*loops)
    run.on_drop = None
    result = {
        "clients": open_at_signal,
        "exit_ms": r1((t_exit - signalled) * 1000),
        "closed_by_server": stats.closed,
        "last_close_ms": r1((stats.last_close - signalled) * 1000) if stats.closed else None,
        "reconnect_attempts": stats.attempts,
        "refused": stats.refused,
        "refused_while_draining": stats.refused_while_running,
        "accepted": stats.accepted,
        "accepted_samples": stats.accepted_samples,
    }
    run.end_phase(**result)
    for c in list(run.open_list):  # the server exited without closing these
        run.close_client(c)
    if stats.accepted:
        raise ScenarioFailed(
            f"{stats.accepted} reconnect(s) accepted while draining", 1, {"shutdown": result}
        )
    return {"shutdown": result}
