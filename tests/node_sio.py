"""The official Node Socket.IO client (npm ``socket.io-client``) as a test's client:
``tests/node/sio-client.mjs`` in a Node process, driven by line commands (``emit``,
``engine-close``, ``disconnect``, ``connect``, ``forge-pid x``, ``forge-offset y``, ``state``,
``exit``). Every line it prints is kept, in order, in ``lines``; a test waits for one with
``wait`` (a deadline, never a sleep) and reads what came after a ``mark``."""

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

SCRIPT = PROJECT_ROOT / "tests" / "node" / "sio-client.mjs"
CLIENT_PACKAGE = PROJECT_ROOT / "node_modules" / "socket.io-client"

Line = dict[str, Any]


@dataclass
class NodeSio:
    process: asyncio.subprocess.Process
    lines: list[Line] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _refs: itertools.count[int] = field(default_factory=itertools.count)

    async def command(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    def mark(self) -> int:
        """A position in ``lines``: ``wait`` and ``events`` can look only at what came after."""
        return len(self.lines)

    async def wait(
        self, predicate: Callable[[Line], bool], what: str, after: int = 0, within: float = 10
    ) -> Line:
        """The first line from ``after`` on that ``predicate`` accepts (waiting for it)."""

        def found() -> bool:
            fatal = [line for line in self.lines if line["t"] == "fatal"]
            assert not fatal, f"the Node client failed: {fatal}"
            if self.process.returncode is not None:
                raise AssertionError(f"the Node client exited: {''.join(self.stderr)}")
            return any(predicate(line) for line in self.lines[after:])

        await until(found, within, what)
        return next(line for line in self.lines[after:] if predicate(line))

    async def connection(self, after: int = 0, within: float = 10) -> Line:
        """The first ``connect`` or ``connect_error`` line from ``after`` on."""
        return await self.wait(
            lambda line: line["t"] in ("connect", "connect_error"), "connect", after, within
        )

    async def disconnection(self, after: int = 0, within: float = 10) -> Line:
        return await self.wait(lambda line: line["t"] == "disconnect", "disconnect", after, within)

    async def call(self, event: str, *args: Any) -> Any:
        """Emit ``event`` with ``args`` and an acknowledgement callback: its first argument."""
        ref = next(self._refs)
        await self.command("emit " + json.dumps({"event": event, "args": list(args), "ref": ref}))
        ack = await self.wait(
            lambda line: line["t"] == "ack" and line["ref"] == ref, f"{event} ack"
        )
        assert "error" not in ack, f"{event}: no acknowledgement: {ack['error']}"
        return ack["args"][0]

    async def state(self) -> Line:
        mark = self.mark()
        await self.command("state")
        return await self.wait(lambda line: line["t"] == "state", "state", mark)

    def events(self, name: str, after: int = 0, until_: int | None = None) -> list[list[Any]]:
        """The arguments (offset included) of each ``name`` event in ``lines[after:until_]``."""
        return [
            line["args"]
            for line in self.lines[after:until_]
            if line["t"] == "event" and line["name"] == name
        ]

    async def event(self, name: str, args: list[Any], after: int = 0) -> int:
        """Wait for the event ``name`` with ``args``: its index in ``lines``."""
        await self.wait(
            lambda line: line["t"] == "event" and line["name"] == name and line["args"] == args,
            f"{name} {args}",
            after,
        )
        return next(
            i
            for i, line in enumerate(self.lines)
            if i >= after and line["t"] == "event" and line["name"] == name and line["args"] == args
        )

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(json.loads(raw))

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.stderr.append(raw.decode(errors="replace"))


@contextlib.asynccontextmanager
async def node_sio(url: str, **options: Any) -> AsyncIterator[NodeSio]:
    """A Node ``socket.io-client`` for ``url`` with ``io()`` ``options`` (it connects at once
    unless ``autoConnect=False``); its process is ended on the way out."""
    node = shutil.which("node")
    if node is None or not CLIENT_PACKAGE.exists():
        pytest.fail("these tests need Node.js and node_modules: run scripts/setup --dev")
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        url,
        json.dumps(options),
        cwd=PROJECT_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = NodeSio(process)
    readers = [asyncio.create_task(client._read()), asyncio.create_task(client._read_errors())]
    try:
        yield client
    finally:
        with contextlib.suppress(ConnectionError):
            await client.command("exit")
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, 5)
