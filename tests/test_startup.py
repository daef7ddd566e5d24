"""Starting the server: configuration errors, the console script, an installed wheel."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import (
    HYPERCORN,
    PROJECT_ROOT,
    VENV_BIN,
    Server,
    connect_sio,
    server_environment,
    sse_session,
    until,
)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BROADCAST_COUNT_CONFLATION_MS", "-1", "greater than or equal to 0"),
        ("BROADCAST_COUNT_CONFLATION_MS", "soon", "valid integer"),
        ("BROADCAST_SSE_PING_SECONDS", "0", "greater than 0"),
        ("BROADCAST_BROKER_URL", "kafka://x", "unsupported broker scheme 'kafka'"),
        ("BROADCAST_LOG_LEVEL", "loud", "should match pattern"),
        ("BROADCAST_CONFLATION", "10", "unknown setting(s): BROADCAST_CONFLATION"),
        ("BROADCAST_PRIVATE_CHANNELS", "private:*,team #1", "character ' ' at position 4"),
        ("BROADCAST_MAX_CHANNELS_PER_CONNECTION", "0", "greater than or equal to 1"),
    ],
)
def test_a_bad_setting_stops_startup_with_a_clear_message(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    env = server_environment({variable: value})
    for command in (
        [HYPERCORN, "broadcast.app:app", "--bind", "127.0.0.1:0"],
        [str(VENV_BIN / "broadcast"), "serve", "--port", "0"],
    ):
        result = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        output = result.stdout + result.stderr
        assert variable in output, output
        assert message in output, output
        assert "Traceback" not in output, output
    assert result.returncode == 2, "broadcast serve exits non-zero"


def allocator(server: Server) -> str | None:
    """The server process's PYTHONMALLOC (its pid is the one started: the command re-execs)."""
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PYTHONMALLOC="):
            return entry.split(b"=", 1)[1].decode()
    return None


def test_broadcast_serve_keeps_an_allocator_chosen_in_the_environment(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    server = start_server(command=[str(VENV_BIN / "broadcast"), "serve"])
    assert allocator(server) == "pymalloc"
    assert server.user_count() == 0


@pytest.mark.timeout(120)
async def test_broadcast_serve_drains_promptly_on_sigterm(start_server: StartServer) -> None:
    server = start_server(command=[str(VENV_BIN / "broadcast"), "serve"])
    async with sse_session() as open_sse:
        sse = list(await asyncio.gather(*(open_sse(server.url) for _ in range(100))))
        sio = list(
            await asyncio.gather(
                *(connect_sio(server.url, ["websocket"]) for _ in range(50)),
                *(connect_sio(server.url, ["polling"]) for _ in range(50)),
            )
        )
        await until(lambda: server.user_count() == 200, 20, "200 connections")
        assert allocator(server) == "malloc", "broadcast serve runs with glibc's allocator"
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await until(lambda: server.process.poll() is not None, 5, "the server to exit")
        assert time.monotonic() - started < 2, "exits within 2 s of SIGTERM"
        assert server.process.returncode == 0
        await until(lambda: all(c.closed for c in sse), 5, "SSE streams to end")
        assert all(c.retry == 2000 for c in sse), "each stream ends with a retry hint"
        assert all("server shutting down" in c.comments for c in sse)
        await until(lambda: not any(c.client.connected for c in sio), 5, "Socket.IO closed")
        for client in sio:
            await client.disconnect()
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.timeout(180)
def test_the_page_is_served_from_an_installed_wheel(
    tmp_path: Path, start_server: StartServer
) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, PROJECT_ROOT],
        check=True,
        timeout=150,
    )
    (wheel,) = wheels.glob("broadcast_live-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, wheel],
        check=True,
        timeout=60,
    )
    settings = {"PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    where = subprocess.run(
        [sys.executable, "-c", "import broadcast.app as a; print(a.static_directory())"],
        env=server_environment(settings),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == site / "broadcast" / "static"

    server = start_server(settings)
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert 'id="count"' in page.text
    for asset in ("/static/client.js", "/static/style.css", "/static/vendor/socket.io.min.js"):
        assert httpx.get(f"{server.url}{asset}").status_code == 200, asset


def test_logs_are_json_lines_by_default_and_text_on_request(start_server: StartServer) -> None:
    server = start_server()
    ours = [line for line in server.log().splitlines() if '"logger":"broadcast' in line]
    assert ours, server.log()
    entries = [json.loads(line) for line in ours]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("serving" in entry["message"] for entry in entries)

    text = start_server({"BROADCAST_LOG_FORMAT": "text"})
    assert " INFO broadcast: broadcast " in text.log()


def test_a_bad_broker_url_is_reported_without_its_password(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "broadcast"), "serve", "--port", "0"],
        env=server_environment({"BROADCAST_BROKER_URL": "kafka://user:hunter2@broker:9092"}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unsupported broker scheme 'kafka'" in result.stderr
    assert "hunter2" not in result.stderr
    assert "kafka://user:***@broker:9092" in result.stderr
