"""The machine's floor for a fan-out: the CPU one bare ``write()`` of a small event to a
loopback socket costs here, measured in the same run as the servers.

Every delivery of ``ch-fanout`` is at least one such write, whichever server makes it, and on
loopback the writer's system call also runs the receiver's TCP input and wakes its reader on
the other core. What that costs varies several-fold between the virtual machines this
benchmark runs on (docs/performance-log.md, "Channels, fifth pass"), so a latency target at a
fixed publish rate is met or missed by the machine as much as by the server. This figure says
which: ``share`` is the part of the server's core that the bare writes of the paced case take
before any server work at all.

``python -m bench.floor --writer-core 0 --reader-core 1`` prints the figures as JSON; the
reader (``--read``) is this module too, started by the writer on the other core.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = b"data: " + b"x" * 56 + b"\n\n"  # the size of a small SSE event or Socket.IO frame


def share(rate: float, per_event: int, us_per_write: float) -> float:
    """The part of one core (1.0 = all of it) that ``rate`` events/s to ``per_event``
    subscribers each take in bare writes of ``us_per_write`` µs."""
    return rate * per_event * us_per_write / 1e6


def read(port: int, n: int, core: int) -> None:
    """The reader: ``n`` connections read until each closes, as a load generator would."""
    os.sched_setaffinity(0, {core})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    poll = select.epoll()
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        poll.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    print("ready", flush=True)
    while by_fd:
        for fd, _ in poll.poll():
            try:
                data = by_fd[fd].recv(65536)
            except BlockingIOError:
                continue
            if not data:
                poll.unregister(fd)
                by_fd.pop(fd).close()


def measure(
    writer_core: int, reader_core: int, clients: int, per_event: int, rate: float, seconds: float
) -> dict[str, Any]:
    """CPU per write, paced (``rate`` events/s, each to the next ``per_event`` sockets, the
    reader idle in between, so an event's writes wake it) and back to back (the same writes
    with no pause: the reader mostly still awake)."""
    os.sched_setaffinity(0, {writer_core})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(min(clients, 4096))
    listener.settimeout(30)  # a reader that failed to connect them all: fail, do not hang
    port = listener.getsockname()[1]
    reader = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", "--read", str(port), str(clients), str(reader_core)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    conns: list[socket.socket] = []
    try:
        conns += (listener.accept()[0] for _ in range(clients))
        listener.close()
        for c in conns:
            c.setblocking(True)  # the listener's timeout is not for them: plain blocking writes
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError("the reader did not start")
        fds = [c.fileno() for c in conns]
        events = max(1, int(rate * seconds))
        out: dict[str, Any] = {"clients": clients, "per_event": per_event, "rate": rate}
        for mode in ("paced", "back_to_back"):
            interval = 1 / rate if mode == "paced" else 0.0
            writes = 0
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(events):
                if interval:
                    wait = start + i * interval - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                first = (i * per_event) % clients
                for fd in fds[first : first + per_event]:
                    os.write(fd, MESSAGE)
                    writes += 1
            used = time.process_time() - cpu
            out[f"{mode}_us_per_write"] = round(used / writes * 1e6, 2)
            out[f"{mode}_writes"] = writes
        out["paced_share"] = round(share(rate, per_event, out["paced_us_per_write"]), 3)
        return out
    finally:
        for c in conns:
            c.close()
        listener.close()
        try:
            reader.wait(timeout=30)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait()


def run(writer_core: int, reader_core: int, clients: int, per_event: int, rate: float) -> Any:
    """``measure`` in its own process (pinned to the server's core), or why it failed."""
    cmd = [
        sys.executable, "-m", "bench.floor", "--writer-core", str(writer_core),
        "--reader-core", str(reader_core), "--clients", str(clients),
        "--per-event", str(per_event), "--rate", str(rate),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
        )
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    p.add_argument(
        "--read", nargs=3, type=int, metavar=("PORT", "N", "CORE"), help=argparse.SUPPRESS
    )
    p.add_argument("--writer-core", type=int, default=0)
    p.add_argument("--reader-core", type=int, default=1)
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--per-event", type=int, default=100)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=2.0)
    a = p.parse_args(argv)
    if a.read:
        read(*a.read)
        return 0
    result = measure(a.writer_core, a.reader_core, a.clients, a.per_event, a.rate, a.seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
