"""The history's memory is bounded by ``BROADCAST_HISTORY_BYTES`` (issue 11, part 4): a real
server publishes far more large events than the bound, its RSS grows by no more than the bound
plus a margin, and a reconnecting client still gets the newest events, after a ``gap``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import HYPERCORN, connect_sio, sse_session, until

TOKEN = "history-memory-token-0123"
BOUND = 4 * 1024 * 1024
EVENT_BYTES = 30_000
MARGIN = 4 * 1024 * 1024
"""What publishing itself may leave behind: request buffers, the allocator's free lists. (Before
issue 11, each publish also left its request in a reference cycle with its body: tens of MB
until a full collection.)"""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def publish_all(url: str, first: int, count: int) -> list[str]:
    ids = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for n in range(first, first + count):
            # Distinct data each time: nothing to share between the events kept.
            data = {"n": n, "body": f"{n:08d}" * (EVENT_BYTES // 8)}
            response = await http.post(
                "/publish",
                json={"event": "big", "data": data},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
async def test_history_memory_stays_within_its_byte_bound(start_server: StartServer) -> None:
    # --workers 0: the process started is the one serving, whose RSS is read.
    server = start_server(
        {
            "BROADCAST_PUBLISH_TOKEN": TOKEN,
            "BROADCAST_PUBLISH_RATE_PER_SECOND": "100000",
            "BROADCAST_HISTORY_BYTES": str(BOUND),
            # Room to replay the whole history to one client (half the buffer: replay.py).
            "BROADCAST_CLIENT_BUFFER_BYTES": str(3 * BOUND),
        },
        command=[HYPERCORN, "--workers", "0"],
    )
    pid = server.process.pid
    await publish_all(server.url, 0, 20)  # warm up: the first publishes load code
    base = rss_bytes(pid)
    total = 600  # 18 MB of events, 4.3 times the bound
    ids = await publish_all(server.url, 20, total)
    grown = rss_bytes(pid) - base
    assert grown <= BOUND + MARGIN, f"RSS grew by {grown / 2**20:.1f} MiB for a 4 MiB history"

    # What is held is the newest events, as many as fit; the older ones are a gap.
    async with sse_session() as open_sse:
        sse = await open_sse(server.url, headers={"Last-Event-ID": ids[0]})
        sio = await connect_sio(server.url, auth={"lastEventId": ids[0]})
        await until(
            lambda: (
                any(e.event == "big" and json.loads(e.data)["n"] == 619 for e in sse.events)
                and any(name == "big" and data["n"] == 619 for name, data in sio.events)
            ),
            10,
            "the newest event replayed over both transports",
        )
    replayed = [json.loads(e.data)["n"] for e in sse.events if e.event == "big"]
    assert [data["n"] for name, data in sio.events if name == "big"] == replayed
    assert replayed == list(range(620 - len(replayed), 620)), "the newest, in order"
    assert BOUND // 2 < len(replayed) * EVENT_BYTES <= BOUND, len(replayed)
    gaps = [json.loads(e.data) for e in sse.events if e.event == "gap"]
    assert gaps == [{"lastEventId": ids[0], "oldestEventId": ids[-len(replayed)]}]
    assert next(e.event for e in sse.events if e.event != "user count") == "gap"
