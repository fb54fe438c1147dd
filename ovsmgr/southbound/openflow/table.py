"""A bridge's flow table over OpenFlow: read ovsmgr's flows, change them in one atomic bundle.

Only flows whose cookie carries ovsmgr's magic are read for plans (the dump is
cookie-masked on the switch) or changed (deletes are strict and cookie-masked),
so a foreign flow is never touched. Flows read back stay in their wire form
(`FlowMod`) and are decoded into ovsmgr's model only when somebody needs to look
at one (a plan that lists it, drift that names it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

from ovsmgr.compiler.flows import Flow, FlowError
from ovsmgr.compiler.pipeline import COOKIE_MAGIC, COOKIE_MASK, CookieKind, Table
from ovsmgr.southbound.openflow import messages as m
from ovsmgr.southbound.openflow import meters
from ovsmgr.southbound.openflow.actions import ActionDecodeError, decode_instructions
from ovsmgr.southbound.openflow.channel import (
    BundleOp,
    Channel,
    dump_flows,
    dump_groups,
    dump_meters,
    meter_stats,
    push_bundle,
    push_meters,
)
from ovsmgr.southbound.openflow.groups import decode_group, group_id_of, is_group
from ovsmgr.southbound.openflow.oxm import MatchDecodeError, decode_match

InstalledFlow = m.FlowStats
"""A flow as the switch reported it (`mod`, its counters); `flow_of` decodes it."""


@functools.lru_cache(maxsize=1 << 16)
def decode_flow(mod: m.FlowMod) -> Flow | None:
    """The flow in ovsmgr's model; None when it uses something the model has no name for (or is a
    group: `groups.decode_group`)."""
    if is_group(mod):
        return None
    try:
        return Flow(Table(mod.table), mod.priority, decode_match(mod.oxm), decode_instructions(mod.instructions),
                    mod.cookie)
    except (MatchDecodeError, ActionDecodeError, FlowError, ValueError, KeyError):
        return None


def describe(mod: m.FlowMod) -> str:
    """`cookie=..,table=..,priority=..,MATCH actions=..` (ovs-ofctl's spelling, when decodable); a
    meter as `meter=ID ... bands=...`, a group as `group_id=ID,type=select,bucket=...`."""
    from ovsmgr.render.ofctl import flow_text, group_text

    if meters.is_meter(mod):
        return meters.meter_text(mod)
    if is_group(mod):
        group = decode_group(mod)
        return group_text(group) if group is not None else f"group {group_id_of(mod):#x} (not one ovsmgr writes)"
    flow = decode_flow(mod)
    if flow is not None:
        return flow_text(flow)
    return (f"cookie={mod.cookie:#x},table={mod.table},priority={mod.priority} ({len(mod.oxm)} bytes of "
            f"match, {len(mod.instructions)} of instructions ovsmgr does not decode)")


def is_managed(cookie: int) -> bool:
    """Ours and not learned by the switch itself."""
    return cookie >> 48 == COOKIE_MAGIC and (cookie >> 32) & 0xFF != CookieKind.LEARNED


class FlowTable(Protocol):
    """What plan, apply and the controller need of a bridge's flow table (and its groups, read and
    pushed as entries beside the flows: `groups`); tests may fake it."""

    def read(self, ours_only: bool = True) -> list[InstalledFlow]: ...

    def push(self, ops: Sequence[BundleOp]) -> None: ...

    def meter_stats(self) -> dict[int, meters.MeterStats]: ...


class SwitchFlowTable:
    """A `FlowTable` over an OpenFlow channel (a `SwitchConnection` or the controller's datapath)."""

    def __init__(self, channel: Channel):
        self.channel = channel

    def read(self, ours_only: bool = True) -> list[InstalledFlow]:
        """ovsmgr's flows (or every flow), and ovsmgr's meters and select groups as entries
        (`meters.meter_entry`, `groups.encode_group`)."""
        if ours_only:
            flows = [s for s in dump_flows(self.channel, m.OURS, COOKIE_MASK) if is_managed(s.mod.cookie)]
        else:
            flows = dump_flows(self.channel)
        entries = [*dump_meters(self.channel), *dump_groups(self.channel)]
        return flows + [InstalledFlow(mod, 0, 0) for mod in entries]

    def push(self, ops: Sequence[BundleOp]) -> None:
        """The flows in one atomic bundle; meters around it, in the order that never leaves a flow
        without its meter or the switch looser than both policies: new and changed meters first (a
        flow that names a meter is refused until the meter exists; a changed meter takes the new
        policy's rate a moment before its flows change), the flows, then the meters no flow uses any
        more (deleting a meter deletes the flows that still use it). A refused bundle leaves the new
        meters in place, unused; `apply` and the controller put back what they read."""
        meter_ops = [op for op in ops if meters.is_meter(op.flow)]
        if not meter_ops:
            push_bundle(self.channel, ops)
            return
        there = {mod.key for mod in dump_meters(self.channel)}  # ADD or MODIFY: the switch says which
        wanted = {op.flow.key: op for op in meter_ops if not op.delete}
        gone = [op for op in meter_ops if op.delete and op.flow.key not in wanted and op.flow.key in there]
        push_meters(self.channel, [(meters.OFPMC_MODIFY if key in there else meters.OFPMC_ADD, op)
                                   for key, op in wanted.items()])
        push_bundle(self.channel, [op for op in ops if not meters.is_meter(op.flow)])
        push_meters(self.channel, [(meters.OFPMC_DELETE, op) for op in gone])

    def meter_stats(self) -> dict[int, meters.MeterStats]:
        """Counters of ovsmgr's meters by id (drops of `limit:`)."""
        return meter_stats(self.channel)
