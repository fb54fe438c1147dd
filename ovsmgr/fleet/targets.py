"""Where each fleet switch is reached, and what the store keeps of its policy."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ovsmgr.fleet.fleetfile import SwitchSpec
from ovsmgr.fleet.state import DesiredSwitch, PolicySource
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.southbound.target import SYSTEM_STATE_DIR, SwitchTarget, resolve_target


class FleetError(Exception):
    """A fleet operation cannot go on; the message names the switch or the store."""


def state_root() -> Path:
    """Where the records of fleet switches that are not lab switches are kept, one directory each:
    two switches' bridges may share a name (br0 on every host)."""
    return Path(os.environ.get("OVSMGR_STATE_DIR") or SYSTEM_STATE_DIR) / "fleet"


def record_dir(spec: SwitchSpec) -> Path:
    """Where a switch's applied record is kept: the fleet file's `state_dir:`, else `state_root()`."""
    return Path(spec.state_dir) if spec.state_dir else state_root() / spec.name


def switch_target(spec: SwitchSpec) -> SwitchTarget:
    """The switch as `ovsmgr apply --db ... --openflow ...` would reach it."""
    if spec.db is None:
        raise FleetError(f"switch {spec.name}: no db: endpoint, so only a controller it connects to can serve it")
    target = resolve_target(spec.db)
    if spec.openflow is None and target.rundir is None:
        raise FleetError(f"switch {spec.name}: db {spec.db} is remote, so it needs openflow: ssl:HOST:PORT "
                         "(the bridge's pssl: listener)")
    if target.lab is None:
        target = dataclasses.replace(target, state_dir=record_dir(spec))
    return dataclasses.replace(target, openflow_target=spec.openflow)


def policy_source(policy: ResolvedPolicy) -> PolicySource:
    """The policy's files as the store keeps them: names and texts, in merge order."""
    files = tuple((name, Path(name).read_text(encoding="utf-8")) for name in policy.sources)
    return PolicySource(policy.digest, files)


def desired_switches(policies: dict[str, ResolvedPolicy], specs: dict[str, SwitchSpec]) -> dict[str, DesiredSwitch]:
    return {name: DesiredSwitch(policy.bridge, specs[name].datapath_id, policy_source(policy))
            for name, policy in policies.items()}
