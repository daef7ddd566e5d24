"""Load generator for broadcast and the Node reference peer: storm | fanout | churn | footprint
| soak | shutdown (``bench/shutdown.py``).

Speaks the wire formats itself (``bench/wire/``: Engine.IO v4 over raw RFC 6455 WebSocket,
SSE over raw HTTP/1.1), so that one process on one core can hold thousands of clients and read
every frame the server writes. It follows the contract of shared/bench/loadgen.js: the same
scenarios and the same convergence rule (every open client's *last* ``user count`` equals the
number of clients open, plus any baseline the server already had).

    .venv/bin/python -m bench.loadgen --url http://127.0.0.1:8000 --scenario storm --clients 1000

Progress goes to stderr; the last stdout line is one JSON object (``--out`` appends it to a file).
Exit status: 0 ok, 1 a check failed, 2 not converged within ``--timeout``, 3 usage error.
Only loopback targets are accepted. Run it pinned to its own core (``taskset -c 1``);
``bench/run`` does, and reads its JSON.
"""

# The modules, each importing only the ones above it:
# - measure: /proc figures, rounding, percentiles;
# - tracking: the clients' bookkeeping and the convergence rule (what bench.wire's clients call);
# - session: Run, that plus the phases and the server probes; ScenarioFailed;
# - steps: what scenarios are made of (connect phase, teardown, joins and leaves, RSS);
# - storm, fanout, churn, footprint, soak (and bench/shutdown.py): one scenario each;
#   scenarios: them by name;
# - driver: one run to its JSON summary; cli: the options and the process (``__main__``).
# (This docstring is also ``python -m bench.loadgen --help``'s description.)

from bench.loadgen.session import Run

__all__ = ["Run"]
