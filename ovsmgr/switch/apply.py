"""plan, apply, rollback and status against one switch.

The order of an apply keeps the promise "a failed push leaves the switch as it
was": the policy is compiled and the switch read before anything is written;
flows go in one atomic bundle; only after the switch accepted it are OVSDB
settings (ports, external_ids) and the applied-state file written.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovsmgr.compiler import CompiledPolicy
from ovsmgr.compiler.pipeline import cookie_parts
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.southbound.conntrack import set_zone_limit, zone_usage
from ovsmgr.southbound.openflow import FlowEntry, OfctlFlowTable, is_managed, parse_flow_line
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.lockout import Endpoint, LiveSwitchView, LockoutError, check_lockout
from ovsmgr.switch.plan import Plan, desired_entries, flows_digest, full_replacement, make_plan
from ovsmgr.switch.statefile import atomic_write

EXT = "ovsmgr"
"""Prefix of the Bridge external_ids keys ovsmgr writes."""


class ApplyError(Exception):
    pass


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    generation: int
    rollback_at: float | None = None
    warnings: tuple[str, ...] = ()


def policy_digest(compiled: CompiledPolicy) -> str:
    return hashlib.sha256(compiled.policy.model.model_dump_json(by_alias=True).encode()).hexdigest()


def state_path(target: SwitchTarget, bridge: str) -> Path:
    return target.state_dir / f"ovsmgr-{bridge}.json"


def rollback_path(target: SwitchTarget, bridge: str) -> Path:
    return target.state_dir / f"ovsmgr-{bridge}.rollback.json"


def read_state(target: SwitchTarget, bridge: str) -> dict[str, Any]:
    try:
        return dict(json.loads(state_path(target, bridge).read_text()))
    except FileNotFoundError:
        return {}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(value))


def bridge_exists(target: SwitchTarget, bridge: str) -> bool:
    with SwitchDB(target.db) as db:
        return bridge in db.bridges()


def plan_policy(compiled: CompiledPolicy, target: SwitchTarget) -> Plan:
    bridge = compiled.policy.bridge
    if not bridge_exists(target, bridge):
        return make_plan([], desired_entries(compiled))
    table = OfctlFlowTable(target.mgmt(bridge))
    everything = table.dump(ours_only=False)
    plan = make_plan([e for e in everything if is_managed(e)], desired_entries(compiled))
    plan.foreign = [e for e in everything if not cookie_parts(e.cookie)[0]]
    return plan


def apply_policy(
    compiled: CompiledPolicy, target: SwitchTarget, *, full: bool = False, confirm: float | None = None,
    force: bool = False, mgmt: Sequence[Endpoint] = (),
) -> ApplyResult:
    """Apply atomically; refuse (LockoutError) a policy that cuts the switch's own connections
    unless `force`; if anything after the flow push fails, put the previous flows back."""
    policy = compiled.policy
    bridge = policy.bridge
    table = OfctlFlowTable(target.mgmt(bridge))
    with SwitchDB(target.db) as db:
        created = bridge not in db.bridges()
        if not force:
            cuts = check_lockout(compiled, LiveSwitchView(db, target, bridge, created), mgmt,
                                 os.environ.get("SSH_CONNECTION"))
            if cuts:
                raise LockoutError(cuts)
        if created:
            db.ensure_bridge(bridge, datapath_type=datapath_type(policy.datapath, target), fail_mode="secure")
        current = table.dump()
        desired = desired_entries(compiled)
        plan = full_replacement(current, desired) if full else make_plan(current, desired)
        try:
            table.push(plan.bundle())
            warnings = ensure_switch_settings(db, compiled.policy, target)
            state = read_state(target, bridge)
            generation = int(state.get("generation", 0)) + 1
            record = _record(compiled, desired, generation)
            db.set_external_ids(bridge, {f"{EXT}-{k}": str(v) for k, v in record.items() if k not in ("flows", "rules")})
        except Exception as exc:
            _undo(db, table, bridge, created, current, exc)
            raise
    _write_json(state_path(target, bridge), record)
    rollback_at = None
    if confirm is not None:
        rollback_at = _arm_rollback(target, bridge, current, state, confirm)
    return ApplyResult(plan, generation, rollback_at, tuple(warnings))


def _undo(db: SwitchDB, table: OfctlFlowTable, bridge: str, created: bool, previous: list[FlowEntry],
          exc: Exception) -> None:
    """After a failed apply: remove a bridge this apply created, else put the previous flows back
    (the push may have gone through before OVSDB refused a port). Failing that too is said in `exc`."""
    try:
        if created:
            db.delete_bridge(bridge)
        else:
            table.push(make_plan(table.dump(), previous).bundle())
    except Exception as undo_exc:  # the original error is what the operator must see first
        exc.add_note(f"restoring the previous flows of {bridge} failed too: {undo_exc}")
    else:
        exc.add_note(f"{bridge} was left as it was before this apply"
                     + ("" if created else " (the previous flows are back)"))


def datapath_type(policy_datapath: str, target: SwitchTarget) -> str:
    """A lab switch is userspace whatever the policy says (its DPDK lab too uses netdev bridges)."""
    if target.lab is not None or policy_datapath == "dpdk":
        return "netdev"
    return policy_datapath


def ensure_switch_settings(db: SwitchDB, policy: ResolvedPolicy, target: SwitchTarget) -> list[str]:
    """Bridge settings, ports and the conntrack zone limit; returns warnings for the operator.

    Shared by apply and the controller, so both treat ports and limits the same way."""
    db.ensure_bridge(policy.bridge, datapath_type=datapath_type(policy.datapath, target), fail_mode=policy.fail_mode)
    have = db.ofports(policy.bridge)
    for port in policy.ports.values():
        if port.interface is not None or port.type == "dpdk":
            options = {"dpdk-devargs": port.devargs} if port.devargs else None
            # The OVSDB Port and Interface are named after the Linux interface OVS must open.
            db.ensure_port(policy.bridge, port.interface or port.name, port.ofport, port.type or "", options)
        elif port.name in have and have[port.name] != port.ofport:
            raise ApplyError(f"port {port.name} is ofport {have[port.name]} on {policy.bridge}, "
                             f"the policy says {port.ofport}")
    return _sync_zone_limit(target, policy.ct_zone, policy.max_connections)


def _sync_zone_limit(target: SwitchTarget, zone: int, limit: int | None) -> list[str]:
    """Set the zone's conntrack limit, or remove it when the policy no longer sets one."""
    ctl = target.appctl()
    if ctl is None:
        if limit is None:
            return []
        return [f"conntrack.max_connections {limit} is NOT enforced: ovs-vswitchd's control socket "
                f"is not reachable from here (a remote --db), and OVS 3.1 has no OVSDB column for it"]
    set_zone_limit(ctl, zone, limit)
    return []


