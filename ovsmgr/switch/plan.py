"""The difference between a switch's flows and a compiled policy, named by rule.

Pure: it compares `FlowEntry` lists. Flows are identified as OpenFlow does
(table, priority, match); a flow whose actions or cookie differ is changed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ovsmgr.compiler import CompiledPolicy
from ovsmgr.compiler.pipeline import CookieKind, cookie_parts
from ovsmgr.render.ofctl import actions_text, match_text
from ovsmgr.southbound.openflow import FlowEntry, bundle_lines


def desired_entries(compiled: CompiledPolicy) -> list[FlowEntry]:
    """The compiled flows as the switch will print them (rendered once, never re-parsed)."""
    return [FlowEntry(int(f.table), f.priority, match_text(f.match), actions_text(f.actions), f.cookie)
            for f in compiled.flows]


def flows_digest(entries: Iterable[FlowEntry]) -> str:
    """Digest of a flow set, independent of order: what status compares to detect drift."""
    h = hashlib.sha256()
    for entry in sorted(entries):
        h.update(f"{entry.cookie:#x} {entry.table} {entry.priority} {entry.match} {entry.actions}\n".encode())
    return h.hexdigest()


@dataclass
class Plan:
    add: list[FlowEntry] = field(default_factory=list)
    delete: list[FlowEntry] = field(default_factory=list)
    change: list[tuple[FlowEntry, FlowEntry]] = field(default_factory=list)
    foreign: list[FlowEntry] = field(default_factory=list)
    """Flows on the bridge that are not ovsmgr's: reported, never touched."""

    @property
    def empty(self) -> bool:
        return not (self.add or self.delete or self.change)

    def bundle(self) -> list[str]:
        return bundle_lines([*self.add, *(new for _, new in self.change)], self.delete)

    def counts(self) -> dict[str, int]:
        return {"add": len(self.add), "delete": len(self.delete), "change": len(self.change)}


def make_plan(current: Iterable[FlowEntry], desired: Iterable[FlowEntry]) -> Plan:
    have = {e.key: e for e in current}
    want = {e.key: e for e in desired}
    plan = Plan()
    for key, entry in want.items():
        old = have.get(key)
        if old is None:
            plan.add.append(entry)
        elif (old.actions, old.cookie) != (entry.actions, entry.cookie):
            plan.change.append((old, entry))
    plan.delete = [e for k, e in have.items() if k not in want]
    plan.add.sort()
    plan.delete.sort()
    plan.change.sort()
    return plan


def full_replacement(current: Iterable[FlowEntry], desired: Iterable[FlowEntry]) -> Plan:
    """Delete every flow of ours and add every desired one, still in one bundle."""
    return Plan(add=sorted(desired), delete=sorted(current))


def rule_of(entry: FlowEntry, names: dict[int, str]) -> str:
    _, kind, rid = cookie_parts(entry.cookie)
    if kind is CookieKind.INFRA:
        return "(pipeline)"
    if kind is CookieKind.DEFAULT:
        return "(default)"
    return names.get(rid, f"(removed rule {rid:#010x})")


def group_by_rule(plan: Plan, names: dict[int, str]) -> dict[str, list[tuple[str, FlowEntry]]]:
    """`+`, `-`, `~` entries per rule name, rules in name order."""
    groups: dict[str, list[tuple[str, FlowEntry]]] = defaultdict(list)
    for entry in plan.add:
        groups[rule_of(entry, names)].append(("+", entry))
    for entry in plan.delete:
        groups[rule_of(entry, names)].append(("-", entry))
    for _, entry in plan.change:
        groups[rule_of(entry, names)].append(("~", entry))
    return dict(sorted(groups.items()))
