"""The channel scenarios the Python load generator runs (``ch-storm`` and ``ch-fanout`` are
the kit's ``loadgen.js --channels K``, see ``bench/runner.py``):

- ``ch-cost``: the server's CPU per publish to a channel of ``--ch-subscribers`` clients, with
  ``--ch-small-others`` other clients connected, then with ``--clients`` others (idle: every
  other one in a channel of its own ten, the rest in none). A publish to a channel should cost
  O(its subscribers), not O(clients): the two figures should be about equal.
- ``ch-memory``: RSS per connection with ``--ch-memory-mode`` ``plain`` (no channel), ``own``
  (each client in a channel of its own) or ``many`` (each in ``--ch-per-client`` channels of its
  own: 100,000 channels over 10,000 clients). Socket.IO clients of ``many`` subscribe after
  connecting, with the ``subscribe`` event and its ack; everyone else at connect
  (``auth.channels``, ``?channel=``). Every client must then hold ``channel count`` 1 for each
  of its channels, and the server's ``/stats`` ``channels`` must say so.

The server's CPU comes from /proc/PID/stat (utime + stime, 10 ms ticks): a burst is made long
enough (``--ch-publishes``) for the tick not to matter, and repeated (``--ch-bursts``; the
median is the figure).
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter
from typing import Any
from urllib.parse import quote

from bench.loadgen.measure import r1, r3, read_proc
from bench.loadgen.session import Run, ScenarioFailed
from bench.loadgen.steps import close_all, connect_phase, kind_for, rss_kb
from bench.wire import Client, HttpConnection, WsClient, now

COST_CHANNEL = "cost:target"
BATCH = 100  # events a POST /publish/batch request


def other_channels(i: int) -> tuple[str, ...]:
    """ch-cost's other client ``i``: every other one in a channel of ten such clients."""
    return (f"cost:other:{i // 20}",) if i % 2 == 0 else ()


def expected_counts(run: Run) -> Counter[str]:
    """Each channel's subscribers among the open clients."""
    counts: Counter[str] = Counter()
    for c in run.open_list:
        counts.update(c.channels)
    return counts


def clients_off(run: Run, expected: Counter[str]) -> int:
    """Open clients whose last ``channel count`` of one of their channels is not its size."""
    off = 0
    for c in run.open_list:
        if not c.channels:
            continue
        got = c.ch_counts or {}
        if any(got.get(ch) != expected[ch] for ch in c.channels):
            off += 1
    return off


async def channels_converge(run: Run, within: float) -> dict[str, Any]:
    """Poll until every open client holds the exact ``channel count`` of each of its channels
    (or ``within`` s have passed): how long it took, and who is off."""
    t0 = now()
    expected = expected_counts(run)
    off = clients_off(run, expected)
    while off and now() - t0 < within:
        await asyncio.sleep(0.1)  # a condition polled with a deadline, not a fixed wait
        off = clients_off(run, expected)
    return {
        "channels": len(expected),
        "subscriptions": sum(expected.values()),
        "clients_off": off,
        "converge_ms": r1((now() - t0) * 1000) if not off else None,
    }


async def server_channels(run: Run, prefix: str) -> tuple[dict[str, int] | None, str]:
    """The server's channels whose names start with ``prefix``, with their counts, and where
    they came from: every page of ``GET /channels`` (broadcast, behind the publish token), else
    ``/stats`` ``channels`` (the Node peer lists all; broadcast its first 1,000 by name)."""
    headers = {"Authorization": f"Bearer {run.o.token}"} if run.o.token else {}
    listed: dict[str, int] = {}
    after: str | None = None
    for _ in range(100_000):  # a bound: 1,000 a page
        query = f"/channels?prefix={quote(prefix)}&limit=1000"
        query += f"&after={quote(after)}" if after else ""
        status, body = await run.http("GET", query, headers=headers, limit_s=30.0)
        try:
            page = json.loads(body) if status == 200 else None
        except ValueError:
            page = None
        if not isinstance(page, dict) or not isinstance(page.get("channels"), list):
            break
        listed.update((c["name"], c["count"]) for c in page["channels"])
        after = page.get("next")
        if not after:
            return listed, "/channels"
    if not run.o.stats_path:
        return None, "none"
    status, body = await run.http("GET", run.o.stats_path, limit_s=30.0)
    try:
        stats = json.loads(body) if status == 200 else None
    except ValueError:
        stats = None
    found = stats.get("channels") if isinstance(stats, dict) else None
    if not isinstance(found, dict):
        return None, "none"
    return {k: v for k, v in found.items() if k.startswith(prefix)}, run.o.stats_path


