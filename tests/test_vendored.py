"""The committed browser files (static/vendor/) are exactly those of the npm packages locked in
package-lock.json, so the page's Socket.IO client and the /schema page's Redoc change only by one
deliberate step (`npm install --ignore-scripts PACKAGE@VERSION`, then `scripts/vendor`).

`npm ci` (run by `scripts/setup --dev`) verifies each tarball against the lock's integrity hash;
these tests compare the committed files with what it installed in node_modules/.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor"
UPGRADE = (
    "to change a vendored file, upgrade deliberately: `npm install --ignore-scripts "
    "PACKAGE@VERSION`, then `scripts/vendor`, and commit static/vendor/, package.json and "
    "package-lock.json together"
)


def manifest() -> dict[str, Any]:
    packages: dict[str, Any] = json.loads((VENDOR / "vendor.json").read_text())["packages"]
    return packages


def locked(package: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads((ROOT / "package-lock.json").read_text())["packages"][
        f"node_modules/{package}"
    ]
    return entry


def installed(package: str) -> Path:
    """The package as `npm ci` installed it from the lock (its tarball checked by integrity)."""
    directory = ROOT / "node_modules" / package
    meta = directory / "package.json"
    if not meta.exists():
        pytest.fail(f"{directory} is missing: run scripts/setup --dev (npm ci)")
    if json.loads(meta.read_text())["version"] != locked(package)["version"]:
        pytest.fail(f"{directory} is not the version locked in package-lock.json: run npm ci")
    return directory


def test_the_page_and_the_schema_page_have_their_vendored_files() -> None:
    packages = manifest()
    assert set(packages) == {"socket.io-client", "redoc"}
    assert "socket.io.min.js" in packages["socket.io-client"]["files"]
    assert "redoc.standalone.js" in packages["redoc"]["files"]
    for package, entry in packages.items():
        licences = [name for name in entry["files"] if "LICENSE" in name]
        assert licences, f"{package}: its licence must travel with it"


@pytest.mark.parametrize("package", ["socket.io-client", "redoc"])
def test_the_manifest_names_the_locked_package(package: str) -> None:
    entry, lock = manifest()[package], locked(package)
    assert (entry["version"], entry["integrity"]) == (lock["version"], lock["integrity"]), (
        f"static/vendor/vendor.json has {package}@{entry['version']} but package-lock.json "
        f"locks {lock['version']}: {UPGRADE}"
    )


@pytest.mark.parametrize("package", ["socket.io-client", "redoc"])
def test_each_vendored_file_is_the_locked_packages_own(package: str) -> None:
    source = installed(package)
    for name, recorded in manifest()[package]["files"].items():
        committed = (VENDOR / name).read_bytes()
        assert hashlib.sha256(committed).hexdigest() == recorded["sha256"], (
            f"static/vendor/{name} does not match its sha256 in vendor.json: {UPGRADE}"
        )
        assert committed == (source / recorded["from"]).read_bytes(), (
            f"static/vendor/{name} is not {package}@{locked(package)['version']}'s "
            f"{recorded['from']}: {UPGRADE}"
        )


def test_nothing_else_is_vendored() -> None:
    listed = {name for entry in manifest().values() for name in entry["files"]}
    present = {path.name for path in VENDOR.iterdir()} - {"vendor.json"}
    assert present == listed, f"unlisted files in static/vendor/: {present - listed}; {UPGRADE}"
