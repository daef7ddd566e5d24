"""``overrides/``: every lean on a dependency's internals is checked at startup; the optional
ones step aside for the public path, the required ones stop the server with a message."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from broadcast import overrides
from broadcast.overrides import (
    OverrideMismatch,
    choose,
    engineio,
    hypercorn,
    socketio,
    socketio_rooms,
    sse_starlette,
)
from broadcast.overrides.check import signatures
from broadcast.overrides.sse_starlette import LeanResponse, PublicResponse
from tests.support import PROJECT_ROOT


@pytest.mark.parametrize("module", [engineio, socketio, socketio_rooms, hypercorn, sse_starlette])
def test_every_override_fits_the_pinned_dependencies(module: object) -> None:
    assert module.check() is None  # type: ignore[attr-defined]


class Library:
    def hook(self, sid: str, data: object) -> None: ...

    def __init__(self) -> None:
        self.sockets: dict[str, object] = {}


def test_a_check_names_what_moved() -> None:
    assert signatures(Library, {"hook": ["self", "sid", "data"]}, ["sockets"], Library()) is None
    assert "hook takes other arguments" in str(
        signatures(Library, {"hook": ["self", "sid"]}),
    )
    assert "gone_method is gone" in str(signatures(Library, {"gone_method": ["self"]}))
    assert "has no queue" in str(signatures(Library, {}, ["queue"], Library()))


def test_with_overrides_on_the_lean_paths_are_taken() -> None:
    chosen = choose(enabled=True)
    assert chosen.find_socket is hypercorn.socket_of
    assert chosen.sse_response is LeanResponse
    assert chosen.indexed_rooms


def test_with_overrides_off_the_public_paths_are_taken_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="broadcast.overrides"):
        chosen = choose(enabled=False)
    assert chosen.find_socket is hypercorn.no_socket
    assert chosen.sse_response is PublicResponse
    assert not chosen.indexed_rooms
    assert ["dependency overrides off" in r.getMessage() for r in caplog.records] == [True]


def test_an_optional_override_that_no_longer_fits_steps_aside_with_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(overrides.hypercorn, "check", lambda: "TCPServer moved")
    monkeypatch.setattr(overrides.sse_starlette, "check", lambda: "_stream_response is gone")
    with caplog.at_level(logging.WARNING, logger="broadcast.overrides"):
        chosen = choose(enabled=True)
    assert chosen.find_socket is hypercorn.no_socket
    assert chosen.sse_response is PublicResponse
    assert chosen.indexed_rooms
    assert [r.getMessage() for r in caplog.records] == [
        "direct writes off, every client on the ASGI path: TCPServer moved",
        "SSE streams on sse-starlette's own __call__: _stream_response is gone",
    ]


def test_a_required_override_that_no_longer_fits_stops_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overrides.socketio, "check", lambda: "_handle_connect is gone")
    with pytest.raises(OverrideMismatch, match=r"python-socketio .*_handle_connect is gone"):
        choose(enabled=False)  # not optional, even with the overrides off


@pytest.mark.timeout(60)
def test_the_server_refuses_to_start_on_a_python_socketio_it_does_not_fit() -> None:
    # A python-socketio whose internals moved: the app must not start, and say why.
    program = "import socketio; del socketio.AsyncServer._handle_connect; import broadcast.app"
    finished = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert finished.returncode != 0
    assert "broadcast: python-socketio is not the version broadcast was tested with" in (
        finished.stderr
    )
    assert "_handle_connect is gone" in finished.stderr
    assert "Traceback" not in finished.stderr
