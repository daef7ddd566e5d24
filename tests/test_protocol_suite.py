"""The Socket.IO protocol's own test suite (socketio/socket.io-protocol, ``test-suite/``,
vendored in tests/protocol-suite/) against a real server: ``tests/protocol_app.py``, broadcast's
app with the suite's timings and its echo handlers. Every test must pass but those listed in
``EXCLUDED``, each justified in docs/socketio-conformance.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartServer
from tests.support import PROJECT_ROOT

SUITE = PROJECT_ROOT / "tests" / "protocol-suite"
MOCHA = SUITE / "node_modules" / ".bin" / "mocha"
TESTS_IN_SUITE = 32
"""How many tests the vendored suite holds: a run that found fewer did not run them all."""

EXCLUDED: dict[str, str] = {}
"""Tests allowed to fail (they may pass), by full title, with why (each also justified in
docs/socketio-conformance.md). None: every test of the suite passes."""

HEARTBEAT = "Engine.IO protocol heartbeat"
"""The suite's heartbeat tests: the client must answer each ping within the suite's 200 ms, and
on a loaded CI machine the mocha process now and then does not (the server then closes the
session, as it must, and the test waits for a ping that never comes). Those alone, when they
alone failed, are run once more, and must pass then."""


def run_mocha(url: str, grep: str | None = None) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not MOCHA.exists():
        pytest.fail(
            "the protocol suite needs Node.js and its npm packages in tests/protocol-suite/"
            "node_modules: run scripts/setup --dev"
        )
    finished = subprocess.run(
        [
            node,
            str(MOCHA),
            "--reporter",
            "json",
            *(["--grep", grep] if grep else []),
            "test-suite.js",
        ],
        cwd=SUITE,
        env={**os.environ, "PROTOCOL_SUITE_URL": url},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    try:
        report: dict[str, Any] = json.loads(finished.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"mocha gave no JSON report (exit {finished.returncode}):\n{finished.stderr}")
    return report


@pytest.mark.timeout(180)
def test_the_socketio_protocol_suite_passes(start_server: StartServer, artifacts: Path) -> None:
    server = start_server(
        {"PYTHONPATH": str(PROJECT_ROOT)},
        command=[sys.executable, "-m", "hypercorn", "tests.protocol_app:app"],
    )
    report = run_mocha(server.url)
    (artifacts / "protocol-suite.json").write_text(json.dumps(report, indent=2))
    unexpected = failures(report)
    if unexpected and all(title.startswith(HEARTBEAT) for title in unexpected):
        again = run_mocha(server.url, grep=HEARTBEAT)
        (artifacts / "protocol-suite-heartbeat-again.json").write_text(json.dumps(again, indent=2))
        assert again["stats"]["tests"] >= len(unexpected), again["stats"]
        unexpected = failures(again)
    assert unexpected == {}, f"protocol suite failures (server log: {server.log_path})"
    assert report["stats"]["pending"] == 0
    ran = {test["fullTitle"] for test in report["tests"]}
    assert len(ran) >= TESTS_IN_SUITE, sorted(ran)
    assert set(EXCLUDED) <= ran, "an excluded test is no longer in the suite: update EXCLUDED"


def failures(report: dict[str, Any]) -> dict[str, str]:
    """The failed tests of a mocha report not in ``EXCLUDED``: why each failed, by full title."""
    failed = {test["fullTitle"]: test["err"].get("message", "") for test in report["failures"]}
    return {title: why for title, why in failed.items() if title not in EXCLUDED}
