"""The install scripts' helpers, run as a user runs them: package groups, the lock, apt sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env)


# --- scripts/install's package groups ---------------------------------------------------------
def listed(*groups: str) -> list[str]:
    proc = run(["bash", str(SCRIPTS / "install"), "--list", *groups])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_every_group_is_in_the_full_list_once() -> None:
    everything = listed()
    assert len(everything) == len(set(everything))
    for group in ("switch", "dpdk", "develop", "vm"):
        assert set(listed(group)) <= set(everything)


def test_the_dpdk_drivers_the_lab_uses_are_named() -> None:
    """dpdk only recommends them, and apt runs with --no-install-recommends."""
    assert {"librte-net-af-packet23", "librte-mempool-ring23"} <= set(listed("dpdk"))


def test_the_vms_and_the_guest_get_the_switch_group() -> None:
    proc = run(["bash", str(REPO / "vagrant" / "provision" / "packages.sh"), "--list"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == listed("switch")
    assert "openvswitch-switch" in proc.stdout.split()


def test_an_unknown_group_is_refused() -> None:
    proc = run(["bash", str(SCRIPTS / "install"), "--packages-only", "nope"])
    assert proc.returncode == 1
    assert "no package group 'nope'" in proc.stderr


# --- scripts/lockfile ---------------------------------------------------------------------------
LOCK = """\
#    make lock
#
pip==26.3 \\
    --hash=sha256:aaa \\
    --hash=sha256:bbb
    # via -r requirements-install.in
PyYAML==6.0.4 \\
    --hash=sha256:ccc
    # via ovsmgr (pyproject.toml)
"""


def test_lockfile_names_and_parts(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    tool = [sys.executable, str(SCRIPTS / "lockfile"), "--lock", str(lock)]
    assert run([*tool, "names"]).stdout.split() == ["pip", "pyyaml"]
    part = run([*tool, "part", "pyyaml", "pip"])
    assert part.stdout == ("PyYAML==6.0.4 \\\n    --hash=sha256:ccc\n"
                           "pip==26.3 \\\n    --hash=sha256:aaa \\\n    --hash=sha256:bbb\n")
    missing = run([*tool, "part", "setuptools"])
    assert missing.returncode == 1 and "setuptools" in missing.stderr


def test_the_lock_holds_the_installer_and_the_build_backend() -> None:
    names = run([sys.executable, str(SCRIPTS / "lockfile"), "names"]).stdout.split()
    assert {"pip", "setuptools", "pyyaml", "pytest"} <= set(names)
    text = (REPO / "requirements.lock").read_text()
    assert "--hash=sha256:" in text
    assert "--find-links" not in text and "--index-url" not in text  # no machine's settings


# --- scripts/debian-sources ---------------------------------------------------------------------
@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\n"
        "deb [arch=amd64 signed-by=/keys/d.gpg] http://mirror.invalid/debian bookworm main contrib\n"
        "deb-src http://mirror.invalid/debian bookworm main\n"
        "deb http://other.invalid/repo stable main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://security.invalid/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://updates.invalid/debian\n"
        "Suites: bookworm-updates\n"
        "Components: main\n"
        "Enabled: no\n")
    (tmp_path / "sources.list.d" / "vendor.sources").write_text(
        "Types: deb\nURIs: https://vendor.invalid/apt\nSuites: nodistro\nComponents: main\n")
    return tmp_path


def debian_sources(apt_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(SCRIPTS / "debian-sources"), *args],
               env={"APT_SOURCES_DIR": str(apt_dir), "PATH": "/usr/bin:/bin"})


def test_debian_sources_keeps_the_hosts_debian_entries_only(apt_dir: Path) -> None:
    proc = debian_sources(apt_dir, "bookworm")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n"
        "Components: main contrib\nSigned-By: /keys/d.gpg\n"
        "\n"
        "Types: deb\nURIs: http://security.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n")


def test_debian_sources_names_the_mirror_for_debootstrap(apt_dir: Path) -> None:
    assert debian_sources(apt_dir, "bookworm", "--mirror").stdout == "http://mirror.invalid/debian\n"


def test_debian_sources_without_the_suite_fails(apt_dir: Path) -> None:
    proc = debian_sources(apt_dir, "trixie")
    assert proc.returncode == 1
    assert "no source for Debian trixie" in proc.stderr
