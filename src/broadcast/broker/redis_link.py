"""The Redis connection as every Redis loop uses it: failures that surface (no silent retries),
commands that time out, TCP keepalive so a dead connection is noticed, and the loop that turns
an outage into a reported, retried state rather than a crash.

Outages are reported, not hidden: redis-py's own retries are off, each loop catches the
connection error, says why in ``unavailable_reason`` (``/readyz``), and reconnects with a capped
exponential backoff. Anything else is a bug, left to the supervisor (``supervisor.py``), which
logs, counts and restarts the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

PREFIX = "broadcast:"

# Errors that mean "Redis is not reachable now": retried, reported, never fatal.
CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


# TCP keepalive probes after 5 s idle, every 2 s, 3 failures: a connection whose peer vanished
# (a lost machine, a NAT that dropped it) fails within about 11 s, even an idle subscription.
_KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 5),
        (getattr(socket, "TCP_KEEPINTVL", None), 2),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}


def connect(url: str, protocol: int | None = None) -> aioredis.Redis:
    """A client whose failures surface (no silent retries), whose commands time out, and whose
    connections are probed by TCP keepalive, so a dead connection is noticed. (``protocol``:
    RESP 2 or 3, redis-py's default.)"""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        protocol=protocol,
        socket_connect_timeout=2,
        socket_timeout=5,
        socket_keepalive=True,
        socket_keepalive_options=_KEEPALIVE,
        health_check_interval=5,
        retry=Retry(NoBackoff(), 0),
    )
    return client


def node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Backoff:
    """Capped exponential backoff: 0.1 s doubling up to ``cap``."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.delay = 0.1

    def reset(self) -> None:
        self.delay = 0.1

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


class Health:
    """The state of one connection loop, logged on every change."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.reason: str | None = "connecting to redis"

    def ok(self) -> None:
        if self.reason is not None:
            logger.info("%s: connected to redis", self.what)
        self.reason = None

    def lost(self, exc: BaseException) -> None:
        reason = f"redis unreachable: {exc or type(exc).__name__}"
        if reason != self.reason:
            logger.warning("%s: %s; reconnecting", self.what, reason)
        self.reason = reason


def raise_if_cancelling() -> None:
    """Stop here if this task was asked to: redis-py swallows a cancellation that lands in the
    middle of a command (it cleans the connection up and carries on)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def until_cancelled(
    what: str, health: Health, backoff: Backoff, attempt: Callable[[], Awaitable[None]]
) -> None:
    """Run ``attempt`` again and again: an outage is reported and retried, never fatal. (A bug,
    any other exception, goes to the supervisor, which logs, counts and restarts the loop.)"""
    while True:
        try:
            await attempt()
        except CONNECTION_ERRORS as exc:
            raise_if_cancelling()  # a cancellation redis-py turned into a connection error
            health.lost(exc)
        await backoff.wait()
