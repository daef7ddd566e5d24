"""The channel scenarios in the report: their table metrics and the issue's targets.

``ch-storm`` and ``ch-fanout`` come from the kit's loadgen.js (camelCase JSON, see
``bench/kit.py``), ``ch-cost`` and ``ch-memory`` from ``bench/loadgen/channels.py``.
"""

from __future__ import annotations

from typing import Any

from bench.report.metrics import Getter, Run, dig, errors, mb, per_s

# ------------------------------------------------------------------------------ getters


def js(*keys: str) -> Getter:
    """A figure of loadgen.js's summary, also from a failed run (then under ``detail``)."""

    def get(r: Run) -> Any:
        found = dig(r, "result", *keys)
        return found if found is not None else dig(r, "result", "detail", *keys)

    return get


def foreign(r: Run) -> int | None:
    """Deliveries (events or ``channel count``) of a channel the client is not in."""
    n = dig(r, "result", "errors", "foreign")
    if n is None:
        n = dig(r, "result", "ch_cost", "foreign")
    return int(n) if isinstance(n, int) else None


def stats_channels_off(r: Run) -> int | None:
    """Channels whose ``/stats`` count differed from the clients open, over the storm's
    phases (None when the server lists none)."""
    phases = dig(r, "result", "phases") or []
    checked = [p["serverChannels"]["mismatched"] for p in phases if "serverChannels" in p]
    return sum(checked) if checked else None


def js_fan_bad(r: Run) -> int | None:
    f = js("fanout")(r)
    if not isinstance(f, dict):
        return None
    keys = ("missing", "outOfOrder", "duplicates", "malformed", "publishErrors", "foreign")
    return int(sum(f.get(k) or 0 for k in keys))


def js_cpu_per_delivery(r: Run) -> float | None:
    """The server's CPU per delivery in the fanout phase (µs)."""
    phases = dig(r, "result", "phases") or []
    fan = [p for p in phases if p.get("name") == "fanout"]
    deliveries = int(js("fanout", "deliveries")(r) or 0)
    if not fan or "serverCpuMs" not in fan[0] or not deliveries:
        return None
    return round(float(fan[0]["serverCpuMs"]) * 1000 / deliveries, 1)


def cost(*keys: str) -> Getter:
    def get(r: Run) -> Any:
        found = dig(r, "result", "ch_cost", *keys)
        return found if found is not None else dig(r, "result", "detail", "ch_cost", *keys)

    return get


def memory(*keys: str) -> Getter:
    def get(r: Run) -> Any:
        found = dig(r, "result", "ch_memory", *keys)
        return found if found is not None else dig(r, "result", "detail", "ch_memory", *keys)

    return get


def acks(r: Run) -> str | None:
    a = memory("acks")(r)
    return f"{a['ok']:,} of {a['sent']:,}" if isinstance(a, dict) else None


def by_type(phase: str, kind: str) -> Getter:
    return js("framesPerClientByType", phase, kind)


