"""Pub/sub: a backend chosen by URL scheme, and the in-process hub."""

from __future__ import annotations

from urllib.parse import urlsplit

from broadcast.broker.base import Backend, BrokerUnavailable, History, PresenceBackend
from broadcast.broker.core import Broker
from broadcast.broker.hub import Hub, Overflow, Subscriber, SubscriberClosed
from broadcast.recovery import MemorySessions, SessionStore
from broadcast.settings import Settings

__all__ = [
    "Backend",
    "Broker",
    "BrokerUnavailable",
    "History",
    "Hub",
    "Overflow",
    "PresenceBackend",
    "Subscriber",
    "SubscriberClosed",
    "create_backends",
    "create_session_store",
]


def create_backends(settings: Settings) -> tuple[Backend, PresenceBackend]:
    """The event and presence backends for ``settings.broker_url``, chosen by its scheme;
    imported lazily so only the Redis backend imports redis."""
    url = settings.broker_url
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from broadcast.broker.memory import MemoryBackend, MemoryPresence

        return (
            MemoryBackend(settings.history_size, settings.history_seconds, settings.history_bytes),
            MemoryPresence(),
        )
    if scheme in ("redis", "rediss", "unix"):
        from broadcast.broker.redis import RedisBackend
        from broadcast.broker.redis_presence import RedisPresence

        reconnect = settings.redis_reconnect_max_seconds
        presence = RedisPresence(
            url, settings.presence_ttl_seconds, settings.presence_heartbeat_seconds, reconnect
        )
        backend = RedisBackend(
            url,
            reconnect,
            settings.history_size,
            settings.history_seconds,
            settings.history_bytes,
        )
        return backend, presence
    raise ValueError(f"unsupported broker URL {url!r}")


def create_session_store(settings: Settings) -> SessionStore:
    """Where Socket.IO recovery sessions wait (``recovery.py``), for ``settings.broker_url``:
    in this process for ``memory://``, in Redis (any node can take them) otherwise."""
    url = settings.broker_url
    window_ms = settings.socketio_recovery_max_disconnection_ms
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemorySessions(window_ms / 1000)
    if scheme in ("redis", "rediss", "unix"):
        from broadcast.broker.redis_sessions import RedisSessions

        return RedisSessions(url, window_ms, settings.redis_reconnect_max_seconds)
    raise ValueError(f"unsupported broker URL {url!r}")
