"""The official Node Socket.IO client (npm ``socket.io-client``) as a test's client: a Node
process running ``tests/node/socketio_client.js``, driven over its stdin and stdout with one JSON
object a line. Everything it reports is kept in ``messages``, in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import PROJECT_ROOT, until

SCRIPT = PROJECT_ROOT / "tests" / "node" / "socketio_client.js"
CLIENT_PACKAGE = PROJECT_ROOT / "node_modules" / "socket.io-client"


@dataclass
class NodeClient:
    process: asyncio.subprocess.Process
    messages: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _refs: itertools.count[int] = field(default_factory=itertools.count)

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, within: float = 5
    ) -> dict[str, Any]:
        """The first message (of all received so far, and those to come) that ``predicate``
        accepts."""

        def found() -> bool:
            fatal = [m for m in self.messages if m["type"] == "fatal"]
            assert not fatal, f"the Node client failed: {fatal}"
            if self.process.returncode is not None:
                raise AssertionError(f"the Node client exited: {''.join(self.stderr)}")
            return any(predicate(m) for m in self.messages)

        await until(found, within, what)
        return next(m for m in self.messages if predicate(m))

    async def connect(self, auth: dict[str, Any]) -> dict[str, Any]:
        """Connect with ``auth``: the ``connect`` or ``connect_error`` message."""
        await self.send({"op": "connect", "auth": auth, "transports": ["websocket"]})
        return await self.wait_for(
            lambda m: m["type"] in ("connect", "connect_error"), "connect or connect_error"
        )

    async def call(self, event: str, *args: Any) -> Any:
        """Emit ``event`` with ``args`` and an acknowledgement callback: its first argument."""
        ref = next(self._refs)
        await self.send({"op": "emit", "event": event, "args": list(args), "ref": ref})
        ack = await self.wait_for(lambda m: m["type"] == "ack" and m["ref"] == ref, f"{event} ack")
        assert "error" not in ack, f"{event}: no acknowledgement: {ack['error']}"
        return ack["args"][0]

    def events(self, name: str) -> list[Any]:
        """The first argument of each ``name`` event received, in order."""
        return [
            m["args"][0] if m["args"] else None
            for m in self.messages
            if m["type"] == "event" and m["event"] == name
        ]

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.messages.append(json.loads(line))

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr.append(line.decode(errors="replace"))


@contextlib.asynccontextmanager
async def node_client(url: str) -> AsyncIterator[NodeClient]:
    """A Node ``socket.io-client`` for ``url``, not connected yet; closed (its process ended)
    on the way out."""
    node = shutil.which("node")
    if node is None or not CLIENT_PACKAGE.exists():
        pytest.fail("these tests need Node.js and node_modules: run scripts/setup --dev")
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        url,
        cwd=PROJECT_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = NodeClient(process)
    readers = [asyncio.create_task(client._read()), asyncio.create_task(client._read_errors())]
    try:
        yield client
    finally:
        with contextlib.suppress(ConnectionError):
            await client.send({"op": "close"})
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, 5)