def _record(compiled: CompiledPolicy, desired: list[FlowEntry], generation: int) -> dict[str, Any]:
    return {
        "generation": generation,
        "digest": policy_digest(compiled),
        "flows-digest": flows_digest(desired),
        "applied-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "applied-by": f"{getpass.getuser()}@{socket.gethostname()}",
        "sources": ",".join(compiled.policy.sources),
        "flow-count": len(desired),
        "ct-zone": compiled.policy.ct_zone,
        "rules": {f"{k:#x}": v for k, v in compiled.rule_ids.items()},
        "flows": [e.add_line().removeprefix("add ") for e in desired],
    }


# --- confirm / rollback ------------------------------------------------------------------------
def _arm_rollback(target: SwitchTarget, bridge: str, previous: list[FlowEntry], previous_state: dict[str, Any],
                  seconds: float) -> float:
    """Keep the previous flows and start a watcher that restores them unless confirmed in time."""
    import sys

    deadline = time.time() + seconds
    path = rollback_path(target, bridge)
    _write_json(path, {
        "deadline": deadline, "db": target.db, "rundir": str(target.rundir) if target.rundir else None,
        "state_dir": str(target.state_dir), "bridge": bridge,
        "flows": [e.add_line().removeprefix("add ") for e in previous], "state": previous_state,
    })
    proc = subprocess.Popen(
        [sys.executable, "-m", "ovsmgr.switch.rollback", str(path)], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    data = json.loads(path.read_text())
    data["watcher"] = proc.pid
    _write_json(path, data)
    return deadline


def confirm_apply(target: SwitchTarget, bridge: str) -> bool:
    """Cancel a pending rollback; False when there was none (or it already ran)."""
    path = rollback_path(target, bridge)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    path.unlink(missing_ok=True)
    pid = data.get("watcher")
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    return True


def run_rollback(path: Path) -> bool:
    """Restore the flows saved at apply time if the rollback file is still there (not confirmed)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    target = SwitchTarget(data["db"], Path(data["rundir"]) if data["rundir"] else None, Path(data["state_dir"]))
    bridge = data["bridge"]
    table = OfctlFlowTable(target.mgmt(bridge))
    previous = [parse_flow_line(line) for line in data["flows"]]
    table.push(make_plan(table.dump(), previous).bundle())
    state = dict(data.get("state") or {})
    generation = int(read_state(target, bridge).get("generation", 0)) + 1
    state.update({"generation": generation, "rolled-back-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "flows-digest": flows_digest(previous), "flows": data["flows"]})
    with SwitchDB(target.db) as db:
        db.set_external_ids(bridge, {f"{EXT}-generation": str(generation),
                                     f"{EXT}-flows-digest": state["flows-digest"],
                                     f"{EXT}-rolled-back-at": state["rolled-back-at"]})
    _write_json(state_path(target, bridge), state)
    path.unlink(missing_ok=True)
    return True


# --- status ------------------------------------------------------------------------------------
def switch_status(target: SwitchTarget, bridge: str) -> dict[str, Any]:
    """What is applied, by whom and when, and whether the flows drifted since."""
    state = read_state(target, bridge)
    with SwitchDB(target.db) as db:
        if bridge not in db.bridges():
            return {"bridge": bridge, "exists": False, "applied": False}
        info = db.bridge_info(bridge)
    current = OfctlFlowTable(target.mgmt(bridge)).dump()
    ext = {k.removeprefix(f"{EXT}-"): v for k, v in info["external_ids"].items() if k.startswith(f"{EXT}-")}
    applied = [parse_flow_line(line) for line in state.get("flows", [])]
    drift = make_plan(current, applied) if state else None
    pending = rollback_path(target, bridge).exists()
    appctl = target.appctl()
    zone = state.get("ct-zone")
    return {
        "bridge": bridge, "exists": True, "applied": bool(ext), "fail_mode": info["fail_mode"],
        "datapath_type": info["datapath_type"], "controllers": info["controllers"],
        "generation": int(ext["generation"]) if "generation" in ext else None,
        "applied_at": ext.get("applied-at"), "applied_by": ext.get("applied-by"),
        "sources": ext.get("sources"), "digest": ext.get("digest"),
        "flows": len(current), "drifted": bool(drift and not drift.empty),
        "drift": drift.counts() if drift else None, "rollback_pending": pending,
        "conntrack": zone_usage(appctl, int(zone)).to_json() if appctl and zone is not None else None,
    }
