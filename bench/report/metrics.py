"""The figures of one run (getters over its JSON) and, per scenario, the table's metrics: name,
getter, and which way is better."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Run = dict[str, Any]  # one entry of results["runs"]
Getter = Callable[[Run], float | int | str | None]


def dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def per_s(ms: Any) -> float | None:
    return round(ms / 1000, 2) if isinstance(ms, int | float) else None


def mb(kb: Any) -> float | None:
    return round(kb / 1024, 1) if isinstance(kb, int | float) else None


def errors(r: Run) -> int | None:
    e = dig(r, "result", "errors")
    return e["connect"] + e["dropped"] if isinstance(e, dict) else None


def fan_bad(r: Run) -> int | None:
    f = dig(r, "result", "fanout") or dig(r, "result", "detail", "fanout")
    if not isinstance(f, dict):
        return None
    return int(f["missing"] + f["out_of_order"] + f["duplicates"] + f["malformed"])


def fan(*keys: str) -> Getter:
    def get(r: Run) -> Any:
        return dig(r, "result", "fanout", *keys) or dig(r, "result", "detail", "fanout", *keys)

    return get


def fan_cpu_per_delivery(r: Run) -> float | None:
    """The server's CPU time per delivery in the fanout phase (µs): its cost per message sent,
    the figure least disturbed by a saturated core or by the publish rate."""
    phases = dig(r, "result", "phases") or []
    f = [p for p in phases if p.get("name") == "fanout"]
    deliveries = int(dig(r, "result", "fanout", "deliveries") or 0)
    if not f or "server_cpu_ms" not in f[0] or not deliveries:
        return None
    return round(float(f[0]["server_cpu_ms"]) * 1000 / deliveries, 1)


def storm(*keys: str) -> Getter:
    return lambda r: dig(r, "result", "storm", *keys)


def soak(*keys: str) -> Getter:
    """A soak figure, also from a failed soak (its result is then under ``detail``)."""

    def get(r: Run) -> Any:
        found = dig(r, "result", "soak", *keys)
        return found if found is not None else dig(r, "result", "detail", "soak", *keys)

    return get


def soak_ops(r: Run) -> int | None:
    joins, leaves = soak("joins")(r), soak("leaves")(r)
    return joins + leaves if isinstance(joins, int) and isinstance(leaves, int) else None


def shutdown(*keys: str) -> Getter:
    return lambda r: dig(r, "result", "shutdown", *keys)


def soak_verdict(r: Run) -> str | None:
    checks = soak("checks")(r)
    if not isinstance(checks, dict):
        return None
    failed = [name for name, ok in checks.items() if not ok]
    return "FAIL: " + "; ".join(failed) if failed else f"pass ({len(checks)} of {len(checks)})"


# (metric, getter, which way is better) per scenario; "lower"/"higher"/"zero"/"" (information)
METRICS: dict[str, list[tuple[str, Getter, str]]] = {
    "storm": [
        ("connect: all hold N (s)", lambda r: per_s(storm("converge_ms", "connect")(r)), "lower"),
        (
            "close half: rest hold N/2 (s)",
            lambda r: per_s(storm("converge_ms", "close")(r)),
            "lower",
        ),
        (
            "reconnect half: all hold N (s)",
            lambda r: per_s(storm("converge_ms", "reconnect")(r)),
            "lower",
        ),
        ("frames per client (connect)", storm("frames_per_client", "connect"), "lower"),
        ("slowest connect (ms)", storm("max_connect_ms"), "lower"),
        (
            "server CPU, whole storm (s)",
            lambda r: per_s(dig(r, "result", "server", "cpu_ms")),
            "lower",
        ),
        ("server peak RSS (MB)", lambda r: mb(dig(r, "result", "server", "hwm_kb")), "lower"),
        ("connect errors + drops", errors, "zero"),
        (
            "loadgen busiest 0.5 s (% core)",
            lambda r: dig(r, "result", "loadgen", "peak_cpu_pct"),
            "",
        ),
    ],
    "fanout": [
        ("deliveries/s", fan("deliveries_per_s"), "higher"),
        ("publishes/s achieved", fan("publish_rate_per_s"), "higher"),
        ("latency p50 (ms)", fan("latency_ms", "p50"), "lower"),
        ("latency p99 (ms)", fan("latency_ms", "p99"), "lower"),
        ("latency max (ms)", fan("latency_ms", "max"), "lower"),
        ("server's own fan-out p50, bucket (ms)", fan("server_fanout_ms", "p50"), ""),
        ("server's own fan-out p99, bucket (ms)", fan("server_fanout_ms", "p99"), ""),
        ("missing + out-of-order + dup", fan_bad, "zero"),
        ("connect errors + drops", errors, "zero"),
        ("server CPU per delivery (µs)", fan_cpu_per_delivery, "lower"),
        ("server CPU (%)", lambda r: dig(r, "result", "server", "cpu_pct"), ""),
        (
            "loadgen busiest 0.5 s (% core)",
            lambda r: dig(r, "result", "loadgen", "peak_cpu_pct"),
            "",
        ),
    ],
    "churn": [
        (
            "joins + leaves",
            lambda r: (
                (dig(r, "result", "churn", "connect_ops") or 0)
                + (dig(r, "result", "churn", "disconnect_ops") or 0)
            ),
            "",
        ),
        ("converge after churn (ms)", lambda r: dig(r, "result", "churn", "converge_ms"), "lower"),
        ("clients off the open count", lambda r: dig(r, "result", "churn", "mismatch"), "zero"),
        ("server count - open", lambda r: dig(r, "result", "churn", "server_mismatch"), "zero"),
        ("connect errors + drops", errors, "zero"),
        ("server CPU (%)", lambda r: dig(r, "result", "server", "cpu_pct"), ""),
    ],
    "footprint": [
        (
            "RSS per idle connection (KB)",
            lambda r: dig(r, "result", "footprint", "kb_per_connection"),
            "lower",
        ),
        (
            "RSS idle, no clients (MB)",
            lambda r: mb(dig(r, "result", "footprint", "rss_base_kb")),
            "lower",
        ),
        (
            "RSS kept after all left (MB)",
            lambda r: mb(dig(r, "result", "footprint", "retained_kb")),
            "lower",
        ),
        ("connect errors + drops", errors, "zero"),
    ],
    "shutdown": [
        ("SIGTERM to exit (ms)", shutdown("exit_ms"), "lower"),
        ("SIGTERM to the last client closed (ms)", shutdown("last_close_ms"), "lower"),
        ("clients closed by the server", shutdown("closed_by_server"), ""),
        ("reconnects refused (while draining)", shutdown("refused_while_draining"), ""),
        ("reconnects accepted", shutdown("accepted"), "zero"),
        ("tracebacks in the log", lambda r: r.get("server_tracebacks"), "zero"),
    ],
    "soak": [
        ("joins + leaves", soak_ops, ""),
        ("population min", soak("min_open"), ""),
        ("population max", soak("max_open"), ""),
        ("clients off the true count", soak("clients_off_count"), "zero"),
        ("server count - true count", soak("server_mismatch"), "zero"),
        ("connect errors + drops", errors, "zero"),
        ("server RSS at the start (MB)", lambda r: mb(soak("rss_start_kb")(r)), "lower"),
        ("server RSS peak (MB)", lambda r: mb(soak("rss_peak_kb")(r)), "lower"),
        ("server RSS after all left (MB)", lambda r: mb(soak("rss_end_kb")(r)), "lower"),
        ("after all left vs start (%)", soak("rss_end_vs_start_pct"), "lower"),
        ("RSS back within target after (s)", lambda r: per_s(soak("rss_returned_ms")(r)), ""),
        ("server CPU (%)", lambda r: dig(r, "result", "server", "cpu_pct"), ""),
        ("targets", soak_verdict, ""),
    ],
}
