"""Memory goes back to the operating system once the audience has shrunk (broadcast.memory_return).

The policy is checked with a clock of its own (no waiting); the whole behaviour with a real
server: 500 SSE clients come and go, and the server's RSS returns within 10 % of its baseline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from broadcast.memory_return import MemoryReturn, ReturnPolicy, glibc_malloc_trim
from tests.conftest import StartServer
from tests.support import HYPERCORN, sse_session, until, wait_until


class Recorder:
    """Stands in for the connection count and for glibc's malloc_trim."""

    def __init__(self) -> None:
        self.connections = 0
        self.trims = 0

    def trim(self) -> int:
        self.trims += 1
        return 1


def watcher(recorder: Recorder) -> MemoryReturn:
    policy = ReturnPolicy(min_drop=100, drop_fraction=0.25, quiet_seconds=2, followup_seconds=30)
    return MemoryReturn(lambda: recorder.connections, policy, trim=recorder.trim)


def test_memory_is_released_after_a_drop_once_quiet_then_once_more() -> None:
    r = Recorder()
    memory = watcher(r)
    r.connections = 1000
    assert not memory.check(0, 0)
    r.connections = 10
    assert not memory.check(1, 0)  # the count just moved: not yet
    assert not memory.check(2.5, 0)
    assert memory.check(3, 0)  # quiet for 2 s after a drop of 990
    assert (r.trims, memory.releases) == (1, 1)
    assert not memory.check(4, 0)  # the peak is now 10: nothing more to release
    assert not memory.check(32, 0)
    assert memory.check(33, 0)  # the follow-up, 30 s later, for memory freed late
    assert not memory.check(64, 0)  # and only one
    assert r.trims == 2


def test_small_drops_and_a_busy_process_release_nothing() -> None:
    r = Recorder()
    memory = watcher(r)
    r.connections = 300
    memory.check(0, 0)
    r.connections = 220  # a quarter of the peak would be 75, but 100 at least
    assert not memory.check(10, 0)
    assert not memory.check(20, 0)
    r.connections = 150  # 150 below the peak
    memory.check(21, 0)
    assert not memory.check(30, 8)  # 8 CPU seconds in 9: serving, not idle
    assert memory.check(31, 8.1)
    assert r.trims == 1


def test_malloc_trim_is_there_exactly_where_glibc_is() -> None:
    trim = glibc_malloc_trim()
    glibc = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    assert (trim is not None) == glibc
    if trim is not None:
        assert trim() in (0, 1)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(180)
async def test_rss_returns_near_its_baseline_after_500_clients_leave(
    start_server: StartServer,
) -> None:
    # PYTHONMALLOC=malloc puts every Python object in glibc's heap, which malloc_trim returns
    # (CPython's own allocator keeps its arenas: see docs/performance.md, "Memory return").
    # --workers 0: the process started is the one serving, whose RSS is read.
    server = start_server({"PYTHONMALLOC": "malloc"}, command=[HYPERCORN, "--workers", "0"])
    pid = server.process.pid
    async with sse_session() as open_sse:  # warm up: the first clients load code
        for _ in range(10):
            await open_sse(server.url)
    wait_until(lambda: server.user_count() == 0, 10, "the warm-up clients to leave")
    base = rss_kb(pid)

    async with sse_session() as open_sse:
        clients = [await open_sse(server.url) for _ in range(500)]
        await until(lambda: all(c.last_count == 500 for c in clients), 30, "every client at 500")
        loaded = rss_kb(pid)
    assert loaded - base > 10_000, f"500 clients should take memory: {base} -> {loaded} KB"
    wait_until(lambda: server.user_count() == 0, 15, "every client to leave")
    wait_until(lambda: "returned memory to the OS" in server.log(), 15, "the memory release")
    after = rss_kb(pid)
    assert after <= base * 1.10, f"RSS {base} KB at the start, {loaded} loaded, {after} after"