METRICS: dict[str, list[tuple[str, Getter, str]]] = {
    "ch-storm": [
        (
            "connect: all hold N and their channel's count (s)",
            lambda r: per_s(js("convergeMs", "connect")(r)),
            "lower",
        ),
        (
            "close half: the rest hold theirs (s)",
            lambda r: per_s(js("convergeMs", "close")(r)),
            "lower",
        ),
        (
            "reconnect half: all hold theirs (s)",
            lambda r: per_s(js("convergeMs", "reconnect")(r)),
            "lower",
        ),
        ("user count frames per client (connect)", by_type("connect", "userCount"), "lower"),
        ("channel count frames per client (connect)", by_type("connect", "channelCount"), "lower"),
        (
            "server CPU, whole storm (s)",
            lambda r: per_s(dig(r, "result", "server", "cpu_ms")),
            "lower",
        ),
        ("server peak RSS (MB)", lambda r: mb(dig(r, "result", "server", "hwm_kb")), "lower"),
        ("connect errors + drops", errors, "zero"),
        ("foreign channel counts", foreign, "zero"),
        ("/stats channels off the clients", stats_channels_off, "zero"),
        ("loadgen.js busiest phase (% core)", js("loadgen", "maxPhaseCpuPct"), ""),
    ],
    "ch-fanout": [
        ("deliveries/s", js("fanout", "deliveriesPerS"), "higher"),
        ("publishes/s achieved", js("fanout", "publishRatePerS"), "higher"),
        ("latency p50 (ms)", js("fanout", "latencyMs", "p50"), "lower"),
        ("latency p99 (ms)", js("fanout", "latencyMs", "p99"), "lower"),
        ("latency max (ms)", js("fanout", "latencyMs", "max"), "lower"),
        ("missing + out-of-order + dup + foreign", js_fan_bad, "zero"),
        ("connect errors + drops", errors, "zero"),
        ("server CPU per delivery (µs)", js_cpu_per_delivery, "lower"),
        ("server CPU (%)", lambda r: dig(r, "result", "server", "cpu_pct"), ""),
        ("loadgen.js busiest phase (% core)", js("loadgen", "maxPhaseCpuPct"), ""),
    ],
    "ch-cost": [
        ("CPU per publish, 100 others (µs)", cost("small", "cpu_us_per_publish"), "lower"),
        ("CPU per publish, all others (µs)", cost("large", "cpu_us_per_publish"), "lower"),
        ("all others / 100 others", cost("ratio"), "lower"),
        (
            "batched: CPU per event, 100 others (µs)",
            cost("small", "batched_cpu_us_per_event"),
            "lower",
        ),
        (
            "batched: CPU per event, all others (µs)",
            cost("large", "batched_cpu_us_per_event"),
            "lower",
        ),
        ("others connected (large)", cost("large", "others"), ""),
        ("idle CPU with all others (%)", cost("large", "idle_cpu_pct"), ""),
        ("wall time per publish, all others (ms)", cost("large", "wall_ms_per_publish"), "lower"),
        ("deliveries outside the channel", foreign, "zero"),
        ("connect errors + drops", errors, "zero"),
    ],
    "ch-memory": [
        ("RSS per connection (KB)", memory("kb_per_connection"), "lower"),
        ("channels / subscriptions", lambda r: subs_text(r), ""),
        ("subscribe acks ok", acks, ""),
        ("clients off their channel count", memory("clients_off_channel_count"), "zero"),
        (
            "server's channel counts off (/channels, else /stats)",
            memory("server_channels", "mismatched"),
            "zero",
        ),
        ("server RSS loaded (MB)", lambda r: mb(memory("rss_loaded_kb")(r)), "lower"),
        ("connect errors + drops", errors, "zero"),
    ],
}


def subs_text(r: Run) -> str | None:
    ch, subs = memory("channels")(r), memory("subscriptions")(r)
    return f"{ch:,} / {subs:,}" if isinstance(ch, int) and isinstance(subs, int) else None


# ------------------------------------------------------------------------------ targets


def _verdict(met: bool, short: str) -> str:
    return "met" if met else f"MISSED: {short}"


def ours_with_node(runs: list[Run], scenario: str) -> list[tuple[Run, Run | None]]:
    ours = [r for r in runs if r["scenario"] == scenario and r["target"] == "ours"]
    node = {r["case"]: r for r in runs if r["scenario"] == scenario and r["target"] == "node"}
    return [(r, node.get(r["case"])) for r in ours]


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    runs: list[Run] = results["runs"]
    return [
        *storm_targets(runs),
        *fanout_targets(runs, results.get("floor")),
        *cost_targets(runs),
        *memory_targets(runs),
    ]


def failed(r: Run) -> str:
    return f"the run failed: {str(r.get('error'))[:80]}"


def storm_targets(runs: list[Run]) -> list[list[str]]:
    rows = []
    for ours, node in ours_with_node(runs, "ch-storm"):
        if ours["clients"] < 5000:
            continue
        name = f"ch-storm {ours['case']}: every client on its exact counts >= 20x faster than Node"
        a, b = js("convergeMs", "connect")(ours), js("convergeMs", "connect")(node or {})
        if not ours["ok"]:
            rows.append([name, failed(ours), "MISSED: " + failed(ours)])
        elif isinstance(a, int | float) and isinstance(b, int | float) and a:
            x = b / a
            rows.append(
                [
                    name,
                    f"{a / 1000:.2f} s vs {b / 1000:.1f} s: {x:.1f}x; errors {errors(ours)}",
                    _verdict(x >= 20 and errors(ours) == 0, f"{x:.1f}x of 20x"),
                ]
            )
    return rows


def floor_note(floor: Any) -> str:
    """What the machine's bare writes alone take at the paced rate (``bench/floor.py``)."""
    if not isinstance(floor, dict) or "paced_share" not in floor:
        return ""
    return (
        f"; machine floor: bare writes alone take {floor['paced_share'] * 100:.0f} % of the "
        f"core at this rate ({floor['paced_us_per_write']:g} µs each)"
    )


