"""Runtime changes: what the API changed on top of the policy files, kept apart from them.

Controller mode takes address-set members and rules while it runs. Those
changes are not written into the operator's YAML (which may come from
configuration management): they are kept as a small overlay in the state file
`ovsmgr-BRIDGE.runtime.json` next to the applied state, applied on top of the
files at every start and reload, and shown apart from the files by `status`.

The overlay is plain data and its operations are pure: each returns a new
`RuntimeChanges` and the effective policy data it gives (`apply_to`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovsmgr.policy.ir import IPNetwork
from ovsmgr.policy.terms import TermError, parse_prefix
from ovsmgr.switch.statefile import atomic_write

VERSION = 1


class ChangeError(Exception):
    """A runtime change that cannot be made; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400, diagnostics: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.diagnostics = diagnostics or []


@functools.lru_cache(maxsize=65536)
def parse_member(text: str) -> IPNetwork:
    """An address-set member as the policy language writes it; a clear error when it is not one.
    Cached: a set change compares every member of the set with the new ones."""
    if not isinstance(text, str) or text.startswith("@"):
        raise ChangeError(f"{text!r} is not an address or prefix (sets cannot be nested at run time)")
    try:
        return parse_prefix(text)
    except TermError as exc:
        raise ChangeError(str(exc)) from exc


@dataclass(frozen=True)
class SetDelta:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class AddedRule:
    rule: dict[str, Any]
    before: str | None = None
    after: str | None = None


