"""Two nodes on one Redis behind the nginx configuration of ``deploy/``, started on free ports:
Socket.IO over polling, websocket and the upgrade, and SSE, all through it, with one count."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import (
    PROJECT_ROOT,
    RedisServer,
    SioClient,
    SseClient,
    answers_health,
    connect_sio,
    free_port,
    sse_session,
    until,
    wait_until,
)

NGINX_CONF = PROJECT_ROOT / "deploy" / "nginx.conf"
# Distinct client addresses: nginx hashes on them to keep each client on one node.
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 18)]


def render(nodes: list[str], port: int, workdir: Path) -> Path:
    """deploy/nginx.conf with only the lines marked "@" changed: addresses, pid, logs."""
    lines = []
    node_lines = iter(nodes)
    for line in NGINX_CONF.read_text().splitlines():
        if "# @node" in line:
            lines.append(f"        server {next(node_lines)};")
        elif "# @listen" in line:
            lines.append(f"        listen 127.0.0.1:{port};")
        elif "# @pid" in line:
            lines.append(f"pid {workdir / 'nginx.pid'};\nerror_log {workdir / 'error.log'};")
        else:
            lines.append(line)
    assert next(node_lines, None) is None, "deploy/nginx.conf lists as many nodes as we start"
    path = workdir / "nginx.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def running_nginx(config: Path, port: int, workdir: Path) -> Iterator[str]:
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(executable).exists():
        raise AssertionError("nginx is not installed: scripts/setup --dev installs it")
    check = subprocess.run(
        [executable, "-t", "-c", str(config), "-p", str(workdir)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    with (
        (workdir / "nginx.out").open("wb") as output,
        subprocess.Popen(
            [executable, "-c", str(config), "-p", str(workdir), "-g", "daemon off;"],
            stderr=subprocess.STDOUT,
            stdout=output,
        ) as process,
    ):
        url = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            assert process.poll() is None, (workdir / "error.log").read_text()
            return answers_health(url)

        try:
            wait_until(serving, 10, "nginx to proxy /healthz")
            yield url
        finally:
            process.terminate()
            process.wait(10)


@pytest.mark.timeout(120)
async def test_two_nodes_behind_nginx_one_count_over_every_transport(
    start_server: StartServer, redis: RedisServer, artifacts: Path
) -> None:
    settings = {
        "BROADCAST_BROKER_URL": redis.url,
        "BROADCAST_PUBLISH_TOKEN": "nginx-token-0123456789",
    }
    nodes = [start_server(settings), start_server(settings)]
    port = free_port()
    config = render([n.url.removeprefix("http://") for n in nodes], port, artifacts)
    with running_nginx(config, port, artifacts) as url:
        async with sse_session() as open_sse:
            clients: list[SioClient | SseClient] = []
            # SSE from many addresses: nginx spreads them over both nodes.
            for address in ADDRESSES[:8]:
                clients.append(await open_sse(url, local_address=address))
            # Socket.IO over each transport, each from its own address (sticky by address).
            for address, transports in zip(
                ADDRESSES[8:],
                [["polling"], ["websocket"], ["polling", "websocket"]] * 3,
                strict=False,
            ):
                clients.append(await connect_sio(url, transports, local_address=address))
            total = len(clients)
            await until(lambda: all(c.last_count == total for c in clients), 15, f"{total}")

            local = [node.stats()["local_users"] for node in nodes]
            assert sum(local) == total
            assert all(count > 0 for count in local), f"both nodes serve clients: {local}"

            # Long-polling sessions survive through the proxy (no "Invalid session"): a
            # publish reaches every client, on both nodes, exactly once.
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"{url}/publish",
                    json={"event": "through nginx", "data": 1},
                    headers={"Authorization": "Bearer nginx-token-0123456789"},
                )
            assert response.status_code == 202
            sio = [c for c in clients if isinstance(c, SioClient)]
            sse = [c for c in clients if isinstance(c, SseClient)]
            await until(
                lambda: (
                    all(("through nginx", 1) in c.events for c in sio)
                    and all(any(e.event == "through nginx" for e in c.events) for c in sse)
                ),
                10,
                "the event everywhere",
            )
            assert all(c.events.count(("through nginx", 1)) == 1 for c in sio)
            for client in sio:
                await client.disconnect()
            await until(lambda: all(c.last_count == len(sse) for c in sse), 15, "the SSE count")
