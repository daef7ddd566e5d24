"""What a release ships works: the sdist and wheel `python -m build` makes from a clean `git
archive` of HEAD, installed in a fresh venv and served from outside the checkout, give a page
that goes live over websocket and chats in Chromium. And `scripts/run` serves a clean copy
for an unprivileged user without Node.

This is the path a user takes (`pip install` of a clone, of `git+...`, of a release), where a
git-ignored or generated file would be missing. It tests HEAD: commit first.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from tests.browser import WAIT_MS, Tab, expect_count, expect_live
from tests.support import PROJECT_ROOT, Server, running_server

VENDORED_CLIENT = "static/vendor/socket.io.min.js"


def clean_environment() -> dict[str, str]:
    """Nothing pointing back at the checkout or its .venv."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("BROADCAST")}


def run(argv: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def export_head(destination: Path) -> None:
    """HEAD's files, as a clean clone or `pip install git+...` would have them."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from HEAD's sdist; yields the venv's bin directory."""
    work = tmp_path_factory.mktemp("release")
    source, dist, venv = work / "source", work / "dist", work / "venv"
    export_head(source)

    # Builds the sdist, then the wheel from the unpacked sdist, as a release does.
    run([sys.executable, "-m", "build", "--outdir", dist, source], work, timeout=120)
    (sdist,) = dist.glob("broadcast_live-*.tar.gz")
    (wheel,) = dist.glob("broadcast_live-*-py3-none-any.whl")
    with tarfile.open(sdist) as tar:
        assert any(name.endswith(VENDORED_CLIENT) for name in tar.getnames()), "sdist"
    with zipfile.ZipFile(wheel) as archive_:
        assert f"broadcast/{VENDORED_CLIENT}" in archive_.namelist(), "wheel"

    run([sys.executable, "-m", "venv", venv], work, timeout=60)
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], work, timeout=120)
    where = run(
        [venv / "bin" / "python", "-c", "import broadcast; print(broadcast.__file__)"],
        work,
        timeout=30,
    ).stdout
    assert Path(where.strip()).is_relative_to(venv), f"imported from {where}"
    return venv / "bin"


@pytest.fixture
def wheel_server(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    """`broadcast serve` of the fresh venv, from a directory outside the checkout."""
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)
    outside = tmp_path / "run"
    outside.mkdir()
    with running_server(outside, command=[str(installed / "broadcast"), "serve"]) as server:
        yield server


async def open_page(browser: Browser, url: str, artifacts: Path) -> Tab:
    context = await browser.new_context()
    page = await context.new_page()
    tab = Tab(page, context, artifacts)
    page.on(
        "console",
        lambda m: tab.errors.append(f"console: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: tab.errors.append(f"pageerror: {e}"))
    await page.goto(url)
    return tab


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_built_wheel_serves_a_live_page_with_chat(
    wheel_server: Server, browser: Browser, artifacts: Path
) -> None:
    async with httpx.AsyncClient() as client:
        served = await client.get(f"{wheel_server.url}/{VENDORED_CLIENT}")
    assert served.status_code == 200
    assert served.content == (PROJECT_ROOT / VENDORED_CLIENT).read_bytes()

    alice = await open_page(browser, f"{wheel_server.url}/?username=alice", artifacts)
    bob = await open_page(browser, f"{wheel_server.url}/?username=bob", artifacts)
    try:
        await expect_count(alice, 2)
        await expect_live(alice, "websocket")
        await expect_live(bob, "websocket")
        await alice.chat("hello from the wheel")
        await expect(bob.page.locator("#messages li")).to_have_text(
            ["alice: hello from the wheel"], timeout=WAIT_MS
        )
        await bob.screenshot("bob-received")
        alice.assert_console_clean()
        bob.assert_console_clean()
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scripts_run_serves_a_clean_copy_without_node_as_an_unprivileged_user() -> None:
    """`scripts/run` in a fresh copy of HEAD, as `nobody` (when the tests run as root), with
    `npm` and `node` on PATH replaced by programs that fail: it sets up and serves the page
    with its Socket.IO client, never asking for Node or root."""
    work = Path(tempfile.mkdtemp(prefix="broadcast-run-"))  # not under pytest's 0700 tmp
    try:
        work.chmod(0o755)
        source, home, shims = work / "source", work / "home", work / "shims"
        for directory in (source, home, shims):
            directory.mkdir()
        export_head(source)
        for tool in ("npm", "node"):
            (shims / tool).write_text(f'#!/bin/sh\necho "{tool} must not be needed" >&2\nexit 97\n')
            (shims / tool).chmod(0o755)
        user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(source, "nobody", "nogroup")
            shutil.chown(home, "nobody", "nogroup")
            for path in source.rglob("*"):
                shutil.chown(path, "nobody", "nogroup")
            user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        as_user = [
            *user,
            "env",
            "-i",
            f"HOME={home}",
            f"PATH={shims}:/usr/local/bin:/usr/bin:/bin",
        ]
        # The first run installs the venv (longer than running_server waits for an answer).
        setup = run([*as_user, source / "scripts" / "setup"], source, timeout=150)
        assert "setup: installing" in setup.stderr
        assert "\x1b[" not in setup.stderr, "no colour codes when not on a terminal (CI logs)"
        assert not (source / "node_modules").exists()
        with running_server(work, command=[*as_user, str(source / "scripts" / "run")]) as server:
            page = httpx.get(f"{server.url}/")
            assert page.status_code == 200
            assert 'id="count"' in page.text
            served = httpx.get(f"{server.url}/{VENDORED_CLIENT}")
            assert served.status_code == 200
            assert served.content == (PROJECT_ROOT / VENDORED_CLIENT).read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)
