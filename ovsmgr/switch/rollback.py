"""`apply --confirm`: keep what was there, and put it back unless `ovsmgr confirm` comes in time.

`arm_rollback` saves the flows the apply replaced (`ovsmgr-BRIDGE.rollback.flows`) and what
to do (`ovsmgr-BRIDGE.rollback.json`), and starts a watcher process (`python -m
ovsmgr.switch.rollback FILE`) that sleeps until the deadline; `confirm_apply` removes the
file and stops the watcher; `run_rollback` pushes the saved flows back in one bundle and
records that it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ovsmgr.southbound.openflow import FlowMod
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch import record as rec
from ovsmgr.switch.connect import flow_table
from ovsmgr.switch.plan import desired_mods, make_plan
from ovsmgr.switch.statefile import atomic_write


def rollback_path(target: SwitchTarget, bridge: str) -> Path:
    return target.state_dir / f"ovsmgr-{bridge}.rollback.json"


def _flows_file(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + ".flows")


def arm_rollback(target: SwitchTarget, bridge: str, previous: list[FlowMod],
                 previous_record: rec.AppliedRecord | None, seconds: float) -> float:
    """Keep the previous flows and start a watcher that restores them unless confirmed in time."""
    deadline = time.time() + seconds
    path = rollback_path(target, bridge)
    info = {
        "deadline": deadline, "db": target.db, "rundir": str(target.rundir) if target.rundir else None,
        "state_dir": str(target.state_dir), "bridge": bridge, "openflow": target.openflow_target,
        "record": previous_record.to_json() if previous_record else None, "tls": _tls_files(),
    }
    save_rollback(path, info, previous)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ovsmgr.switch.rollback", str(path)], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    atomic_write(path, json.dumps({**info, "watcher": proc.pid}))
    return deadline


def _tls_files() -> list[str] | None:
    """The TLS files this process uses, if any (the watcher is a process of its own)."""
    if "ovsmgr.southbound.tls" not in sys.modules:
        return None
    from ovsmgr.southbound.tls import configured

    files = configured()
    return [str(files.private_key), str(files.certificate), str(files.ca_cert)] if files else None


def save_rollback(path: Path, info: dict[str, object], previous: list[FlowMod]) -> None:
    """The flows to put back, then what to do with them (the watcher reads the second)."""
    atomic_write(_flows_file(path), rec.encode_flows(previous))
    atomic_write(path, json.dumps(info))


def confirm_apply(target: SwitchTarget, bridge: str) -> bool:
    """Cancel a pending rollback; False when there was none (or it already ran)."""
    path = rollback_path(target, bridge)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    path.unlink(missing_ok=True)
    _flows_file(path).unlink(missing_ok=True)
    pid = data.get("watcher")
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    return True


def run_rollback(path: Path) -> bool:
    """Restore the flows saved at apply time if the rollback file is still there (not confirmed)."""
    try:
        data = json.loads(path.read_text())
        previous = rec.decode_flows(_flows_file(path).read_bytes())
    except FileNotFoundError:
        return False
    if data.get("tls"):  # the apply reached the switch over TLS: so does its rollback
        from ovsmgr.southbound.tls import TlsFiles, configure

        configure(TlsFiles(*(Path(f) for f in data["tls"])))
    target = SwitchTarget(data["db"], Path(data["rundir"]) if data["rundir"] else None, Path(data["state_dir"]),
                          openflow_target=data.get("openflow"))
    bridge = data["bridge"]
    with flow_table(target, bridge) as table:
        table.push(make_plan(table.read(), desired_mods(previous)).bundle())
    current = rec.read_record(target, bridge)
    before = rec.AppliedRecord.from_json(data["record"]) if data.get("record") else None
    base = before or current
    generation = (current.generation if current else 0) + 1
    record = rec.make_record(bridge, generation, base.digest if base else "", previous,
                             base.ct_zone if base else 0, base.sources.split(",") if base else [],
                             base.rules if base else {}, rolled_back_at=rec.now())
    rec.write_record(target, record, previous)
    path.unlink(missing_ok=True)
    _flows_file(path).unlink(missing_ok=True)
    return True


def main(path_text: str) -> int:
    """The watcher: sleep until the deadline, then roll back (unless the file went: confirmed)."""
    path = Path(path_text)
    try:
        deadline = float(json.loads(path.read_text())["deadline"])
    except (OSError, ValueError, KeyError):
        return 1
    while time.time() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.time())))
        if not path.exists():
            return 0
    return 0 if run_rollback(path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
