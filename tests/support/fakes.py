"""Fakes of ovsmgr's own interfaces, for unit tests (real switches are in tests/integration)."""

from __future__ import annotations

from collections.abc import Sequence

from ovsmgr.compiler.flows import Group
from ovsmgr.southbound.openflow import (
    BundleOp,
    BundleRefused,
    FlowMod,
    InstalledFlow,
    decode_flow,
    is_group,
)
from ovsmgr.southbound.openflow.groups import group_id_of, group_key
from ovsmgr.southbound.openflow.meters import MeterStats
from ovsmgr.switch.plan import flow_line


class FakeTable:
    """A `FlowTable` that applies bundles the way OVS does, all or nothing: an add replaces the flow
    with the same (table, priority, match); a strict delete removes the flow with that key. Groups:
    adding one that exists or modifying one that does not refuses the bundle; a flow that sends to
    a group that does not exist (yet) is refused; deleting a group deletes the flows that use it."""

    def __init__(self) -> None:
        self.flows: dict[bytes, FlowMod] = {}
        self.pushes: list[list[BundleOp]] = []

    def read(self, ours_only: bool = True) -> list[InstalledFlow]:
        return [InstalledFlow(mod, 0, 0) for mod in self.flows.values()]

    def meter_stats(self) -> dict[int, MeterStats]:
        return {}

    def push(self, ops: Sequence[BundleOp]) -> None:
        self.pushes.append(list(ops))
        flows = dict(self.flows)
        for op in ops:
            key = op.flow.key
            if is_group(op.flow) and not op.delete and (key in flows) != op.replaces:
                raise BundleRefused(f"group {'missing' if op.replaces else 'exists'}: {flow_line(op.flow)}", [])
            if op.delete:
                del flows[key]
                if is_group(op.flow):
                    gone = group_id_of(op.flow)
                    flows = {k: m for k, m in flows.items() if gone not in _groups_used(m)}
            else:
                missing = [g for g in _groups_used(op.flow) if group_key(g) not in flows]
                if missing:
                    raise BundleRefused(f"no group {missing[0]:#x}: {flow_line(op.flow)}", [])
                flows[key] = op.flow
        self.flows = flows


def _groups_used(mod: FlowMod) -> list[int]:
    flow = decode_flow(mod)
    return [a.group_id for a in flow.actions if isinstance(a, Group)] if flow is not None else []


def ops_text(ops: Sequence[BundleOp]) -> list[str]:
    """`+ table=..,priority=..,MATCH actions=..` (or `- ...`) for each op of a bundle."""
    return [f"{'-' if op.delete else '+'} {flow_line(op.flow)}" for op in ops]