@dataclass(frozen=True)
class RuntimeChanges:
    sets: dict[str, SetDelta] = field(default_factory=dict)
    added: tuple[AddedRule, ...] = ()
    removed: tuple[str, ...] = ()
    enabled: dict[str, bool] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (any(d.add or d.remove for d in self.sets.values()) or self.added or self.removed or self.enabled)

    # --- persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "sets": {k: {"add": list(v.add), "remove": list(v.remove)} for k, v in sorted(self.sets.items())
                     if v.add or v.remove},
            "rules": {
                "added": [{"rule": a.rule, "before": a.before, "after": a.after} for a in self.added],
                "removed": list(self.removed),
                "enabled": dict(sorted(self.enabled.items())),
            },
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> RuntimeChanges:
        if data.get("version") != VERSION:
            raise ValueError(f"runtime state version {data.get('version')!r}, expected {VERSION}")
        rules = data.get("rules", {})
        return RuntimeChanges(
            sets={k: SetDelta(tuple(v.get("add", ())), tuple(v.get("remove", ()))) for k, v in data.get("sets", {}).items()},
            added=tuple(AddedRule(a["rule"], a.get("before"), a.get("after")) for a in rules.get("added", ())),
            removed=tuple(rules.get("removed", ())),
            enabled={k: bool(v) for k, v in rules.get("enabled", {}).items()},
        )

    # --- operations (pure) ---------------------------------------------------------------------
    def set_members(self, name: str, file_members: list[str], add: list[str], remove: list[str]) -> RuntimeChanges:
        """Add and remove members of set `name` whose files list `file_members`."""
        delta = self.sets.get(name, SetDelta())
        adds, removes = list(delta.add), list(delta.remove)
        in_file = {parse_member(m): m for m in file_members if not m.startswith("@")}
        for text in add:
            net = parse_member(text)
            removes = [m for m in removes if parse_member(m) != net]
            if net not in in_file and all(parse_member(m) != net for m in adds):
                adds.append(text)
        for text in remove:
            net = parse_member(text)
            adds = [m for m in adds if parse_member(m) != net]
            if net in in_file and in_file[net] not in removes:
                removes.append(in_file[net])
        sets = dict(self.sets)
        sets[name] = SetDelta(tuple(adds), tuple(removes))
        return dataclasses.replace(self, sets=sets)

    def add_rule(self, rule: dict[str, Any], before: str | None, after: str | None) -> RuntimeChanges:
        return dataclasses.replace(self, added=(*self.added, AddedRule(rule, before, after)))

    def remove_rule(self, name: str) -> RuntimeChanges:
        added = tuple(a for a in self.added if a.rule.get("name") != name)
        enabled = {k: v for k, v in self.enabled.items() if k != name}
        removed = self.removed if len(added) != len(self.added) else (*self.removed, name)
        return dataclasses.replace(self, added=added, removed=removed, enabled=enabled)

    def set_enabled(self, name: str, enabled: bool) -> RuntimeChanges:
        return dataclasses.replace(self, enabled={**self.enabled, name: enabled})

    def apply_to(self, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The effective policy data: the files' data with these changes on top, and the changes
        that no longer apply to the files (a set or rule that is gone), which are left out."""
        out = copy.copy(data)
        stale: list[str] = []
        out["addresses"] = dict(data.get("addresses", {}))
        for name, delta in self.sets.items():
            if name not in out["addresses"]:
                stale.append(f"set {name}: no such address set in the files")
                continue
            out["addresses"][name] = effective_members(out["addresses"][name], delta)
        firewall = dict(data.get("firewall", {}))
        rules: list[dict[str, Any]] = list(firewall.get("rules", []))
        nat: list[dict[str, Any]] = list(data.get("nat", []))
        names = ({r["name"] for r in rules} | {n["name"] for n in nat}) if self._touches_rules() else set()
        for added in self.added:
            rules, problem = insert_rule(rules, added, names)
            if problem:
                stale.append(problem)
            else:
                names.add(added.rule["name"])
        if self.removed:
            gone = set(self.removed)
            stale += [f"rule {n}: no such rule in the files" for n in self.removed if n not in names]
            rules = [r for r in rules if r["name"] not in gone]
            nat = [n for n in nat if n["name"] not in gone]
        if self.enabled:
            stale += [f"rule {n}: no such rule in the files" for n in self.enabled if n not in names]
            rules = [_with_enabled(r, self.enabled) for r in rules]
            nat = [_with_enabled(n, self.enabled) for n in nat]
        firewall["rules"] = rules
        out["firewall"], out["nat"] = firewall, nat
        return out, stale

    def _touches_rules(self) -> bool:
        return bool(self.added or self.removed or self.enabled)

    def describe(self) -> list[str]:
        """One line per change, for `ovsmgr status`."""
        lines = []
        for name, delta in sorted(self.sets.items()):
            lines += [f"set {name} + {m}" for m in delta.add] + [f"set {name} - {m}" for m in delta.remove]
        for added in self.added:
            where = f" before {added.before}" if added.before else f" after {added.after}" if added.after else ""
            lines.append(f"rule {added.rule.get('name')} added{where}")
        lines += [f"rule {n} removed" for n in self.removed]
        lines += [f"rule {n} {'enabled' if on else 'disabled'}" for n, on in sorted(self.enabled.items())]
        return lines


def _with_enabled(rule: dict[str, Any], enabled: dict[str, bool]) -> dict[str, Any]:
    name = rule["name"]
    return {**rule, "enabled": enabled[name]} if name in enabled else rule


def effective_members(file_members: list[str], delta: SetDelta) -> list[str]:
    if not delta.remove:
        return [*file_members, *delta.add]
    removed = {parse_member(m) for m in delta.remove}
    kept = [m for m in file_members if m.startswith("@") or parse_member(m) not in removed]
    return kept + list(delta.add)


def insert_rule(rules: list[dict[str, Any]], added: AddedRule, names: set[str]) -> tuple[list[dict[str, Any]], str | None]:
    """`rules` with the added rule in its place; or a reason it cannot go in."""
    name = added.rule.get("name")
    if name in names:
        return rules, f"rule {name}: a rule of that name is in the files now"
    anchor = added.before or added.after
    if anchor is None:
        return [*rules, dict(added.rule)], None
    at = next((i for i, r in enumerate(rules) if r["name"] == anchor), None)
    if at is None:
        return rules, f"rule {name}: rule {anchor} to place it by is gone"
    at += 0 if added.before else 1
    return [*rules[:at], dict(added.rule), *rules[at:]], None


def load_changes(path: Path) -> RuntimeChanges:
    try:
        return RuntimeChanges.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return RuntimeChanges()


def save_changes(path: Path, changes: RuntimeChanges) -> None:
    """Write atomically (rename) and durably (fsync): an acknowledged change survives a crash."""
    atomic_write(path, json.dumps(changes.to_json(), indent=1))
