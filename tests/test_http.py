"""Plain HTTP routes: stats, health, 404s, the page."""

from __future__ import annotations

import httpx
import pytest

from tests.support import Server


def test_health_and_stats(server: Server) -> None:
    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert server.stats() == {
        "user_count": 0,
        "local_users": 0,
        "connections": {"socketio": 0, "sse": 0},
        "channels": {},
    }
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "broker": "memory", "reasons": []}


@pytest.mark.parametrize("path", ["/nope", "/events/extra", "/static/missing.js", "/stats/x"])
def test_unknown_paths_are_404(server: Server, path: str) -> None:
    response = httpx.get(f"{server.url}{path}")
    assert response.status_code == 404
    assert response.json()["status_code"] == 404


def test_page_and_its_assets_are_served(server: Server) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="count"' in page.text
    for asset, kind in [
        ("/static/client.js", "javascript"),
        ("/static/style.css", "text/css"),
        ("/static/vendor/socket.io.min.js", "javascript"),  # from npm, same origin
    ]:
        response = httpx.get(f"{server.url}{asset}")
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"], asset
        assert f'"{asset}"' in page.text, f"the page does not load {asset}"


def test_openapi_schema_documents_publish_stats_and_health(server: Server) -> None:
    schema = httpx.get(f"{server.url}/schema/openapi.json").json()
    paths = schema["paths"]
    assert {"/events", "/stats", "/healthz", "/publish", "/publish/batch"} <= set(paths)
    publish = paths["/publish"]["post"]
    assert {"202", "400", "401", "413", "429"} <= set(publish["responses"])
    assert "requestBody" in publish
    assert "200" in paths["/stats"]["get"]["responses"]
    assert "200" in paths["/healthz"]["get"]["responses"]
