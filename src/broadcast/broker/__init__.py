"""Pub/sub: a backend chosen by URL scheme, and the in-process hub."""

from __future__ import annotations

from urllib.parse import urlsplit

from broadcast.broker.base import Backend, BrokerUnavailable, History, PresenceBackend
from broadcast.broker.core import Broker
from broadcast.broker.hub import Hub, Overflow, Subscriber, SubscriberClosed
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
