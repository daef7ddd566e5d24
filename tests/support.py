"""Test support: a real hypercorn server on an ephemeral port, and real clients of both transports.

The listening socket is created here and handed to hypercorn as ``fd://N``, so the port is
free for sure and known before the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import socketio

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HYPERCORN = str(VENV_BIN / "hypercorn")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.01)


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """The async ``wait_until``: yields to the event loop between checks."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


def answers_health(url: str) -> bool:
    """``GET /healthz`` answers 200 (false while nothing listens yet)."""
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


@dataclass
class Server:
    """A running ``hypercorn broadcast.app:app``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/stats", timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def user_count(self) -> int:
        return int(self.stats()["user_count"])

    def kill(self) -> None:
        """SIGKILL the server and its workers: no goodbye, as in a crash."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"server ignored SIGTERM for {timeout} s") from None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # any worker left behind
        return self.process.returncode


OVERRIDES_OFF = os.environ.get("TEST_OVERRIDES") == "off"
"""``TEST_OVERRIDES=off``: every server a test starts takes the public paths of its dependencies
(``BROADCAST_OVERRIDES=false``), to prove they work (``scripts/test`` runs the transport tests
once that way)."""


def server_environment(settings: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    if OVERRIDES_OFF:
        env["BROADCAST_OVERRIDES"] = "false"
    env.update(settings)
    return env


@contextlib.contextmanager
def running_server(
    log_dir: Path, settings: Mapping[str, str] | None = None, command: list[str] | None = None
) -> Iterator[Server]:
    """Start hypercorn with ``settings`` (``BROADCAST_*`` variables) and wait until it serves."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    log_path = log_dir / f"server-{port}.log"
    argv = command or [HYPERCORN]
    if argv[0] == HYPERCORN:
        argv = [*argv, "broadcast.app:app"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*argv, "--bind", f"fd://{sock.fileno()}"],
            pass_fds=[sock.fileno()],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(settings or {}),
            cwd=log_dir,
            # Its own process group: hypercorn's workers are children, and kill() takes them all.
            start_new_session=True,
        )
    sock.close()
    server = Server(process, f"http://127.0.0.1:{port}", log_path)

    def serving() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{server.log()}")
        return answers_health(server.url)

    try:
        wait_until(serving, 15, "the server to answer /healthz")
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------- redis


def free_port() -> int:
    """A port free right now (for servers that cannot take a listening socket from us)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A real ``redis-server`` on a free port, with nothing kept on disk; stop and start it to
    simulate an outage (it comes back on the same port)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise AssertionError(
                "redis-server is not installed: scripts/setup --dev installs it "
                "(Debian: apt-get install redis-server)"
            )
        self.process = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            assert conn.recv(16).startswith(b"+OK")


# ---------------------------------------------------------------------------- clients


@dataclass
class SioClient:
    """python-socketio's AsyncClient, recording every ``user count`` it receives."""

    client: socketio.AsyncClient
    counts: list[int] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    """The ids that came with events (a client that passed ``lastEventId`` gets them)."""
    own_session: aiohttp.ClientSession | None = None

    @property
    def last_count(self) -> int | None:
        return self.counts[-1] if self.counts else None

    async def disconnect(self) -> None:
        await self.client.disconnect()
        if self.own_session is not None:  # python-socketio leaves a given session open
            await self.own_session.close()


OPEN_CLIENTS: list[SioClient] = []
"""Every client ``connect_sio`` made; the ``close_clients`` fixture closes what a test left."""


async def close_client(recorder: SioClient) -> None:
    """Disconnect and release the client's HTTP session, whatever state it is in (a server that
    was killed leaves python-socketio's session open)."""
    with contextlib.suppress(Exception):
        await recorder.client.disconnect()
    ws = recorder.client.eio.ws  # left open by engineio when the server vanished under it
    if ws is not None and not ws.closed:
        with contextlib.suppress(Exception):
            await ws.close()
    http = recorder.client.eio.http
    if http is not None and not http.closed:
        await http.close()
    if recorder.own_session is not None and not recorder.own_session.closed:
        await recorder.own_session.close()


class ConnectRefused(socketio.exceptions.ConnectionError):  # type: ignore[misc]
    """The server refused the Socket.IO connection; ``str()`` is the server's message."""


async def connect_sio(
    url: str,
    transports: list[str] | None = None,
    auth: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    local_address: str | None = None,
) -> SioClient:
    """Connect a python-socketio client; ``local_address`` picks its source address (any of
    127.0.0.0/8), so a proxy hashing on the client address sees distinct clients."""
    options: dict[str, Any] = {}
    if local_address is not None:
        connector = aiohttp.TCPConnector(local_addr=(local_address, 0))
        options["http_session"] = aiohttp.ClientSession(connector=connector)
    client = socketio.AsyncClient(reconnection=False, **options)
    recorder = SioClient(client, own_session=options.get("http_session"))
    OPEN_CLIENTS.append(recorder)
    refusals: list[Any] = []

    @client.on("connect_error")  # type: ignore[untyped-decorator]
    async def on_connect_error(data: Any) -> None:
        refusals.append(data)

    @client.on("user count")  # type: ignore[untyped-decorator]
    async def on_count(count: int) -> None:
        recorder.counts.append(count)

    @client.on("*")  # type: ignore[untyped-decorator]
    async def on_any(event: str, data: Any = None, *more: Any) -> None:
        recorder.events.append((event, data))
        if more:
            recorder.ids.append(more[-1])

    try:
        await client.connect(
            url, transports=transports, auth=auth, headers=headers or {}, wait_timeout=10
        )
    except socketio.exceptions.ConnectionError as exc:
        await recorder.disconnect()
        if (
            client.eio.http is not None and not client.eio.http.closed
        ):  # python-socketio keeps its session after a failure
            await client.eio.http.close()
        if refusals:
            data = refusals[-1]
            raise ConnectRefused(data.get("message") if isinstance(data, dict) else data) from exc
        raise
    return recorder


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None = None


@dataclass
class SseClient:
    """A real HTTP SSE client (httpx streaming) with a small spec-following frame parser."""

    response: httpx.Response
    task: asyncio.Task[None] | None = None
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    closed: bool = False

    @property
    def counts(self) -> list[int]:
        return [int(e.data) for e in self.events if e.event == "user count"]

    @property
    def last_count(self) -> int | None:
        counts = self.counts
        return counts[-1] if counts else None

    async def read(self) -> None:
        fields: dict[str, str] = {}
        data: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if data or fields:
                        self.events.append(
                            SseEvent(
                                fields.get("event", "message"), "\n".join(data), fields.get("id")
                            )
                        )
                    fields, data = {}, []
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name == "retry":
                        self.retry = int(value)
                    else:
                        fields[name] = value
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass
        finally:
            self.closed = True


@contextlib.asynccontextmanager
async def sse_session(
    read_timeout: float = 30,
) -> AsyncIterator[Callable[..., Awaitable[SseClient]]]:
    """Open SSE clients on one httpx pool; all are closed on exit."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    clients: list[SseClient] = []
    async with contextlib.AsyncExitStack() as stack:
        pools: dict[str | None, httpx.AsyncClient] = {}

        def pool(local_address: str | None) -> httpx.AsyncClient:
            if local_address not in pools:
                transport = httpx.AsyncHTTPTransport(local_address=local_address, limits=limits)
                http = httpx.AsyncClient(timeout=httpx.Timeout(read_timeout), transport=transport)
                pools[local_address] = http
                stack.push_async_callback(http.aclose)
            return pools[local_address]

        async def connect(
            url: str,
            path: str = "/events",
            local_address: str | None = None,
            headers: dict[str, str] | None = None,
            **params: str,
        ) -> SseClient:
            http = pool(local_address)
            # (httpx replaces the path's own query with ``params``, even empty ones.)
            request = http.build_request(
                "GET", f"{url}{path}", params=params or None, headers=headers
            )
            response = await http.send(request, stream=True)
            client = SseClient(response)
            client.task = asyncio.create_task(client.read())
            clients.append(client)
            return client

        try:
            yield connect
        finally:
            for client in clients:
                await close_sse(client)


async def close_sse(client: SseClient) -> None:
    if client.task is not None:
        client.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client.task
    await client.response.aclose()
