"""python-engineio's heartbeat, swept: one task for every client's ping and ping timeout.

Why: python-engineio starts a task per ping (``AsyncSocket.schedule_ping`` starts
``_send_ping``: an ``asyncio.sleep`` of the ping interval, then the PING through the client's
queue, its writer task and the framework's ASGI send path), and its service task visits every
socket once per ping timeout with an ``asyncio.wait_for`` each. With 10,000 idle Socket.IO
clients that was about a fifth of a core on the benchmark machine, before any event
(docs/performance-log.md, "Idle clients"). Here one task, every ``tick``, sends the pings that
are due (to a websocket client with nothing else on its way, written straight to its socket,
as the pump writes events) and closes the clients whose ping went unanswered for the ping
timeout, as ``check_ping_timeout`` does; python-engineio's own ``check_ping_timeout`` on every
request and send stays as it is.

What it relies on (python-engineio 4.x): ``schedule_ping`` and the service task are started
through ``start_background_task`` with the bound methods ``AsyncSocket._send_ping`` and
``AsyncServer._service_task``; a socket waiting for its pong has ``last_ping`` set to when its
ping went out; a websocket's writer waits on ``self.poll()`` (given one without its timeout
here: ``_poll``); shutdown sets ``service_task_event`` and awaits the service task. The sweep
itself runs as one of the app's supervised tasks, ``socketio-heartbeat``. ``check`` looks at
those when the app starts; without them (or with ``BROADCAST_OVERRIDES=false``), python-engineio
pings as it always did.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import time
import types
from collections.abc import Callable
from typing import Any

import engineio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from broadcast.overrides.engineio_wire import direct_connection
from broadcast.transports.framing import websocket_text

PING_FRAME = websocket_text(b"2")
"""A PING packet as the WebSocket frame a direct write sends."""

NO_BUDGET = 1 << 62
"""A ping is never what puts a client over its buffer budget (the pump decides that)."""


def tick_for(ping_interval: float, ping_timeout: float) -> float:
    """How often the sweep runs: often enough that a ping goes out well within the client's
    allowance (interval + timeout) and an unanswered one is found soon after its timeout; a
    second at most (25 s / 20 s by default)."""
    return max(0.01, min(1.0, ping_interval / 10, ping_timeout / 4))


class PingSweep:
    """Every client's next ping and pending pong, in two heaps, handled by one task."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._order = itertools.count()  # ties never compare sockets
        self._due: list[tuple[float, int, Any]] = []
        """(when its next ping is due, -, socket): monotonic time."""
        self._waiting: list[tuple[float, int, Any, float]] = []
        """(when its ping times out, -, socket, its ``last_ping``)."""
        self._next_cleanup = 0.0

    def __len__(self) -> int:
        return len(self._due) + len(self._waiting)

    def schedule(self, socket: Any) -> None:
        """Ping ``socket`` one ping interval from now (its pong came, or it just connected)."""
        if "poll" not in socket.__dict__:  # its first: its writer must not wait for pings
            socket.poll = types.MethodType(_poll, socket)
        due = time.monotonic() + self._server.ping_interval
        heapq.heappush(self._due, (due, next(self._order), socket))

    async def run(self) -> None:
        """Sweep every ``tick`` for the server's life: a supervised task (``transports/
        socketio.py``), so a crash is logged, counted, shown in ``/readyz`` and restarted, and
        the heaps, kept here, carry on."""
        server = self._server
        tick = tick_for(server.ping_interval, server.ping_timeout)
        while True:
            await asyncio.sleep(tick)
            await self.sweep(time.monotonic(), tick)

    async def until_shutdown(self) -> None:
        """What runs in python-engineio's service task's place (the sweep does its work):
        waits for ``shutdown``, which sets ``service_task_event`` and awaits this."""
        server = self._server
        stop = server.service_task_event = server.create_event()
        await stop.wait()

    async def sweep(self, now: float, tick: float) -> None:
        """Send the pings due before the next sweep (``tick`` from ``now``), close the clients
        whose ping went unanswered, and forget closed sessions (python-engineio's service task
        did that too).

        A ping goes out up to a tick early, never a tick late: a silent session must be
        refused from one ping interval and one ping timeout after its last pong (the protocol
        suite checks it to the millisecond at 300/200 ms), and a late ping would move that."""
        server = self._server
        due, waiting = self._due, self._waiting
        while due and due[0][0] <= now + tick:
            socket = heapq.heappop(due)[2]
            if socket.closing or socket.closed:
                continue
            sent = socket.last_ping = time.time()
            await self._ping(socket)
            deadline = now + server.ping_timeout
            heapq.heappush(waiting, (deadline, next(self._order), socket, sent))
        while waiting and waiting[0][0] <= now:
            _, _, socket, sent = heapq.heappop(waiting)
            # Its pong reset ``last_ping`` (``schedule_ping``); the next ping set a new one.
            if socket.last_ping != sent or socket.closing or socket.closed:
                continue
            server.logger.info("%s: Client is gone, closing socket", socket.sid)
            await socket.close(wait=False, abort=False, reason=server.reason.PING_TIMEOUT)
            if socket.upgraded:  # its writer sends the CLOSE packet, then ends the websocket
                socket.queue.put_nowait(None)
        if now >= self._next_cleanup:
            self._next_cleanup = now + server.ping_timeout
            sockets = server.sockets
            for sid in [sid for sid, socket in sockets.items() if socket.closed]:
                sockets.pop(sid, None)

    async def _ping(self, socket: Any) -> None:
        connection = direct_connection(self._server.websockets, socket)
        if connection is not None:
            connection.write(PING_FRAME, NO_BUDGET)
        else:  # polling, an upgrade, or behind what its writer has yet to send
            await socket.send(eio_packet.Packet(eio_packet.PING))