async def check_server_channels(run: Run, prefix: str, expected: Counter[str]) -> dict[str, Any]:
    """The server's own count of each of ``expected``'s channels (those named ``prefix``...)
    against the clients open: channels with another count, or missing, or extra. From a
    ``/stats`` that lists only some (broadcast caps it), only those listed are checked."""
    listed, source = await server_channels(run, prefix)
    if listed is None:
        return {"source": source}
    complete = source == "/channels" or len(listed) >= len(expected)
    names = expected if complete else {ch: expected[ch] for ch in listed}
    wrong = [ch for ch in names if listed.get(ch, 0) != expected[ch]]
    extra = [ch for ch in listed if ch not in expected] if complete else []
    return {
        "source": source,
        "listed": len(listed),
        "checked": len(names),
        "complete": complete,
        "mismatched": len(wrong) + len(extra),
        "samples": {ch: [listed.get(ch), expected[ch]] for ch in (wrong + extra)[:5]},
    }


# ------------------------------------------------------------------------------- ch-cost


class Deliveries:
    """ch-cost's events as they arrive: the channel's subscribers' (and a waiter for a
    total), and any that reach another client (``foreign``: must stay 0)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.total = 0
        self.foreign = 0
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None

    def on_event(self, c: Client, data: Any, t: float) -> None:
        if COST_CHANNEL not in c.channels:
            self.foreign += 1
            return
        self.total += 1
        if self.waiter is not None and self.total >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait_for(self, want: int, within: float) -> None:
        """Until ``want`` deliveries in all, or ``within`` s."""
        self.want = want
        if self.total >= want:
            return
        self.waiter = self.run.loop.create_future()
        try:
            await asyncio.wait_for(self.waiter, within)
        except TimeoutError:
            pass
        finally:
            self.waiter = None


async def ch_cost(run: Run) -> dict[str, Any]:
    o = run.o
    subscribers, small = o.ch_subscribers, min(o.ch_small_others, o.clients)
    got = Deliveries(run)
    run.on_event = got.on_event
    kinds = [kind_for(i, o.sse_ratio) for i in range(subscribers + small)]
    chans = [(COST_CHANNEL,)] * subscribers + [other_channels(i) for i in range(small)]
    await connect_phase(run, "connect-small", kinds, channels=chans)
    small_step = await cost_step(run, "small", got)
    rest = o.clients - small
    kinds = [kind_for(subscribers + small + i, o.sse_ratio) for i in range(rest)]
    await connect_phase(
        run, "connect-large", kinds, channels=[other_channels(small + i) for i in range(rest)]
    )
    large_step = await cost_step(run, "large", got)
    await close_all(run)
    a, b = small_step["cpu_us_per_publish"], large_step["cpu_us_per_publish"]
    result: dict[str, Any] = {
        "subscribers": subscribers,
        "publishes_per_burst": o.ch_publishes,
        "bursts": o.ch_bursts,
        "small": small_step,
        "large": large_step,
        "ratio": r3(b / a) if a and b is not None else None,
        "foreign": got.foreign,
    }
    failures = [
        f"{s['others']} others: {why}" for s in (small_step, large_step) for why in s["failures"]
    ]
    if got.foreign:
        failures.append(f"{got.foreign} publish(es) delivered to clients outside the channel")
    if failures:
        raise ScenarioFailed("; ".join(failures), 1, {"ch_cost": result})
    return {"ch_cost": result}


async def cost_step(run: Run, label: str, got: Deliveries) -> dict[str, Any]:
    """With the clients now open: channel counts converged, a quiet spell (the idle CPU), then
    ``--ch-bursts`` bursts of ``--ch-publishes`` publishes to the channel, each until every
    subscriber has them all: the server's CPU per publish."""
    o = run.o
    conv = await channels_converge(run, o.settle)
    if conv["clients_off"]:  # no use measuring a server that does not route channels
        raise ScenarioFailed(
            f"{conv['clients_off']} client(s) off their channel count", 1, {"ch_cost": conv}
        )
    failures = []
    subs = sum(1 for c in run.open_list if COST_CHANNEL in c.channels)
    others = len(run.open_list) - subs
    run.begin_phase(f"cost-{label}")
    await asyncio.sleep(o.ch_settle)  # let the joins' conflated counts go out: a quiet server
    p0, t0 = read_proc(o.server_pid) or {}, now()
    await asyncio.sleep(o.ch_settle)  # the idle CPU of this many connections
    p1, t1 = read_proc(o.server_pid) or {}, now()
    idle_pct = cpu_ms(p0, p1) / ((t1 - t0) * 10) if p0 and p1 else None
    headers = {"Authorization": f"Bearer {o.token}"} if o.token else {}
    conn = HttpConnection(run.host, run.port)
    per_publish: list[float] = []
    wall_ms: list[float] = []
    publish_errors = 0
    sample = None
    try:
        for burst in range(o.ch_bursts):
            before = got.total
            q0, w0 = read_proc(o.server_pid) or {}, now()
            for seq in range(o.ch_publishes):
                data = {"seq": seq, "burst": burst}
                body = {"event": o.event_name, "data": data, "channel": COST_CHANNEL}
                status, text = await run.http(
                    "POST", o.publish_path, json.dumps(body).encode(), headers, conn=conn
                )
                if status not in (200, 201, 202):
                    publish_errors += 1
                    sample = sample or f"HTTP {status} {text[:80]!r}"
            await got.wait_for(before + subs * o.ch_publishes, o.settle)
            q1, w1 = read_proc(o.server_pid) or {}, now()
            if got.total - before != subs * o.ch_publishes:
                failures.append(
                    f"burst {burst}: {got.total - before} of {subs * o.ch_publishes} delivered"
                )
                break  # the next bursts would only wait as long again
            if q0 and q1:
                per_publish.append(cpu_ms(q0, q1) * 1000 / o.ch_publishes)
            wall_ms.append((w1 - w0) * 1000 / o.ch_publishes)
        per_event = await batch_bursts(run, conn, headers, got, subs, failures)
    finally:
        conn.close()
    if publish_errors:
        failures.append(f"{publish_errors} publish(es) refused, e.g. {sample}")
    step = {
        "others": others,
        "subscribers": subs,
        "channels_converge_ms": conv["converge_ms"],
        "idle_cpu_pct": r1(idle_pct) if idle_pct is not None else None,
        "cpu_us_per_publish": r1(statistics.median(per_publish)) if per_publish else None,
        "bursts_cpu_us_per_publish": [r1(x) for x in per_publish],
        "wall_ms_per_publish": r3(statistics.median(wall_ms)) if wall_ms else None,
        "batched_cpu_us_per_event": r1(statistics.median(per_event)) if per_event else None,
        "failures": failures,
    }
    run.end_phase(**{k: v for k, v in step.items() if k != "failures"})
    return step


