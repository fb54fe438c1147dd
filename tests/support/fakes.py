"""Fakes of ovsmgr's own interfaces, for unit tests (real switches are in tests/integration)."""

from __future__ import annotations

from collections.abc import Sequence

from ovsmgr.southbound.openflow import BundleOp, FlowMod, InstalledFlow
from ovsmgr.southbound.openflow.meters import MeterStats
from ovsmgr.switch.plan import flow_line


class FakeTable:
    """A `FlowTable` that applies bundles the way OVS does: an add replaces the flow with the same
    (table, priority, match); a strict delete removes the flow with that key."""

    def __init__(self) -> None:
        self.flows: dict[bytes, FlowMod] = {}
        self.pushes: list[list[BundleOp]] = []

    def read(self, ours_only: bool = True) -> list[InstalledFlow]:
        return [InstalledFlow(mod, 0, 0) for mod in self.flows.values()]

    def meter_stats(self) -> dict[int, MeterStats]:
        return {}

    def push(self, ops: Sequence[BundleOp]) -> None:
        self.pushes.append(list(ops))
        for op in ops:
            if op.delete:
                del self.flows[op.flow.key]
            else:
                self.flows[op.flow.key] = op.flow


def ops_text(ops: Sequence[BundleOp]) -> list[str]:
    """`+ table=..,priority=..,MATCH actions=..` (or `- ...`) for each op of a bundle."""
    return [f"{'-' if op.delete else '+'} {flow_line(op.flow)}" for op in ops]
