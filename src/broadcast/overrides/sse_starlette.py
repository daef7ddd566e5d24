"""sse-starlette, leaned on: one task less per idle SSE stream.

sse-starlette's ``EventSourceResponse.__call__`` runs three tasks per stream besides its ping:
the stream, the disconnect listener, and a listener for uvicorn's exit signal, which never fires
under hypercorn (the app drains its streams itself). ``LeanResponse`` runs the first two, on
sse-starlette's own methods (``_stream_response``, ``_listen_for_disconnect``), and lets the
send watchdog time its writes (one sweep for every stream) instead of its own timer per write
(``_send_with_timeout``). Pinned to sse-starlette 3.7; ``check`` looks at those methods when the
app starts, and without them (or with ``BROADCAST_OVERRIDES=off``) streams run on
``PublicResponse``: sse-starlette's own ``__call__``, only with the watched ``send`` and
``receive``: the same behaviour, a little more memory per stream.
"""

from __future__ import annotations

import inspect
from typing import Any

import anyio
from sse_starlette import EventSourceResponse

from broadcast.overrides.hypercorn import SocketFinder
from broadcast.watchdog import (
    HTTP_GONE,
    ClientTooSlow,
    SendWatchdog,
    WatchedConnection,
)

_HOOKS = {
    "_stream_response": ["self", "send"],
    "_listen_for_disconnect": ["self", "receive"],
    "_send_with_timeout": ["self", "send", "message"],
}


def check() -> str | None:
    """Why ``LeanResponse`` cannot work with the sse-starlette installed (``None``: it can)."""
    for name, parameters in _HOOKS.items():
        method = getattr(EventSourceResponse, name, None)
        if not inspect.iscoroutinefunction(method):
            return f"sse-starlette's EventSourceResponse.{name} is gone"
        if list(inspect.signature(method).parameters) != parameters:
            return f"sse-starlette's EventSourceResponse.{name} takes other arguments"
    return None


class WatchedResponse(EventSourceResponse):
    """sse-starlette's response with its connection watched by the send watchdog;
    ``connection`` is set once it runs."""

    def __init__(
        self, watchdog: SendWatchdog, find_socket: SocketFinder, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog
        self._find_socket = find_socket
        self.connection: WatchedConnection | None = None

    def _watch(self, scope: Any, receive: Any, send: Any) -> WatchedConnection:
        connection = self._watchdog.watch(send, receive, HTTP_GONE, self._find_socket(scope))
        self.connection = connection
        return connection


class PublicResponse(WatchedResponse):
    """sse-starlette's own ``__call__``, on the watched connection."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        connection = self._watch(scope, receive, send)
        try:
            await super().__call__(scope, connection.receive, connection.send)
        except* ClientTooSlow:
            pass  # cut off by the watchdog or over its budget; the stream's finally ran
        finally:
            self._watchdog.forget(connection)


class LeanResponse(WatchedResponse):
    """Two tasks per stream, not three, and no timer per write (the module's docstring)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        connection = self._watch(scope, receive, send)
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self._stream_response(connection.send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self._listen_for_disconnect(connection.receive)
                group.cancel_scope.cancel()
        except* ClientTooSlow:
            pass  # cut off by the watchdog or over its budget; the stream's finally ran
        finally:
            self._watchdog.forget(connection)

    async def _send_with_timeout(self, send: Any, message: Any) -> None:
        await send(message)  # the watchdog times it