def fanout_targets(runs: list[Run], floor: Any = None) -> list[list[str]]:
    rows = []
    for ours, node in ours_with_node(runs, "ch-fanout"):
        if ours["clients"] < 5000:
            continue
        rate = js("fanout", "publishRatePerS")
        if "back to back" in ours["case"]:
            name = f"ch-fanout {ours['case']}: deliveries/s >= 2x Node's"
            a, b = js("fanout", "deliveriesPerS")(ours), js("fanout", "deliveriesPerS")(node or {})
            if not ours["ok"]:
                rows.append([name, failed(ours), "MISSED: " + failed(ours)])
            elif isinstance(a, int | float) and isinstance(b, int | float) and b:
                rows.append(
                    [
                        name,
                        f"{a:,.0f} vs {b:,.0f} ({rate(ours)} vs {rate(node or {})} publishes/s): "
                        f"{a / b:.2f}x",
                        _verdict(
                            a >= 2 * b, f"{a / b:.2f}x of 2x ({(1 - a / b / 2) * 100:.0f} % short)"
                        ),
                    ]
                )
        else:
            name = f"ch-fanout {ours['case']}: p99 < 50 ms, none lost or out of order"
            p99, bad = js("fanout", "latencyMs", "p99")(ours), js_fan_bad(ours)
            if isinstance(p99, int | float):
                rows.append(
                    [
                        name,
                        f"p99 {p99:.1f} ms at {rate(ours)} publishes/s; lost + out of order + dup "
                        f"+ foreign {bad}{floor_note(floor)}",
                        _verdict(
                            p99 < 50 and bad == 0 and ours["ok"],
                            f"{p99 - 50:.0f} ms ({(p99 - 50) / 50 * 100:.0f} %) over"
                            if p99 >= 50
                            else failed(ours),
                        ),
                    ]
                )
            elif not ours["ok"]:
                rows.append([name, failed(ours), "MISSED: " + failed(ours)])
    return rows


def cost_targets(runs: list[Run]) -> list[list[str]]:
    rows = []
    for ours, _ in ours_with_node(runs, "ch-cost"):
        large = cost("large", "others")(ours)
        if not isinstance(large, int) or large < 10000:
            continue
        a, b = cost("small", "cpu_us_per_publish")(ours), cost("large", "cpu_us_per_publish")(ours)
        name = f"ch-cost: CPU per publish to 10 subscribers, {large:,} others within 2x of 100"
        ba = cost("small", "batched_cpu_us_per_event")(ours)
        bb = cost("large", "batched_cpu_us_per_event")(ours)
        batched = f"; batched, per event: {bb:.0f} vs {ba:.0f} µs" if ba and bb else ""
        if isinstance(a, int | float) and isinstance(b, int | float) and a:
            x = b / a
            rows.append(
                [
                    name,
                    f"{b:.0f} µs vs {a:.0f} µs: {x:.2f}x{batched}",
                    _verdict(x <= 2 and ours["ok"], f"{x:.2f}x of 2x" if x > 2 else failed(ours)),
                ]
            )
        elif not ours["ok"]:
            rows.append([name, failed(ours), "MISSED: " + failed(ours)])
    return rows


def memory_targets(runs: list[Run]) -> list[list[str]]:
    rows = []
    mine = [r for r, _ in ours_with_node(runs, "ch-memory")]
    plain = {r["clients"]: r for r in mine if memory("mode")(r) == "plain" and r["ok"]}
    for r in mine:
        n, mode = r["clients"], memory("mode")(r)
        if n < 10000:
            continue
        if mode == "own" and n in plain:
            a, b = memory("kb_per_connection")(plain[n]), memory("kb_per_connection")(r)
            if isinstance(a, int | float) and isinstance(b, int | float):
                d = b - a
                rows.append(
                    [
                        f"ch-memory N={n:,}: RSS per subscription < 2 KB above a plain connection",
                        f"{b:.1f} KB vs {a:.1f} KB per connection: {d:+.2f} KB",
                        _verdict(
                            d < 2 and r["ok"], f"{d - 2:.2f} KB over" if d >= 2 else failed(r)
                        ),
                    ]
                )
        if mode == "many":
            subs = memory("subscriptions")(r)
            name = f"ch-memory {r['case']}: every channel held without error"
            measured = (
                f"{memory('channels')(r) or 0:,} channels, acks {acks(r)}, "
                f"server counts off {memory('server_channels', 'mismatched')(r)}, "
                f"errors {errors(r)}"
            )
            ok = r["ok"] and isinstance(subs, int) and subs >= 100000 and errors(r) == 0
            rows.append(
                [name, measured, _verdict(ok, failed(r) if not r["ok"] else "fewer channels")]
            )
    return rows
