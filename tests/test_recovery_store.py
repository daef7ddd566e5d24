"""The Socket.IO recovery session stores: ``KeptSession``'s encoding, the in-process store, and
the Redis store against a real redis-server (another node takes what one kept; single use;
expiry; an outage; a drain's batch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from broadcast.broker import create_session_store
from broadcast.broker.redis_sessions import KEY_PREFIX, RedisSessions
from broadcast.channels import Grant
from broadcast.metrics import RECOVERY_RESULTS, Metrics
from broadcast.recovery import PID, VERSION, KeptSession, MemorySessions, new_pid
from broadcast.settings import Settings
from broadcast.supervisor import Supervisor
from tests.support import RedisServer, until


def session(channels: tuple[str, ...] = ("post:1", "news")) -> KeptSession:
    grant = Grant.of(["private:alice", "team:*", "private:bob"])
    return KeptSession.of("sid-" + new_pid()[:8], new_pid(), "alice", grant, channels)


# KeptSession


def test_pids_are_random_and_match_the_pattern() -> None:
    pids = {new_pid() for _ in range(1000)}
    assert len(pids) == 1000
    assert all(PID.fullmatch(pid) for pid in pids)
    assert not PID.fullmatch("short")
    assert not PID.fullmatch("a" * 21 + "!")


def test_a_session_survives_its_encoding() -> None:
    kept = session()
    back = KeptSession.decode(kept.pid, kept.encode())
    assert back == kept
    assert back.grant() == Grant.of(["private:alice", "team:*", "private:bob"])
    assert back.grant().allows("team:red")
    assert not back.grant().allows("private:carol")

    anonymous = KeptSession.of("s1", new_pid(), None, Grant.NONE, ())
    back = KeptSession.decode(anonymous.pid, anonymous.encode())
    assert back == anonymous
    assert back.grant() is Grant.NONE
    assert b'"v":1' in anonymous.encode(), "versioned"
    assert anonymous.pid.encode() not in anonymous.encode(), "the pid is the key, not the value"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe not json",
        b"null",
        b"[1, 2]",
        b'"text"',
        b"{}",
        b'{"v": 2, "sid": "s", "user": null, "grant": [], "channels": []}',
        b'{"v": "1", "sid": "s", "user": null, "grant": [], "channels": []}',
        b'{"sid": "s", "user": null, "grant": [], "channels": []}',
        b'{"v": 1, "sid": 5, "user": null, "grant": [], "channels": []}',
        b'{"v": 1, "sid": "", "user": null, "grant": [], "channels": []}',
        b'{"v": 1, "sid": "s", "user": 7, "grant": [], "channels": []}',
        b'{"v": 1, "sid": "s", "user": null, "grant": "a", "channels": []}',
        b'{"v": 1, "sid": "s", "user": null, "grant": [1], "channels": []}',
        b'{"v": 1, "sid": "s", "user": null, "grant": [], "channels": {"a": 1}}',
        b'{"v": 1, "sid": "s", "user": null, "grant": []}',
    ],
)
def test_anything_else_decodes_to_none(raw: bytes) -> None:
    assert KeptSession.decode(new_pid(), raw) is None


def test_the_version_is_written() -> None:
    raw = b'{"v": %d, "sid": "s", "user": null, "grant": [], "channels": ["a"]}' % VERSION
    assert KeptSession.decode("p" * 22, raw) == KeptSession("s", "p" * 22, None, (), ("a",))


# MemorySessions


async def test_memory_sessions_are_taken_once() -> None:
    store = MemorySessions(60)
    kept = session()
    store.keep(kept)
    assert store.kept == 1
    assert await store.take(new_pid()) is None
    assert await store.take(kept.pid) == kept
    assert store.kept == 0
    assert await store.take(kept.pid) is None, "single use"
    assert await store.flush(1) == 0
    await store.stop()


async def test_memory_sessions_expire_at_the_end_of_the_window() -> None:
    window = 0.3
    store = MemorySessions(window)
    kept = session()
    started = time.monotonic()
    store.keep(kept)
    await until(lambda: store.kept == 0, 5, "the session to expire")
    elapsed = time.monotonic() - started
    assert window <= elapsed < window + 0.5, elapsed  # never early; late only by the loop
    assert await store.take(kept.pid) is None

    # Taken in time: its timer is cancelled, and keeping it again starts a new window.
    again = session()
    store.keep(again)
    assert await store.take(again.pid) == again
    store.keep(again)
    store.keep(again)
    assert store.kept == 1
    await store.stop()
    assert store.kept == 0


def test_the_broker_url_chooses_the_store() -> None:
    memory = create_session_store(Settings(socketio_recovery_max_disconnection_ms=5000))
    assert isinstance(memory, MemorySessions)
    redis_store = create_session_store(Settings(broker_url="redis://127.0.0.1:1/0"))
    assert isinstance(redis_store, RedisSessions)


def test_the_window_is_validated() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1000"):
        Settings(socketio_recovery_max_disconnection_ms=999)
    with pytest.raises(ValueError, match="less than or equal to 3600000"):
        Settings(socketio_recovery_max_disconnection_ms=3_600_001)
    assert Settings().socketio_recovery is False
    assert Settings().socketio_recovery_max_disconnection_ms == 120_000


def test_the_recovery_metrics() -> None:
    metrics = Metrics()
    store = MemorySessions(60)
    metrics.watch_recovery(lambda: store.kept)
    metrics.recoveries.labels("recovered").inc()
    text = metrics.exposition().decode()
    for result in RECOVERY_RESULTS:  # every result exposed from the start
        value = 1.0 if result == "recovered" else 0.0
        assert f'broadcast_socketio_recoveries_total{{result="{result}"}} {value}' in text
    assert "broadcast_socketio_recovery_sessions 0.0" in text


# RedisSessions

MakeStore = Callable[..., Awaitable[RedisSessions]]


@pytest.fixture
async def make_store() -> AsyncIterator[Callable[..., Awaitable[RedisSessions]]]:
    """Stores (one per "node"), each with its own supervisor, stopped at the end."""
    made: list[tuple[RedisSessions, Supervisor]] = []

    async def make(url: str, window_ms: int = 60_000) -> RedisSessions:
        store = RedisSessions(url, window_ms, reconnect_max_seconds=0.2)
        supervisor = Supervisor()
        await store.start(supervisor)
        made.append((store, supervisor))
        return store

    yield make
    for store, supervisor in made:
        await store.stop()
        await supervisor.stop()


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis.url)
    yield connection
    await connection.aclose()


async def test_another_node_takes_what_one_kept_once(
    redis: RedisServer, make_store: MakeStore, client: aioredis.Redis
) -> None:
    one, two = await make_store(redis.url), await make_store(redis.url)
    kept = session()
    one.keep(kept)
    assert one.kept == 1
    assert await one.flush(2) == 0
    assert await client.exists(KEY_PREFIX + kept.pid) == 1
    ttl = await client.pttl(KEY_PREFIX + kept.pid)
    assert 59_000 < ttl <= 60_000, ttl

    assert await two.take(new_pid()) is None
    assert await two.take(kept.pid) == kept
    assert await client.exists(KEY_PREFIX + kept.pid) == 0
    assert await two.take(kept.pid) is None, "single use"
    assert await one.take(kept.pid) is None, "single use, on every node"


async def test_a_session_not_yet_written_is_taken_from_memory(
    redis: RedisServer, make_store: MakeStore, client: aioredis.Redis
) -> None:
    store = await make_store(redis.url)
    kept = session()
    store.keep(kept)  # no await since: the writer has not run
    assert await store.take(kept.pid) == kept
    assert await store.flush(2) == 0
    assert await client.exists(KEY_PREFIX + kept.pid) == 0, "taken before written: never written"
    assert await store.take(kept.pid) is None
    assert store.kept == 0


async def test_a_session_being_written_is_taken_once_written(
    redis: RedisServer, make_store: MakeStore, client: aioredis.Redis
) -> None:
    store = await make_store(redis.url)
    sessions = [session() for _ in range(3000)]
    for kept in sessions:
        store.keep(kept)
    # Let the writer take its first batch, then ask for a pid in it while it is in flight: poll
    # at every turn of the loop (a batch is in flight for milliseconds only).
    deadline = time.monotonic() + 5
    while not store._writing:
        assert time.monotonic() < deadline, "no batch ever in flight"
        await asyncio.sleep(0)
    first = next(kept for kept in sessions if kept.pid in store._writing)
    assert await store.take(first.pid) == first
    assert await client.exists(KEY_PREFIX + first.pid) == 0
    assert await store.flush(2) == 0
    assert await store.take(first.pid) is None


async def test_a_session_expires_with_its_window(
    redis: RedisServer, make_store: MakeStore, client: aioredis.Redis
) -> None:
    one, two = await make_store(redis.url, window_ms=300), await make_store(redis.url)
    kept = session()
    one.keep(kept)
    assert await one.flush(2) == 0
    assert 0 < await client.pttl(KEY_PREFIX + kept.pid) <= 300
    deadline = time.monotonic() + 5
    while await client.exists(KEY_PREFIX + kept.pid):
        assert time.monotonic() < deadline, "the key never expired"
        await asyncio.sleep(0.01)
    assert await two.take(kept.pid) is None
    await until(lambda: one.kept == 0, 1, "the gauge to drop it")


async def test_junk_under_a_session_key_is_no_session(
    redis: RedisServer, make_store: MakeStore, client: aioredis.Redis
) -> None:
    store = await make_store(redis.url)
    pid = new_pid()
    await client.set(KEY_PREFIX + pid, b"\x00garbage")
    assert await store.take(pid) is None
    assert await client.exists(KEY_PREFIX + pid) == 0, "taken (and dropped) all the same"


async def test_an_outage_is_never_fatal(own_redis: RedisServer, make_store: MakeStore) -> None:
    one, two = await make_store(own_redis.url), await make_store(own_redis.url)
    before = session()
    one.keep(before)
    assert await one.flush(2) == 0

    own_redis.stop()
    assert await two.take(before.pid) is None, "unavailable: no session"
    during = session()
    one.keep(during)  # does not raise; dropped when the write fails
    assert await one.flush(5) == 0
    assert await one.take(during.pid) is None

    own_redis.start()  # empty: what was kept before is gone with it
    after = session()
    one.keep(after)
    assert await one.flush(5) == 0
    assert await two.take(after.pid) == after
    assert await two.take(before.pid) is None


async def test_a_drain_of_5000_is_written_within_a_second(
    redis: RedisServer, make_store: MakeStore, client: aioredis.Redis
) -> None:
    one, two = await make_store(redis.url), await make_store(redis.url)
    sessions = [session() for _ in range(5000)]
    started = time.monotonic()
    for kept in sessions:
        one.keep(kept)
    kept_in = time.monotonic() - started
    assert await one.flush(1.0) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert kept_in < 0.2, f"keep must not wait on redis ({kept_in:.3f} s for 5,000)"
    assert one.kept == 5000
    assert len(await client.keys(KEY_PREFIX + "*")) == 5000
    for kept in (sessions[0], sessions[2500], sessions[-1]):
        assert await two.take(kept.pid) == kept
    assert one.kept == 5000, "taken on another node: still counted here until the window ends"
