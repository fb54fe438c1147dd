"""State files are written atomically, with their own temporary files, and never through a planted name."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ovsmgr.bench.results import Results
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.controller.runtime import RuntimeChanges, save_changes
from ovsmgr.lab.ovs import Lab
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch import record as rec
from ovsmgr.switch.rollback import rollback_path, save_rollback
from ovsmgr.switch.statefile import StateFileError, atomic_write, read_private


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under `root`: kind and content (or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = ("link", os.readlink(path))
        elif path.is_file():
            out[str(path.relative_to(root))] = ("file", path.read_bytes().decode(errors="replace"))
        else:
            out[str(path.relative_to(root))] = ("other", "")
    return out


def test_atomic_write_writes_str_and_bytes_with_exactly_the_mode(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "a.json", '{"a": "é"}')
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == '{"a": "é"}'
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    old = os.umask(0)
    try:
        atomic_write(tmp_path / "a.json", b"secret\n", mode=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_bytes() == b"secret\n"
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_symlink_in_place_of_the_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "state").mkdir()
    link = tmp_path / "state" / "ovsmgr-br0.json"
    link.symlink_to(victim)
    with pytest.raises(StateFileError, match="symbolic link"):
        atomic_write(link, "new")
    assert victim.read_text() == "keep"
    assert os.readlink(link) == str(victim)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["ovsmgr-br0.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ovsmgr-br0.json"
    atomic_write(path, "old")

    def fail(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ovsmgr-br0.json"]


def _writers(tmp_path: Path) -> dict[str, tuple[list[Path], Callable[[], None]]]:
    """Every state-file writer: the files it writes (in order), and a call that writes them."""
    paths = ControllerPaths(tmp_path, "br0")
    target = SwitchTarget("unix:/nonexistent", None, tmp_path)
    record = rec.AppliedRecord("br0", 3, "digest", "flows", 0, 10, "policy.yaml")
    rollback = rollback_path(target, "br0")
    lab = Lab("unit", tmp_path)
    results = Results.__new__(Results)
    results.out_dir, results.data = tmp_path, {"points": []}
    return {
        "token": ([paths.token], paths.ensure_token),
        "info": ([paths.info], lambda: paths.write_info({"pid": 1})),
        "runtime": ([paths.runtime], lambda: save_changes(paths.runtime, RuntimeChanges().set_enabled("web", False))),
        "record": ([rec.flows_path(target, "br0"), rec.state_path(target, "br0")],
                   lambda: rec.write_files(target, record, [])),
        "rollback": ([rollback.with_suffix(".flows"), rollback], lambda: save_rollback(rollback, {}, [])),
        "lab": ([lab._state_path()], lambda: lab._save({"namespaces": []})),
        "bench": ([results.path], results.save),
    }


WRITERS = ["token", "info", "runtime", "record", "rollback", "lab", "bench"]


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
@pytest.mark.parametrize("writer", WRITERS)
def test_no_writer_follows_a_planted_temp_name(tmp_path: Path, writer: str, plant: str) -> None:
    """The old writers wrote `path.with_suffix(".tmp")` with O_TRUNC: a link planted there sent the
    state (or the API token) into any file. Now nothing at a predictable name is opened."""
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("keep")
    paths, write = _writers(state)[writer]
    for old_tmp in {path.with_suffix(".tmp") for path in paths}:
        if plant == "symlink":
            old_tmp.symlink_to(victim)
        else:
            os.link(victim, old_tmp)
    before = tree(tmp_path)
    write()
    after = tree(tmp_path)
    assert victim.read_text() == "keep"
    for path in paths:
        assert after.pop(str(path.relative_to(tmp_path)))[0] == "file"
        before.pop(str(path.relative_to(tmp_path)), None)
    assert after == before  # the planted names untouched, nothing else created


@pytest.mark.parametrize("writer", WRITERS)
def test_no_writer_writes_through_a_symlinked_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        writer: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.chmod(victim, 0o600)
    (tmp_path / "state").mkdir()
    paths, write = _writers(tmp_path / "state")[writer]
    path = paths[-1]
    path.symlink_to(victim)
    with pytest.raises(StateFileError):
        write()
    assert victim.read_text() == "keep"
    assert os.readlink(path) == str(victim)


def test_the_token_is_private_kept_and_never_read_through_a_link(tmp_path: Path) -> None:
    paths = ControllerPaths(tmp_path, "br0")
    token = paths.ensure_token()
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600
    assert paths.ensure_token() == token
    os.chmod(paths.token, 0o644)  # readable by others: not a secret any more, replaced
    fresh = paths.ensure_token()
    assert fresh != token and stat.S_IMODE(paths.token.stat().st_mode) == 0o600
    secret = tmp_path / "elsewhere"
    secret.write_text("someone-elses-secret\n")
    os.chmod(secret, 0o600)
    paths.token.unlink()
    paths.token.symlink_to(secret)
    assert read_private(paths.token) is None
    with pytest.raises(StateFileError, match="symbolic link"):
        paths.ensure_token()  # the old code took the link's target as the token
    assert secret.read_text() == "someone-elses-secret\n"


def test_token_and_state_writers_do_not_share_a_temp_file(tmp_path: Path) -> None:
    """`ovsmgr-br0.token` and `ovsmgr-br0.json` both used `ovsmgr-br0.tmp`: writing both at once
    could put the token into the state file or fail the rename."""
    paths = ControllerPaths(tmp_path, "br0")
    errors: list[BaseException] = []

    def token_writer() -> None:
        try:
            for _ in range(300):
                paths.token.unlink(missing_ok=True)
                paths.ensure_token()
        except BaseException as exc:
            errors.append(exc)

    def state_writer() -> None:
        try:
            for i in range(300):
                atomic_write(paths.applied, json.dumps({"generation": i}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=token_writer), threading.Thread(target=state_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(paths.applied.read_text()) == {"generation": 299}
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600 and len(paths.token.read_text().strip()) > 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ovsmgr-br0.json", "ovsmgr-br0.token"]


def test_the_cli_refuses_a_token_that_is_a_link_or_readable_by_others(tmp_path: Path) -> None:
    from ovsmgr.controller.client import ApiClient, ApiError
    from ovsmgr.controller.paths import ControllerPaths

    paths = ControllerPaths(tmp_path, "br0")
    paths.write_info({"api": "unix:/nonexistent"})
    secret = tmp_path / "elsewhere"
    secret.write_text("stolen\n")
    secret.chmod(0o600)
    paths.token.symlink_to(secret)
    with pytest.raises(ApiError, match="no usable API token"):
        ApiClient.for_paths(paths)
    paths.token.unlink()
    paths.token.write_text("tok\n")
    paths.token.chmod(0o644)
    with pytest.raises(ApiError, match="no usable API token"):
        ApiClient.for_paths(paths)
    paths.token.chmod(0o600)
    assert ApiClient.for_paths(paths).token == "tok"
