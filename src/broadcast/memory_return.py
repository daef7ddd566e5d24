"""Give memory back to the operating system once the audience has shrunk.

Why this exists (measured, see docs/performance-log.md, "Memory return"): after 1,000 clients leave,
the server's RSS stayed about 46 MB above its idle baseline, for two reasons.

1. Departed connections leave reference cycles behind (cancelled tasks with their frames and
   tracebacks: about 150 objects per client). The app raises the garbage collector's
   thresholds and freezes its startup objects (see ``app.py``) because fan-out allocates many
   short-lived objects; the price is that a full collection, the only one that reaches cycles
   which lived as long as a connection, then runs very rarely. Until it does, that memory is in
   use.
2. Freed memory is not handed back: glibc keeps free chunks in its heap until ``malloc_trim``,
   and CPython's own small-object allocator (obmalloc) keeps each 1 MiB arena while a single
   object lives in it. After a peak, a few long-lived objects (counters, timers) pin most of the
   arenas the connections used, so RSS stays at the peak's level even once they are free.

So, when the number of connections has fallen well below its peak and the process is quiet,
``MemoryReturn`` runs a full collection and then glibc's ``malloc_trim(0)``, which returns every
whole free page of the heap, not only its top. That returns what glibc manages; obmalloc's arenas
can only be returned by not using them: run the server with ``PYTHONMALLOC=malloc`` (every
Python object then lives in glibc's heap, and the trim returns it), which is what brings RSS back
within 10 % of the baseline (for about 10 % more CPU per delivery). Without glibc (macOS,
Windows, musl) only the collection runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


def glibc_malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (not Linux, or not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # musl (Alpine) answers nothing
            return None
        trim = ctypes.CDLL(None).malloc_trim  # this process's own libc, already loaded
    except (AttributeError, OSError, ValueError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def malloc_trim() -> int:
        return int(trim(0))

    return malloc_trim


def rss_bytes() -> int | None:
    """This process's resident set size (Linux), for the log line; None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass(frozen=True)
class ReturnPolicy:
    """When to release: after a drop of at least ``max(min_drop, drop_fraction * peak)``
    connections from the peak since the last release, once the count has not moved for
    ``quiet_seconds`` and the process used at most ``max_busy`` of a core over the last check;
    and once more ``followup_seconds`` later, for memory freed late (python-engineio keeps a
    departed Socket.IO client until its ping timer fires, up to the 25 s ping interval)."""

    min_drop: int = 100
    drop_fraction: float = 0.25
    quiet_seconds: float = 2.0
    max_busy: float = 0.5
    followup_seconds: float = 30.0
    check_seconds: float = 1.0


class MemoryReturn:
    """Watches ``connections()`` and releases memory per ``policy`` (see the module doc)."""

    def __init__(
        self,
        connections: Callable[[], int],
        policy: ReturnPolicy | None = None,
        trim: Callable[[], int] | None = None,
    ) -> None:
        self._connections = connections
        self.policy = policy or ReturnPolicy()
        self._trim = trim
        self._last: int | None = None
        self._peak = 0
        self._changed_at = 0.0
        self._followup_at: float | None = None
        self._checked: tuple[float, float] | None = None  # (wall, cpu) at the last check
        self.releases = 0

    @classmethod
    def for_this_platform(cls, connections: Callable[[], int]) -> MemoryReturn:
        return cls(connections, trim=glibc_malloc_trim())

    def check(self, now: float, cpu: float) -> bool:
        """One look at the count (``now``: monotonic seconds, ``cpu``: this process's CPU
        seconds); releases memory and returns True when the policy says so."""
        p = self.policy
        n = self._connections()
        if n != self._last:
            self._last = n
            self._changed_at = now
        self._peak = max(self._peak, n)
        busy = 0.0
        if self._checked is not None and now > self._checked[0]:
            busy = (cpu - self._checked[1]) / (now - self._checked[0])
        self._checked = (now, cpu)
        dropped = self._peak - n >= max(p.min_drop, p.drop_fraction * self._peak)
        followup = self._followup_at is not None and now >= self._followup_at
        if not (dropped or followup):
            return False
        if now - self._changed_at < p.quiet_seconds or busy > p.max_busy:
            return False  # still moving, or busy serving: not now
        self.release(self._peak - n if dropped else 0)
        self._peak = n
        self._followup_at = now + p.followup_seconds if dropped else None
        return True

    def release(self, departed: int = 0) -> None:
        """A full garbage collection, then ``malloc_trim(0)`` where glibc has it."""
        t0 = time.perf_counter()
        before = rss_bytes()
        collected = gc.collect()
        trimmed = self._trim() if self._trim is not None else None
        after = rss_bytes()
        self.releases += 1
        logger.info(
            "returned memory to the OS%s: gc collected %d objects, malloc_trim %s, "
            "RSS %s -> %s MB, in %.0f ms",
            f" after {departed} connections left" if departed else " (follow-up)",
            collected,
            {None: "unavailable", 0: "found nothing", 1: "released memory"}.get(trimmed),
            f"{before / 2**20:.1f}" if before is not None else "?",
            f"{after / 2**20:.1f}" if after is not None else "?",
            (time.perf_counter() - t0) * 1000,
        )

    async def run(self) -> None:
        """Check every ``check_seconds`` until cancelled (a supervised task: ``app.py``)."""
        while True:
            await asyncio.sleep(self.policy.check_seconds)
            self.check(time.monotonic(), time.process_time())
