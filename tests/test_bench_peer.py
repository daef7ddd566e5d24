"""The benchmark's cache of the Node reference peer: keyed by every file the copy is made from,
so that a changed kit (a new server.js, not only a new lock file) is installed afresh. Pure
functions over a temporary kit: no npm needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.servers import copy_peer, peer_cache_dir, peer_key


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 'shared/bench' kit in a temporary directory, and a cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shared = tmp_path / "shared" / "bench"
    (shared / "peer-node").mkdir(parents=True)
    (shared / "peer-python").mkdir()
    (shared / "package.json").write_text('{"name": "kit"}\n')
    (shared / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    (shared / "peer-node" / "server.js").write_text("// version 1\n")
    (shared / "peer-python" / "server.py").write_text("# not part of the Node peer\n")
    (shared / "loadgen.js").write_text("// not part of the Node peer\n")
    return shared


def test_a_changed_server_js_gets_a_new_cache_directory(kit: Path) -> None:
    before = peer_cache_dir(kit)
    assert peer_cache_dir(kit) == before, "the same kit keeps its directory"
    (kit / "peer-node" / "server.js").write_text("// version 2\n")
    after = peer_cache_dir(kit)
    assert after != before
    assert after.parent == before.parent == kit.parents[1] / "cache" / "broadcast-bench"


@pytest.mark.parametrize(
    ("change", "changes_key"),
    [
        ("package.json", True),
        ("package-lock.json", True),
        ("peer-node/lib/helper.js", True),  # a new file beside server.js
        ("peer-python/server.py", False),  # not copied, so not keyed
        ("loadgen.js", False),
        ("peer-node/node_modules/x/index.js", False),  # an install, not the kit
    ],
)
def test_the_key_covers_exactly_the_files_copied(
    kit: Path, tmp_path: Path, change: str, changes_key: bool
) -> None:
    before = peer_key(kit)
    path = kit / change
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((path.read_text() if path.exists() else "") + "// changed\n")
    assert (peer_key(kit) != before) is changes_key
    copy = tmp_path / "copy"
    copy_peer(kit, copy)
    copied = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    assert (change in copied) is changes_key
    assert {"package.json", "package-lock.json", "peer-node/server.js"} <= copied


def test_moving_content_between_files_changes_the_key(kit: Path) -> None:
    """Names and contents are both digested, with lengths: renaming a file, or moving bytes
    from one file to the next, is a different kit."""
    before = peer_key(kit)
    (kit / "peer-node" / "server.js").rename(kit / "peer-node" / "main.js")
    renamed = peer_key(kit)
    assert renamed != before
    (kit / "peer-node" / "main.js").write_text("// version")
    (kit / "peer-node" / "z.js").write_text(" 1\n")
    assert peer_key(kit) not in (before, renamed)