async def batch_bursts(
    run: Run,
    conn: HttpConnection,
    headers: dict[str, str],
    got: Deliveries,
    subs: int,
    failures: list[str],
) -> list[float]:
    """Bursts of ten times as many events through ``POST /publish/batch``, ``BATCH`` a
    request: the CPU per event without most of an HTTP request's own cost, which a single
    publish is mostly made of (so an O(clients) cost of routing shows more sharply). Empty for
    a server without the endpoint (the Node peer)."""
    o = run.o
    n = o.ch_publishes * 10  # ten times as many: each costs far less (10 ms /proc ticks)
    per_event: list[float] = []
    for burst in range(o.ch_bursts):
        before = got.total
        q0 = read_proc(o.server_pid) or {}
        for start in range(0, n, BATCH):
            events = [
                {
                    "event": o.event_name,
                    "data": {"seq": seq, "batch": burst},
                    "channel": COST_CHANNEL,
                }
                for seq in range(start, min(n, start + BATCH))
            ]
            status, text = await run.http(
                "POST", o.publish_path + "/batch", json.dumps({"events": events}).encode(),
                headers, conn=conn,
            )  # fmt: skip
            if status in (404, 405):
                return []
            if status not in (200, 201, 202):
                failures.append(f"batch refused: HTTP {status} {text[:80]!r}")
                return []
        await got.wait_for(before + subs * n, o.settle)
        q1 = read_proc(o.server_pid) or {}
        if got.total - before != subs * n:
            failures.append(f"batch burst {burst}: {got.total - before} delivered")
            break
        if q0 and q1:
            per_event.append(cpu_ms(q0, q1) * 1000 / n)
    return per_event


def cpu_ms(before: dict[str, Any], after: dict[str, Any]) -> float:
    return float(after["cpu_ms"]) - float(before["cpu_ms"])


# ----------------------------------------------------------------------------- ch-memory


