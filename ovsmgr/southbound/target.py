"""Which switch a command talks to: the system OVS, a lab, or an explicit `--db`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DB = "unix:/var/run/openvswitch/db.sock"
SYSTEM_STATE_DIR = "/var/lib/ovsmgr"
LAB_STATE_FILE = "lab.json"


@dataclass(frozen=True)
class SwitchTarget:
    db: str
    """OVSDB endpoint (`unix:PATH` or `tcp:HOST:PORT`)."""
    rundir: Path | None
    """Where the bridge's `BRIDGE.mgmt` and ovs-vswitchd's control socket live (unix targets)."""
    state_dir: Path
    """Where ovsmgr keeps what it applied (for drift, rollback and rule names)."""
    lab: str | None = None
    openflow_target: str | None = None
    """Where to reach the bridge's flow table when it is not local: `tcp:HOST:PORT` of a passive
    OpenFlow listener on the bridge (`ovs-vsctl set-controller BRIDGE ptcp:PORT`)."""

    def openflow(self, bridge: str) -> str:
        """The OpenFlow endpoint of `bridge`: its management socket, or the `openflow_target`."""
        if self.openflow_target:
            return self.openflow_target
        rundir = self.rundir or Path(os.environ.get("OVS_RUNDIR") or "/var/run/openvswitch")
        return f"unix:{rundir}/{bridge}.mgmt"

    def appctl(self) -> str | None:
        """ovs-vswitchd's control socket, found through its pid file."""
        if self.rundir is None:
            return None
        try:
            pid = int((self.rundir / "ovs-vswitchd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return str(self.rundir / f"ovs-vswitchd.{pid}.ctl")


def _lab_dir(name: str) -> Path:
    return Path(os.environ.get("OVSMGR_LAB_DIR") or f"/run/ovsmgr/lab-{name}")


def resolve_target(db: str | None = None, lab: str | None = None) -> SwitchTarget:
    """`--db` wins; else a named lab; else the default lab when one is up; else the system OVS."""
    if db:
        rundir = Path(db.removeprefix("unix:")).parent if db.startswith("unix:") else None
        is_lab = rundir is not None and (rundir / LAB_STATE_FILE).exists()
        state = rundir if is_lab and rundir else Path(os.environ.get("OVSMGR_STATE_DIR") or SYSTEM_STATE_DIR)
        return SwitchTarget(db, rundir, state, lab=rundir.name if is_lab and rundir else None)
    name = lab or "ovsmgr"
    lab_dir = _lab_dir(name)
    if lab is not None or (lab_dir / LAB_STATE_FILE).exists():
        return SwitchTarget(f"unix:{lab_dir}/db.sock", lab_dir, lab_dir, lab=name)
    rundir = Path(os.environ.get("OVS_RUNDIR") or "/var/run/openvswitch")
    return SwitchTarget(f"unix:{rundir}/db.sock", rundir,
                        Path(os.environ.get("OVSMGR_STATE_DIR") or SYSTEM_STATE_DIR))
