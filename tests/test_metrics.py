"""GET /metrics: Prometheus text that parses, with counters that move."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartServer
from tests.support import connect_sio, sse_session, until

TOKEN = "metrics-token-0123456789"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_parse_and_follow_the_traffic(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})
    before = scrape(server.url)
    assert before[("broadcast_users", ())] == 0
    assert before[("broadcast_broker_up", ())] == 1

    async with sse_session() as open_sse:
        sse = await open_sse(server.url)
        alice = await connect_sio(server.url, ["websocket"], auth={"username": "alice"})
        await until(lambda: sse.last_count == 2, 5, "both counted")
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{server.url}/publish",
                json={"event": "news", "data": 1},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        assert response.status_code == 202
        assert (await alice.client.call("chat message", "hi", timeout=5))["ok"] is True
        assert (await alice.client.call("chat message", "", timeout=5))["ok"] is False
        await until(lambda: any(e.event == "chat message" for e in sse.events), 5, "the chat")

        now = scrape(server.url)
        assert now[("broadcast_users", ())] == 2
        assert now[("broadcast_connections", (("transport", "sse"),))] == 1
        assert now[("broadcast_connections", (("transport", "socketio"),))] == 1
        assert now[("broadcast_joins_total", (("transport", "sse"),))] == 1
        assert now[("broadcast_events_published_total", (("source", "http"),))] == 1
        assert now[("broadcast_events_published_total", (("source", "chat"),))] == 1
        assert now[("broadcast_client_events_refused_total", (("kind", "client event"),))] == 1
        assert now[("broadcast_events_received_total", ())] >= 3  # news, chat, alice's join
        assert now[("broadcast_frames_delivered_total", (("transport", "sse"),))] >= 3
        assert now[("broadcast_frames_delivered_total", (("transport", "socketio"),))] >= 3
        assert now[("broadcast_publish_seconds_count", ())] == 1
        for transport in ("sse", "socketio"):  # each pass over a transport's clients is timed
            passes = now[("broadcast_fanout_seconds_count", (("transport", transport),))]
            assert passes >= 1
            within_a_second = now[
                ("broadcast_fanout_seconds_bucket", (("le", "1.0"), ("transport", transport)))
            ]
            assert within_a_second == passes, "a pass over two clients takes far less than 1 s"
        await alice.disconnect()
    await until(lambda: server.user_count() == 0, 5, "everyone gone")
    after = scrape(server.url)
    assert after[("broadcast_leaves_total", (("transport", "socketio"),))] == 1
    assert after[("broadcast_users", ())] == 0
