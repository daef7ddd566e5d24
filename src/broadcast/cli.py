"""The ``broadcast`` command.

``broadcast serve`` runs hypercorn with this app (this is the only module that imports
hypercorn); ``broadcast publish`` publishes one event over HTTP, for scripts (standard library
only, so it works wherever the package is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.run import run

from broadcast.settings import ConfigError, load_settings

ALLOCATOR = "malloc"
"""The allocator ``broadcast serve`` runs the server with, unless ``PYTHONMALLOC`` says
otherwise: with glibc's, memory a peak of connections used goes back to the system once they
leave; CPython's own keeps most of it (``memory_return.py``)."""


def _with_allocator() -> None:
    """Run this command again in a new interpreter with ``PYTHONMALLOC=malloc``, unless the
    environment already chose one (the allocator is picked when Python starts)."""
    if "PYTHONMALLOC" in os.environ:
        return
    env = {**os.environ, "PYTHONMALLOC": ALLOCATOR}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _serve(args: argparse.Namespace) -> int:
    try:
        load_settings()  # fail fast, in this process, before hypercorn starts any worker
    except ConfigError as exc:
        print(f"broadcast: {exc}", file=sys.stderr)
        return 2
    _with_allocator()
    config = Config()
    config.application_path = "broadcast.app:app"
    config.bind = args.bind or [f"{args.host}:{args.port}"]
    config.workers = args.workers
    config.accesslog = "-" if args.access_log else None
    config.errorlog = "-"
    if args.workers > 1:
        # Several processes: hypercorn's own supervisor (each worker waits out its graceful
        # timeout on SIGTERM).
        return run(config)
    _run_event_loop(_serve_one_process(config))
    return 0


def _run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=_listening_loop_class()) as runner:
        runner.run(main)


class _RecordsListeners:
    """The one place that leans on how hypercorn stops (``worker_serve``, hypercorn 0.18): it
    opens each listener with ``asyncio.start_server``, i.e. ``loop.create_server`` on the running
    loop; once the shutdown trigger returns it marks the worker terminated (which closes idle
    keep-alive connections at once), closes its listeners (new connections are refused), then
    waits up to its graceful timeout for the connections still open, and cancels them.

    So the app must close its connections only *after* that: earlier, clients that reconnect at
    once would come straight back to this node, over a new connection or an idle keep-alive one,
    instead of another node. This event loop keeps the servers it creates, so that
    ``_serve_one_process`` can see hypercorn close them and only then drain the app. It checks at
    startup that hypercorn's listeners were seen here; when they were not, or hypercorn does not
    close them, it drains anyway (clients may then come back here during the drain)."""

    listeners: list[asyncio.AbstractServer]

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        server: asyncio.AbstractServer = await cast(Any, super()).create_server(*args, **kwargs)
        if not hasattr(self, "listeners"):
            self.listeners = []
        self.listeners.append(server)
        return server


def _listening_loop_class() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop  # the faster event loop, when installed
    except ImportError:

        class AsyncioLoop(_RecordsListeners, asyncio.SelectorEventLoop):
            pass

        return AsyncioLoop

    class Uvloop(_RecordsListeners, uvloop.Loop):  # type: ignore[misc]  # uvloop's stubs
        pass

    return Uvloop


LISTENERS_CLOSE_WITHIN = 100
"""Turns of the event loop hypercorn gets to close its listeners once the trigger returns (it
takes a handful)."""


