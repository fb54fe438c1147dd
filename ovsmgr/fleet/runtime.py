"""Runtime changes to fleet switches through the store: `ovsmgr fleet set|rule ... --switch NAME|--all`.

The same changes `ovsmgr set` and `ovsmgr rule` make through one controller's API (address-set
members, rules added, removed, enabled, disabled), kept the same way: an overlay on top of the
policy files (`ovsmgr.controller.runtime.RuntimeChanges`), here in the `runtime` column of the
switch's Policy row. A change is validated for every switch it names against what that switch runs
(its released files plus the changes it has), as a controller validates one; if it does not fit one
of them, nothing is written. Then one transaction writes the next fleet generation: each named
switch gets a Policy row of its files plus its new changes (by a digest of both, the one its
controller records), wanted and released at once. The active `controller --fleet` applies it like
any release, and the command waits for it as `fleet apply` does.

A later `fleet apply` keeps each switch's runtime changes on top of its new files (`with_runtime`);
one that no longer fits the files (its set or rule is gone) is left out by the controller and
logged, as `ovsmgr controller` does after a reload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ovsmgr.controller import policydata
from ovsmgr.controller.runtime import ChangeError, RuntimeChanges
from ovsmgr.fleet.fleetfile import Fleet
from ovsmgr.fleet.state import DesiredSwitch, PolicySource, StoreState
from ovsmgr.fleet.targets import FleetError
from ovsmgr.policy import PolicyError

Change = Callable[[RuntimeChanges, dict[str, Any]], RuntimeChanges]
"""A change: the switch's runtime changes and its files' policy data -> its new runtime changes."""


def changes_of(source: PolicySource) -> RuntimeChanges:
    return RuntimeChanges.from_json(json.loads(source.runtime)) if source.runtime else RuntimeChanges()


def with_changes(source: PolicySource, file_digest: str, changes: RuntimeChanges) -> PolicySource:
    """The policy's files with `changes` on top; its digest is the one a controller records for them
    (`Engine._digest`): the files' digest alone when there are no changes."""
    if changes.empty:
        return PolicySource(file_digest, source.files)
    runtime = json.dumps(changes.describe())
    digest = hashlib.sha256(f"{file_digest}\n{runtime}".encode()).hexdigest()
    return PolicySource(digest, source.files, json.dumps(changes.to_json(), sort_keys=True))


def file_data(source: PolicySource) -> tuple[str, dict[str, Any]]:
    """The files' digest and policy data, loaded from their texts as the store keeps them."""
    with tempfile.TemporaryDirectory(prefix="ovsmgr-fleet-") as tmp:
        paths = []
        for i, (name, text) in enumerate(source.files):
            path = Path(tmp) / f"{i:02d}-{Path(name).name}"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        policy, data = policydata.load_files(paths)
    return policy.digest, data


def targets(fleet: Fleet, names: Iterable[str], everyone: bool) -> list[str]:
    """The switches a change goes to: those named, or every switch served by controllers (`--all`)."""
    served = [n for n, spec in fleet.switches.items() if spec.controllers]
    chosen = served if everyone else list(dict.fromkeys(names))
    if not chosen:
        raise FleetError("name the switches (--switch NAME, repeated) or --all")
    for name in chosen:
        if name not in fleet.switches:
            raise FleetError(f"switch {name} is not in {fleet.path}")
        if name not in served:
            raise FleetError(f"switch {name} has no controllers: in {fleet.path}, so nothing would apply a "
                             "runtime change to it (fleet apply pushes its files)")
    return chosen


def plan_change(state: StoreState, names: list[str], change: Change) -> dict[str, PolicySource]:
    """Each switch's new policy with the change made, validated; ChangeError naming every switch
    it does not fit (then nothing may be written)."""
    out: dict[str, PolicySource] = {}
    problems: list[str] = []
    for name in names:
        row = state.switches.get(name)
        source = state.policies.get(row.release) if row is not None and row.release else None
        if source is None:
            problems.append(f"switch {name}: the store released no policy to it yet (fleet apply first)")
            continue
        try:
            digest, data = file_data(source)
            changes = change(changes_of(source), data)
            effective, _ = changes.apply_to(data)
            policydata.resolve_data(effective, "<runtime changes>")
        except PolicyError as exc:
            problems.append(f"switch {name}: " + "; ".join(policydata.errors_of(exc)))
            continue
        except ChangeError as exc:
            problems.append(f"switch {name}: {exc}")
            continue
        out[name] = with_changes(source, digest, changes)
    if problems:
        raise ChangeError("the change is refused, no switch changed: " + "; ".join(problems), 409, problems)
    return out


def with_runtime(desired: dict[str, DesiredSwitch], state: StoreState) -> dict[str, DesiredSwitch]:
    """A new generation from the fleet file keeps each switch's runtime changes on its new files."""
    out = dict(desired)
    for name, want in desired.items():
        row = state.switches.get(name)
        current = state.policies.get(row.policy) if row is not None and row.policy else None
        if current is not None and current.runtime:
            out[name] = dataclasses.replace(want, policy=with_changes(want.policy, want.policy.digest,
                                                                      changes_of(current)))
    return out


# --- the changes, as the controller's API makes them ---------------------------------------------------
def set_members(name: str, add: list[str], remove: list[str]) -> Change:
    def change(changes: RuntimeChanges, data: dict[str, Any]) -> RuntimeChanges:
        sets = policydata.address_sets(data)
        if name not in sets:
            raise ChangeError(f"no address set {name!r}", 404)
        return changes.set_members(name, sets[name], add, remove)
    return change


def add_rule(rule: dict[str, Any], before: str | None, after: str | None) -> Change:
    def change(changes: RuntimeChanges, data: dict[str, Any]) -> RuntimeChanges:
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str):
            raise ChangeError("a rule needs a name")
        if name in _rule_names(changes.apply_to(data)[0]):
            raise ChangeError(f"rule {name} exists already", 409)
        return changes.add_rule(rule, before, after)
    return change


def remove_rule(name: str) -> Change:
    def change(changes: RuntimeChanges, data: dict[str, Any]) -> RuntimeChanges:
        _require(name, changes, data)
        return changes.remove_rule(name)
    return change


def set_enabled(name: str, enabled: bool) -> Change:
    def change(changes: RuntimeChanges, data: dict[str, Any]) -> RuntimeChanges:
        _require(name, changes, data)
        return changes.set_enabled(name, enabled)
    return change


def _rule_names(data: dict[str, Any]) -> set[str]:
    return {r["name"] for r in policydata.firewall_rules(data)} | {n["name"] for n in policydata.nat_rules(data)}


def _require(name: str, changes: RuntimeChanges, data: dict[str, Any]) -> None:
    if name not in _rule_names(changes.apply_to(data)[0]):
        raise ChangeError(f"no rule {name!r}", 404)
