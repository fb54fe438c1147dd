"""The difference between a switch's flows and a compiled policy, named by rule.

Pure: it compares the flows a switch reported (`InstalledFlow`, wire form) with
compiled ones. Flows are identified as OpenFlow does (table, priority, match);
a flow whose cookie or instructions differ is changed. The comparison is on the
wire form first (ovsmgr writes flows exactly as Open vSwitch reports them, so an
unchanged flow is equal byte for byte), and on the decoded model for anything
that is not, so a flow written in another but equivalent form is not a change.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ovsmgr.compiler import CompiledPolicy
from ovsmgr.compiler.flows import Flow, SelectGroup
from ovsmgr.compiler.pipeline import CookieKind, cookie_parts
from ovsmgr.southbound.openflow import (
    BundleOp,
    FlowMod,
    InstalledFlow,
    decode_flow,
    describe,
    encode_flow,
    encode_group,
    is_group,
)
from ovsmgr.southbound.openflow.meters import is_meter, meter_entry, meter_text

Desired = dict[bytes, FlowMod]
"""Wire key (table, priority, match) -> the flow in its wire form."""


def desired_flows(flows: Iterable[Flow], models: dict[FlowMod, Flow] | None = None,
                  groups: Iterable[SelectGroup] = ()) -> Desired:
    """Compiled flows (and the select groups they use) in wire form; `models` (if given) remembers
    each flow's model, for plans to print."""
    out: Desired = {}
    for flow in flows:
        mod = encode_flow(flow)
        out[mod.key] = mod
        if models is not None:
            models[mod] = flow
    for group in groups:
        mod = encode_group(group)
        out[mod.key] = mod
    return out


def desired_of(compiled: CompiledPolicy, models: dict[FlowMod, Flow] | None = None) -> Desired:
    """A compiled policy's flows, select groups and meters in wire form."""
    out = desired_flows(compiled.flows, models, compiled.groups)
    out.update((entry.key, entry) for entry in map(meter_entry, compiled.meters))
    return out


def desired_mods(mods: Iterable[FlowMod]) -> Desired:
    return {mod.key: mod for mod in mods}


def flows_digest(mods: Iterable[FlowMod]) -> str:
    """Digest of a flow set as the switch reports it, independent of order: `status` compares the
    switch's to the one recorded at apply time to say whether it drifted."""
    total = 0
    for mod in mods:
        total += int.from_bytes(hashlib.blake2b(mod.key + mod.body, digest_size=16).digest(), "big")
    return f"{total % (1 << 128):032x}"


@dataclass(frozen=True)
class Named:
    """A flow and the rule it belongs to, as a bundle error names it (rendered only if needed)."""

    mod: FlowMod
    names: dict[int, str]

    def __str__(self) -> str:
        return f"rule {rule_of(self.mod.cookie, self.names)} ({flow_line(self.mod)})"


@dataclass
class Plan:
    add: list[FlowMod] = field(default_factory=list)
    delete: list[InstalledFlow] = field(default_factory=list)
    change: list[tuple[InstalledFlow, FlowMod]] = field(default_factory=list)
    foreign: list[InstalledFlow] = field(default_factory=list)
    """Flows on the bridge that are not ovsmgr's: reported, never touched."""

    @property
    def empty(self) -> bool:
        return not (self.add or self.delete or self.change)

    def counts(self) -> dict[str, int]:
        return {"add": len(self.add), "delete": len(self.delete), "change": len(self.change)}

    def bundle(self, names: dict[int, str] | None = None) -> list[BundleOp]:
        """Deletes first, then adds (an add replaces a flow with the same key), each in ascending
        (table, priority) order: the order Open vSwitch digests fastest (benchmarks/README.md).
        Groups come in before the flows that use them and go after them (deleting a group deletes
        the flows that still use it): flow deletes, group adds and changes, flow adds, group deletes."""
        names = names or {}
        deletes = sorted(s.mod for s in self.delete)
        changed = {new.key for _, new in self.change}
        adds = sorted([*self.add, *(new for _, new in self.change)])

        def ops(mods: list[FlowMod], delete: bool, groups: bool) -> list[BundleOp]:
            return [BundleOp(mod, delete, Named(mod, names), mod.key in changed)
                    for mod in mods if is_group(mod) == groups]

        return ops(deletes, True, False) + ops(adds, False, True) + ops(adds, False, False) + ops(deletes, True, True)

    def inverse(self) -> Plan:
        """What takes this plan back (after it was pushed)."""
        return Plan(add=[s.mod for s in self.delete], delete=[InstalledFlow(mod, 0, 0) for mod in self.add],
                    change=[(InstalledFlow(new, 0, 0), installed.mod) for installed, new in self.change])