async def _serve_one_process(config: Config) -> None:
    """hypercorn in this process, with a prompt shutdown. On SIGTERM or Ctrl-C: new streams and
    Socket.IO sessions are refused (503), hypercorn stops listening (new connections are refused,
    so reconnecting clients go elsewhere) and closes idle keep-alive connections, then the app
    closes its connections (SSE streams end with a retry hint, Socket.IO transports close so
    clients reconnect; most of them from under the app, ``drain.py``) and stops, and the process
    exits without waiting for hypercorn's graceful timeout."""
    from broadcast.app import app

    log = logging.getLogger("broadcast")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    draining: list[asyncio.Task[None]] = []

    async def drain_once_not_listening(
        listeners: list[asyncio.AbstractServer], signalled: float
    ) -> None:
        for _ in range(LISTENERS_CLOSE_WITHIN):
            if not any(server.is_serving() for server in listeners):
                break
            await asyncio.sleep(0)
        else:
            log.warning("hypercorn did not close its listeners: closing them before draining")
            for server in listeners:
                server.close()
        try:
            await app.state.drain(config.graceful_timeout)
        except Exception:
            log.exception("draining failed; hypercorn closes what is left")
            return
        # Every connection is closed or ended from under the app, and the app has stopped
        # (with Redis, this node's share of the count is gone). The connections ended from
        # under it never return, so hypercorn would wait for them: exit now (the kernel closes
        # their sockets), and skip tearing down the objects of thousands of connections.
        log.info("drained in %.0f ms; exiting", (loop.time() - signalled) * 1000)
        exit_now()

    async def shutdown_trigger() -> None:
        # hypercorn calls this once its listeners are open.
        listeners = list(getattr(loop, "listeners", []))
        if not listeners or not all(server.is_serving() for server in listeners):
            log.warning(
                "cannot see hypercorn's listeners: on shutdown, clients that reconnect during "
                "the drain may come back to this node"
            )
            listeners = []
        await stop.wait()
        signalled = loop.time()
        log.info("shutting down: no longer accepting connections; closing those open")
        app.gate.draining = True
        # The process is about to exit: a full collection over thousands of connections now
        # (0.6 s and more) would only hold the drain up.
        gc.disable()
        draining.append(asyncio.create_task(drain_once_not_listening(listeners, signalled)))

    await serve(app, config, shutdown_trigger=shutdown_trigger)
    if draining:
        # The drain failed, and hypercorn closed what was left and shut the lifespan down.
        # What is left is tearing down the objects of thousands of connections one by one
        # (their tasks cancelled, then the interpreter freeing everything): skip it.
        exit_now()


def exit_now() -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _publish(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("BROADCAST_PUBLISH_TOKEN", "").split(",")[0].strip()
    if not token:
        return _fail("no token: pass --token or set BROADCAST_PUBLISH_TOKEN")
    raw = sys.stdin.read() if args.data == "-" else args.data
    try:
        data: Any = None if raw is None else json.loads(raw)
    except json.JSONDecodeError as exc:
        return _fail(f"DATA is not valid JSON ({exc}); quote a string as JSON, e.g. '\"hello\"'")
    fields: dict[str, Any] = {"event": args.event, "data": data}
    if args.channel is not None:
        fields["channel"] = args.channel  # the server checks the name, and says what is wrong
    body = json.dumps(fields).encode()
    request = urllib.request.Request(
        args.url.rstrip("/") + "/publish",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            print(json.load(response)["id"])
            return 0
    except urllib.error.HTTPError as exc:
        return _fail(f"the server refused the event: {exc.code} {_detail(exc)}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return _fail(f"could not reach {args.url}: {reason}")


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        body = json.load(error)
    except ValueError:
        return error.reason
    detail = body.get("detail", error.reason) if isinstance(body, dict) else error.reason
    extra = body.get("extra") if isinstance(body, dict) else None
    if isinstance(extra, list):
        detail += "".join(f"; {item.get('message')}" for item in extra if isinstance(item, dict))
    return str(detail)


def _fail(message: str) -> int:
    print(f"broadcast: {message}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broadcast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the app with hypercorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--bind",
        action="append",
        metavar="ADDRESS",
        help="hypercorn bind address instead of --host/--port (HOST:PORT, unix:PATH, fd://N); "
        "may be repeated",
    )
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)

    publish = commands.add_parser(
        "publish",
        help="publish one event to every client, or to one channel",
        description="Publish EVENT with DATA (JSON; '-' reads it from standard input) to every "
        "client, or with --channel to that channel's subscribers, and print the event's id.",
    )
    publish.add_argument("event", metavar="EVENT")
    publish.add_argument("data", metavar="DATA", nargs="?", help="JSON (default: null)")
    publish.add_argument(
        "--channel",
        metavar="NAME",
        help="publish to this channel's subscribers only (default: every client); a scoped "
        "token must name it",
    )
    publish.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    publish.add_argument(
        "--token", help="bearer token (default: the first of $BROADCAST_PUBLISH_TOKEN)"
    )
    publish.add_argument("--timeout", type=float, default=10.0, help="seconds")
    publish.set_defaults(handler=_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_code: int = args.handler(args)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