def memory_channels(mode: str, i: int, per_client: int) -> tuple[str, ...]:
    if mode == "own":
        return (f"mem:{i}",)
    if mode == "many":
        return tuple(f"mem:{i}:{j}" for j in range(per_client))
    return ()


async def ch_memory(run: Run) -> dict[str, Any]:
    o = run.o
    mode, per = o.ch_memory_mode, o.ch_per_client
    kinds = [kind_for(i, o.sse_ratio) for i in range(o.clients)]
    names = [memory_channels(mode, i, per) for i in range(o.clients)]
    # Socket.IO clients of "many" subscribe after connecting (the subscribe event and its ack).
    late = mode == "many"
    at_connect = [() if late and k == "ws" else n for k, n in zip(kinds, names, strict=True)]
    # Warm-up, as footprint: the first connections (and subscriptions) load code and fill caches.
    warm = min(20, o.clients)
    await connect_phase(
        run,
        "warmup",
        kinds[:warm],
        channels=[tuple("warm:" + ch for ch in n) for n in names[:warm]],
    )
    await close_all(run)
    base = await rss_kb(run, o.ch_settle)
    p = await connect_phase(run, "open", kinds, channels=at_connect)
    # Client ids are given in creation order: the open phase's first is this one.
    first = run.next_id - len(kinds) + 1
    acks = await subscribe_late(run, names, first) if late else None
    run.begin_phase("channels")
    conv = await channels_converge(run, o.settle)
    expected = expected_counts(run)
    stats = await check_server_channels(run, "mem:", expected)
    run.end_phase(**conv)
    loaded = await rss_kb(run, o.ch_settle)
    alive = isinstance(await run.server_count(), int) or not o.stats_path
    opened = p["clients"]
    await close_all(run)
    after = await rss_kb(run, o.ch_settle)
    result: dict[str, Any] = {
        "mode": mode,
        "clients": opened,
        "channels_per_client": len(names[0]) if names else 0,
        "channels": conv["channels"],
        "subscriptions": conv["subscriptions"],
        "rss_base_kb": base,
        "rss_loaded_kb": loaded,
        "rss_after_kb": after,
        "kb_per_connection": (
            r3((loaded - base) / opened)
            if loaded is not None and base is not None and opened
            else None
        ),
        "connect_converge_ms": p["converge_ms"],
        "channels_converge_ms": conv["converge_ms"],
        "clients_off_channel_count": conv["clients_off"],
        "acks": acks,
        "server_channels": stats,
        "server_alive": alive,
    }
    failures = []
    if conv["clients_off"]:
        failures.append(f"{conv['clients_off']} client(s) off their channel count")
    if acks and acks["ok"] != acks["sent"]:
        failures.append(f"{acks['sent'] - acks['ok']} of {acks['sent']} subscribe acks not ok")
    if stats.get("mismatched"):
        failures.append(f"{stats['source']}: {stats['mismatched']} channel(s) off the clients")
    if not alive:
        failures.append("the server stopped answering")
    if failures:
        raise ScenarioFailed("; ".join(failures), 1, {"ch_memory": result})
    return {"ch_memory": result}


async def subscribe_late(run: Run, names: list[tuple[str, ...]], first: int) -> dict[str, Any]:
    """Every open Socket.IO client subscribes to its channels (``names[id - first]``) with one
    ``subscribe`` event; each ack must be ``{ok: true, channels}`` with exactly them."""
    run.begin_phase("subscribe")
    waits: list[tuple[Client, tuple[str, ...], asyncio.Future[Any]]] = []
    for c in run.open_list:
        if isinstance(c, WsClient) and not c.channels:
            mine = names[c.id - first]
            c.channels = mine  # before the emit: its channel counts may come before the ack
            waits.append((c, mine, run.expect_ack(c, 1)))
            c.emit("subscribe", list(mine), 1)
    done, _ = (
        await asyncio.wait([w for _, _, w in waits], timeout=run.o.settle) if waits else ((), ())
    )
    ok, samples = 0, Counter[str]()
    for _, mine, fut in waits:
        if fut not in done:
            samples["no ack"] += 1
            continue
        args = fut.result()
        ack = args[0] if isinstance(args, list) and args else None
        if (
            isinstance(ack, dict)
            and ack.get("ok") is True
            and set(ack.get("channels", ())) == set(mine)
        ):
            ok += 1
        else:
            samples[json.dumps(ack)[:100]] += 1
    run.end_phase(sent=len(waits), ok=ok)
    return {"sent": len(waits), "ok": ok, "samples": dict(samples.most_common(3))}
