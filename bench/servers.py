"""The servers under test: broadcast (hypercorn) and the Node reference peer.

Each benchmark run gets a fresh server process pinned to its own core, so no run inherits
another's memory or queues, and every start is also a cold-start measurement: the time from
spawning the process to the first successful HTTP answer.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Lines of a server log worth reporting: errors, tracebacks, warnings, and broadcast's own
# slow-consumer closes (logged at INFO); other INFO lines (hypercorn's "hypercorn.error" logger
# announces the bind at INFO) are not.
NOTABLE = re.compile(r"Traceback|ERROR|CRITICAL|WARNING|Error|Exception|closing an SSE stream")
ROUTINE = re.compile(r"\bINFO\b|\[INFO\]|\bDEBUG\b")
SPECIAL_INFO = "closing an SSE stream"


def notable(line: str) -> bool:
    if not NOTABLE.search(line):
        return False
    return SPECIAL_INFO in line or not ROUTINE.search(line)


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_ok(port: int, path: str, timeout: float = 0.5) -> bool:
    """True if GET ``path`` answers 2xx (a blocking, one-shot HTTP/1.0 request)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2"))


@dataclass
class ServerSpec:
    """How to start one kind of server."""

    name: str  # "ours" | "node"
    label: str
    argv: list[str]  # {port} is replaced
    env: dict[str, str]
    cwd: Path
    ready_path: str  # the first successful GET of this path ends the cold start
    stats_path: str = "/stats"