def make_plan(current: Iterable[InstalledFlow], desired: Desired) -> Plan:
    """What to push so the switch's flows (ovsmgr's, `current`) become `desired`."""
    plan = Plan()
    seen: set[bytes] = set()
    for installed in current:
        mod = installed.mod
        want = desired.get(mod.key)
        if want is not None and want.body == mod.body:
            seen.add(mod.key)
            continue
        key = _canonical_key(mod)
        want = desired.get(key)
        if want is None or key in seen:
            plan.delete.append(installed)
        elif _same(mod, want):
            seen.add(key)
        else:
            seen.add(key)
            plan.change.append((installed, want))
    plan.add = [mod for key, mod in desired.items() if key not in seen]
    return plan


def _canonical_key(mod: FlowMod) -> bytes:
    """The key of a flow as ovsmgr would write it (the same as `mod.key` unless written otherwise)."""
    decoded = decode_flow(mod)
    return encode_flow(decoded).key if decoded is not None else mod.key


def _same(installed: FlowMod, wanted: FlowMod) -> bool:
    """Equal in meaning: the same cookie and actions once decoded."""
    a, b = decode_flow(installed), decode_flow(wanted)
    return a is not None and b is not None and (a.actions, a.cookie) == (b.actions, b.cookie)


def full_replacement(current: Iterable[InstalledFlow], desired: Desired) -> Plan:
    """Delete every flow of ours and add every desired one, still in one bundle."""
    return Plan(add=list(desired.values()), delete=list(current))


def rule_of(cookie: int, names: dict[int, str]) -> str:
    _, kind, rid = cookie_parts(cookie)
    if kind is CookieKind.INFRA:
        return "(pipeline)"
    if kind is CookieKind.DEFAULT:
        return "(default)"
    return names.get(rid, f"(removed rule {rid:#010x})")


def flow_line(mod: FlowMod, models: dict[FlowMod, Flow] | None = None) -> str:
    """`table=..,priority=..,MATCH actions=..` of a flow (decoded when its model is not at hand)."""
    from ovsmgr.render.ofctl import actions_text, match_text  # for people only: not on apply's path

    if is_meter(mod):
        return meter_text(mod)
    flow = (models or {}).get(mod) or decode_flow(mod)
    if flow is None:
        return describe(mod)
    match = match_text(flow.match)
    return f"table={int(flow.table)},priority={flow.priority}{',' if match else ''}{match} " \
           f"actions={actions_text(flow.actions)}"


def group_by_rule(plan: Plan, names: dict[int, str]) -> dict[str, list[tuple[str, FlowMod]]]:
    """`+`, `-`, `~` entries per rule name, rules in name order."""
    groups: dict[str, list[tuple[str, FlowMod]]] = defaultdict(list)
    for mod in plan.add:
        groups[rule_of(mod.cookie, names)].append(("+", mod))
    for installed in plan.delete:
        groups[rule_of(installed.cookie, names)].append(("-", installed.mod))
    for _, new in plan.change:
        groups[rule_of(new.cookie, names)].append(("~", new))
    return dict(sorted(groups.items()))


def drift_counts(current: Sequence[InstalledFlow], recorded: Sequence[FlowMod]) -> dict[str, int]:
    """Missing, unexpected and changed flows of the switch against those recorded at apply time."""
    have = {s.mod.key: s.mod.body for s in current}
    want = {mod.key: mod.body for mod in recorded}
    return {"add": sum(1 for k in want if k not in have), "delete": sum(1 for k in have if k not in want),
            "change": sum(1 for k, body in want.items() if k in have and have[k] != body)}
