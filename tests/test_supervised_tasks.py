"""A fan-out pump that crashes is logged with its traceback, counted, reported by ``/readyz``,
and restarted: fan-out carries on, over both transports (``supervisor.py``)."""

from __future__ import annotations

import json
import sys

import httpx

from tests.conftest import StartServer
from tests.support import PROJECT_ROOT, connect_sio, sse_session, until
from tests.test_metrics import scrape

TOKEN = "supervisor-token-0123456789"
CRASH = "crash-the-pump"  # tests/faulty_app.py (not imported: it builds an app)


def ready(url: str) -> tuple[int, list[str]]:
    response = httpx.get(f"{url}/readyz", timeout=5)
    reasons: list[str] = response.json()["reasons"]
    return response.status_code, reasons


async def test_a_crashed_pump_is_logged_counted_reported_and_restarted(
    start_server: StartServer,
) -> None:
    server = start_server(
        {"BROADCAST_PUBLISH_TOKEN": TOKEN, "PYTHONPATH": str(PROJECT_ROOT)},
        command=[sys.executable, "-m", "hypercorn", "tests.faulty_app:app"],
    )
    assert ready(server.url) == (200, [])

    async def publish(event: str) -> None:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{server.url}/publish",
                json={"event": event, "data": {"n": 1}},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        assert response.status_code == 202, response.text

    async with sse_session() as open_sse:
        sse = await open_sse(server.url)
        sio = await connect_sio(server.url, ["websocket"])
        await until(lambda: sse.last_count == 2 and sio.last_count == 2, 10, "both counted")

        await publish(CRASH)
        down: list[str] = []

        def both_down() -> bool:
            status, reasons = ready(server.url)
            down[:] = reasons
            return status == 503 and len(reasons) == 2

        await until(both_down, 20, "/readyz to report both pumps down")
        assert sorted(down) == [
            f"task socketio-pump crashed: RuntimeError: injected fault: {CRASH!r}",
            f"task sse-pump crashed: RuntimeError: injected fault: {CRASH!r}",
        ]
        metrics = scrape(server.url)
        for task in ("socketio-pump", "sse-pump"):
            assert metrics[("broadcast_task_crashes_total", (("task", task),))] == 1

        await until(lambda: ready(server.url) == (200, []), 10, "the pumps to be restarted")
        await publish("after")
        await until(lambda: any(e.event == "after" for e in sse.events), 10, "SSE fan-out")
        await until(lambda: any(e == "after" for e, _ in sio.events), 10, "Socket.IO fan-out")

    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    crashes = [line for line in lines if "crashed" in line["message"]]
    assert sorted(line["message"].split(" (")[0] for line in crashes) == [
        "task socketio-pump crashed",
        "task sse-pump crashed",
    ]
    for line in crashes:
        assert line["level"] == "error"
        assert "Traceback" in line["exception"]
        assert "injected fault" in line["exception"]
