"""Wire-level clients for the load generator: bare asyncio protocols, one small object per
connection, no client library and no stream layers between the socket and the parser.

- ``WsClient`` (``ws.py``): Socket.IO (Engine.IO v4 / Socket.IO v5) over RFC 6455 WebSocket:
  the HTTP/1.1 Upgrade handshake with the Sec-WebSocket-Accept check, masked client frames
  (fresh key per frame), 16/64-bit lengths, fragments, WebSocket ping/pong, Engine.IO ping
  ``2`` -> pong ``3``.
- ``SseClient`` (``sse.py``): Server-Sent Events over HTTP/1.1, chunked or plain body, ``\\n`` /
  ``\\r\\n`` line endings, comments, ``retry:`` and ``id:`` fields, frames split across reads.
- ``Client`` (``client.py``): what both share: connect, close, the ``user count`` they hold.
- ``HttpConnection`` (``httpclient.py``): a minimal keep-alive HTTP/1.1 client for ``/publish``
  and ``/stats``.
- ``frames.py``: the clock, the client states, and the fast-path matchers of the frames that
  come by the million.

Two frames come by the million and are recognised on fast paths that decode nothing but their
numbers: the ``user count`` frame of a storm, and the fanout event (``{"seq": i, "t": ms}``,
matched by one precompiled regular expression: ``fan_patterns``). Everything else, and anything
not exactly in the expected shape, goes through a general parser. What to do with a count, an
event, an open or a drop is the run's business (``bench.loadgen.tracking.Tracker``, which
``bench.loadgen.Run`` extends).

Every frame of one read arrived at the same moment: the receipt time (``epoch_ms``) is taken
once per ``data_received`` and passed down, not once per frame.
"""

from bench.wire.client import Client
from bench.wire.frames import (
    S_CLOSED,
    S_CONNECTING,
    S_OPEN,
    S_QUEUED,
    epoch_ms,
    fan_patterns,
    now,
)
from bench.wire.httpclient import HttpConnection
from bench.wire.sse import SseClient
from bench.wire.ws import WsClient

__all__ = [
    "S_CLOSED",
    "S_CONNECTING",
    "S_OPEN",
    "S_QUEUED",
    "Client",
    "HttpConnection",
    "SseClient",
    "WsClient",
    "epoch_ms",
    "fan_patterns",
    "now",
]
