"""The in-process broker's check for a sibling worker (a lock file named after the parent
process): it never stops a server from starting, and leaves no file behind."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from broadcast.broker.memory import MemoryBackend
from broadcast.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)


def lock_path(directory: Path) -> Path:
    return directory / f"broadcast-memory-{os.getuid()}-{os.getppid()}.lock"


async def test_a_second_worker_is_told_and_the_lock_file_goes_at_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first, second = MemoryBackend(), MemoryBackend()
    supervisor = Supervisor()
    await first.start(lambda topic, event: None, supervisor)
    assert lock_path(tmp_path).exists()
    with caplog.at_level(logging.ERROR):
        await second.start(lambda topic, event: None, supervisor)
    assert "another worker of this server uses the in-process" in caplog.text
    await second.stop()
    await first.stop()
    assert not lock_path(tmp_path).exists(), "left behind, a reused PID would find it"


async def test_a_lock_file_it_cannot_open_never_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As when another user's server left a file of that name (its parent's PID reused)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lock_path(tmp_path).mkdir()  # cannot be opened as a file, even by root
    backend = MemoryBackend()
    with caplog.at_level(logging.WARNING):
        await backend.start(lambda topic, event: None, Supervisor())
    assert "cannot check for another worker" in caplog.text
    await backend.stop()
    assert lock_path(tmp_path).is_dir(), "not ours: left alone"