@dataclass
class ServerProcess:
    """One running server: its PID is the process that serves (no master/worker split)."""

    spec: ServerSpec
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    cold_start_ms: float | None = None
    children: list[int] = field(default_factory=list)
    _log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, within: float = 60.0) -> None:
        """Spawn, then poll until the server answers; raise with the log's tail otherwise."""
        argv = [a.replace("{port}", str(self.port)) for a in self.spec.argv]
        env = {**self.spec.env, "PORT": str(self.port)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        t0 = time.perf_counter()
        # Own session: stop() signals this server's process group only.
        self.proc = subprocess.Popen(
            argv,
            cwd=self.spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = t0 + within
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} server exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if http_ok(self.port, self.spec.ready_path):
                self.cold_start_ms = round((time.perf_counter() - t0) * 1000, 1)
                break
            time.sleep(0.005)
        else:
            self.stop()
            raise RuntimeError(
                f"{self.spec.name} server not ready within {within}s:\n{self.tail()}"
            )
        # The measured PID must be the one that serves: it must not have forked workers.
        self.children = child_pids(self.pid)
        if self.children:
            log(f"WARNING: {self.spec.name} server {self.pid} has children {self.children}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def tracebacks(self) -> int:
        """Tracebacks in the log (``Exception in callback`` heads one the event loop logged)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count("Traceback (most recent call last)")

    def notable_log_lines(self, limit: int = 8) -> dict[str, Any]:
        """Errors and warnings the server logged: a count and the first distinct lines."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {"count": 0, "samples": []}
        hits = [line.strip() for line in lines if notable(line)]
        samples: list[str] = []
        for line in hits:
            # Timestamps and ids differ from line to line; compare without digits.
            key = re.sub(r"\d+", "#", line)
            if key not in {re.sub(r"\d+", "#", s) for s in samples}:
                samples.append(line[:300])
            if len(samples) >= limit:
                break
        return {"count": len(hits), "samples": samples}


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def ours_spec(
    core: int, token: str, backlog: int, worker_class: str, extra_env: dict[str, str] | None = None
) -> ServerSpec:
    """broadcast as ``scripts/run`` serves it, in one process (``--workers 0``: hypercorn runs
    the app in the process it was started as, so the PID we measure is the one serving), with
    ``extra_env`` (``--server-env``) on top."""
    env = dict(os.environ)
    env.update(
        {
            "BROADCAST_PUBLISH_TOKEN": token,
            # The per-token publish limit (200/s by default) would answer 429 to a back-to-back
            # fanout; the benchmark measures fan-out, not the limiter.
            "BROADCAST_PUBLISH_RATE_PER_SECOND": "1000000",
            "BROADCAST_PUBLISH_BURST": "1000000",
            "PYTHONUNBUFFERED": "1",
            # As scripts/run and `broadcast serve` do (memory returns after a peak).
            "PYTHONMALLOC": os.environ.get("PYTHONMALLOC", "malloc"),
        }
    )
    env.update(extra_env or {})
    argv = [
        "taskset",
        "-c",
        str(core),
        str(VENV_BIN / "hypercorn"),
        "broadcast.app:app",
        "--bind",
        "127.0.0.1:{port}",
        "--workers",
        "0",
        # The Node peer listens with a backlog of 1024; hypercorn's default is 100, which would
        # drop SYNs in a connect storm and add 1 s retransmits to our figures.
        "--backlog",
        str(backlog),
        "--worker-class",
        worker_class,
    ]
    return ServerSpec("ours", "broadcast (hypercorn)", argv, env, ROOT, "/healthz")


def serve_spec(ours: ServerSpec) -> ServerSpec:
    """``ours`` run as ``broadcast serve`` (one process, its prompt shutdown) rather than plain
    hypercorn; the same core and environment (``PYTHONMALLOC`` is set, so it does not
    re-execute itself and the PID stays the one serving)."""
    taskset = ours.argv[:3]
    argv = [*taskset, str(VENV_BIN / "broadcast"), "serve", "--host", "127.0.0.1", "--port"]
    return ServerSpec("ours", "broadcast serve", [*argv, "{port}"], ours.env, ours.cwd, "/healthz")


def node_spec(core: int, peer_dir: Path) -> ServerSpec:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env["HOST"] = "127.0.0.1"
    argv = ["taskset", "-c", str(core), "node", "peer-node/server.js"]
    return ServerSpec("node", "Node peer (socket.io 4)", argv, env, peer_dir, "/")


PEER_FILES = ("package.json", "package-lock.json")
PEER_DIR = "peer-node"


def peer_sources(shared: Path) -> list[Path]:
    """The files the peer's copy is made from, in a fixed order: package.json,
    package-lock.json and every file under peer-node/ (a node_modules there is not the kit's)."""
    tree = sorted(
        path
        for path in (shared / PEER_DIR).rglob("*")
        if path.is_file() and "node_modules" not in path.relative_to(shared).parts
    )
    return [shared / name for name in PEER_FILES] + tree


def peer_key(shared: Path) -> str:
    """A digest of every file the peer's copy is made from, names and contents: the copy is
    reinstalled when any of them changes (a new server.js as much as a new lock file)."""
    digest = hashlib.sha256()
    for path in peer_sources(shared):
        data = path.read_bytes()
        name = path.relative_to(shared).as_posix().encode()
        # Lengths first, so that no two different sets of files hash the same bytes.
        digest.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def peer_cache_dir(shared: Path) -> Path:
    """Where the copy of this kit's peer is installed: one directory per ``peer_key``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "broadcast-bench" / f"peer-{peer_key(shared)}"


def copy_peer(shared: Path, dest: Path) -> None:
    """Copy exactly the files ``peer_key`` digests into ``dest``."""
    for path in peer_sources(shared):
        target = dest / path.relative_to(shared)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def prepare_peer(shared: Path, explicit: Path | None) -> Path:
    """A directory with peer-node/server.js and its node_modules.

    shared/ is read-only, so it is copied once into a cache directory keyed by the contents of
    the files copied (``peer_key``) and installed there with ``npm ci``; later runs reuse it.
    """
    if explicit is not None:
        if not (explicit / "peer-node" / "server.js").is_file():
            raise RuntimeError(f"{explicit}/peer-node/server.js not found")
        if not (explicit / "node_modules" / "socket.io").is_dir():
            raise RuntimeError(f"{explicit} has no node_modules/socket.io: run npm ci there")
        return explicit
    lock = shared / "package-lock.json"
    if not lock.is_file():
        raise RuntimeError(f"{lock} not found (pass --shared or --peer-dir)")
    if not (shared / PEER_DIR / "server.js").is_file():
        raise RuntimeError(f"{shared}/{PEER_DIR}/server.js not found (pass --shared or --peer-dir)")
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the reference peer (or pass --no-node)")
    dest = peer_cache_dir(shared)
    if (dest / "node_modules" / "socket.io").is_dir():
        return dest
    log(f"installing the Node peer into {dest} (npm ci)")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy_peer(shared, tmp)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=tmp,
        check=True,
        stdout=sys.stderr,
        timeout=600,
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