async def _poll(self: Any) -> list[Any]:
    """``AsyncSocket.poll``, but a websocket's writer waits for packets as long as it takes.

    python-engineio's writer gives up when nothing was queued for a ping interval and a ping
    timeout, and closes the websocket: it counted on a PING being queued every interval. Pings
    now go straight to the socket, as events do, so that wait would end every idle client's
    websocket. Dead clients are still found: by their unanswered ping (the sweep), and by the
    websocket's reader, which keeps its own timeout. A polling client's wait is python-engineio's.
    """
    if not self.upgraded:
        return await AsyncSocket.poll(self)  # type: ignore[no-any-return]
    queue = self.queue
    try:
        first = await queue.get()
        queue.task_done()
    except asyncio.CancelledError:
        raise eio_exceptions.QueueEmpty() from None
    if first is None:
        return []
    packets = [first]
    while True:
        try:
            pkt = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        queue.task_done()
        if pkt is None:
            queue.put_nowait(None)
            break
        packets.append(pkt)
    return packets


def intercepted(sweep: PingSweep, target: Callable[..., Any]) -> Callable[[], Any] | None:
    """What ``start_background_task(target)`` starts instead with the sweep on: nothing for a
    socket's ping (the sweep sends it: ``None`` is returned, and the ping scheduled), a wait for
    shutdown for the service task (the sweep, supervised, does its work); ``target`` itself for
    anything else."""
    func = getattr(target, "__func__", None)
    if func is AsyncSocket._send_ping:
        sweep.schedule(target.__self__)  # type: ignore[attr-defined]
        return None
    if func is engineio.AsyncServer._service_task:
        return sweep.until_shutdown
    return target


def check() -> str | None:
    """Why the sweep cannot stand in for python-engineio's heartbeat (``None``: it can)."""
    for owner, name in (
        (AsyncSocket, "_send_ping"),
        (AsyncSocket, "schedule_ping"),
        (AsyncSocket, "poll"),
        (engineio.AsyncServer, "_service_task"),
        (engineio.AsyncServer, "start_background_task"),
    ):
        if not callable(getattr(owner, name, None)):
            return f"python-engineio's {owner.__name__}.{name} is gone"
    source = inspect.getsource(AsyncSocket.schedule_ping)
    if "start_background_task(self._send_ping)" not in source:
        return "AsyncSocket.schedule_ping no longer starts _send_ping as a background task"
    if "self.poll()" not in inspect.getsource(AsyncSocket._websocket_handler):
        return "AsyncSocket's websocket writer no longer waits on self.poll()"
    return None
