"""Requests over an OpenFlow channel: one atomic bundle, a flow or group dump, meters. The same for both channels.

A `Channel` is anything that sends OpenFlow messages to one switch and hands back
the replies to ours: `SwitchConnection` (a short-lived connection of `apply`,
`plan`, `status`, `restore`) or the controller's os-ken datapath connection
(`ovsmgr.controller.app.DatapathChannel`). The exchanges themselves are written once, here.
"""

from __future__ import annotations

import itertools
import random
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ovsmgr.southbound.openflow import messages as m
from ovsmgr.southbound.openflow import meters
from ovsmgr.southbound.openflow.groups import (
    OFPGC_ADD,
    OFPGC_DELETE,
    OFPGC_MODIFY,
    OFPMP_GROUP_DESC,
    group_desc_entries,
    group_desc_request,
    group_mod,
    is_group,
)

DEFAULT_TIMEOUT = 300.0
"""A bundle of 150,000 flows takes OVS seconds to check and commit; a dump as long to send."""


class OpenFlowError(Exception):
    """The switch refused a request, or could not be reached; nothing was changed."""


class BundleRefused(OpenFlowError):
    """The switch refused a bundle and changed nothing; `errors` are its answers (by message)."""

    def __init__(self, message: str, errors: Sequence[m.ErrorMsg]):
        super().__init__(message)
        self.errors = list(errors)


class Channel(Protocol):
    version: int
    """The OpenFlow version the channel speaks (`messages.OFP13` or `OFP14`)."""

    def next_xid(self) -> int: ...

    def send(self, data: bytes) -> None: ...

    def receive(self, deadline: float) -> bytes:
        """The next reply or error addressed to this channel's requests; OpenFlowError past the deadline."""


_bundle_ids = itertools.count(random.randrange(1 << 30))


@dataclass(frozen=True)
class BundleOp:
    """One flow_mod (or group_mod) of a bundle: `encode(xid)` gives the message; `about` (its str(),
    made only when the switch refuses the op) names the flow and its rule in the error. `replaces`:
    the switch has an entry with this key already (an add replaces a flow, a group is modified)."""

    flow: m.FlowMod
    delete: bool
    about: object = None
    replaces: bool = False

    def encode(self, xid: int, version: int) -> bytes:
        if is_group(self.flow):
            command = OFPGC_DELETE if self.delete else OFPGC_MODIFY if self.replaces else OFPGC_ADD
            return group_mod(self.flow, command, xid, version)
        return m.flow_mod_delete(self.flow, xid, version) if self.delete else m.flow_mod_add(self.flow, xid, version)


def push_bundle(channel: Channel, ops: Sequence[BundleOp], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Send `ops` in one ordered, atomic bundle and commit it: all of them or none.

    Open vSwitch checks each message as it is added and answers a bad one with an error,
    but leaves the rest in the bundle: committed, they would be half a change. So the adds
    are followed by a barrier, and the bundle is committed only when no add was refused by
    then; otherwise it is discarded."""
    if not ops:
        return
    bundle_id = next(_bundle_ids) & 0xFFFFFFFF
    deadline = time.monotonic() + timeout
    version = channel.version
    open_xid = channel.next_xid()
    parts = [m.bundle_control(open_xid, bundle_id, m.OFPBCT_OPEN_REQUEST, version)]
    by_xid: dict[int, BundleOp] = {}
    for op in ops:
        xid = channel.next_xid()
        by_xid[xid] = op
        parts.append(m.bundle_add(xid, bundle_id, op.encode(xid, version), version))
    barrier_xid = channel.next_xid()
    parts.append(m.message(m.OFPT_BARRIER_REQUEST, barrier_xid, version=version))
    channel.send(b"".join(parts))
    errors = _errors_until(channel, deadline, barrier_xid, {open_xid, *by_xid})
    kind = m.OFPBCT_DISCARD_REQUEST if errors else m.OFPBCT_COMMIT_REQUEST
    final_xid = channel.next_xid()
    channel.send(m.bundle_control(final_xid, bundle_id, kind, version))
    errors += _errors_until(channel, deadline, final_xid, {final_xid})
    if errors:
        raise BundleRefused(_refusal(errors, by_xid), errors)


def _errors_until(channel: Channel, deadline: float, last: int, ours: set[int]) -> list[m.ErrorMsg]:
    """The errors answering `ours` until the reply (or error) to `last` arrives."""
    errors = []
    while True:
        reply = channel.receive(deadline)
        kind, xid = reply[1], m.HEADER.unpack_from(reply)[3]
        if kind == m.OFPT_ERROR and (xid in ours or xid == last):
            errors.append(m.parse_error(reply))
        if xid == last:
            return errors


def _refusal(errors: Sequence[m.ErrorMsg], by_xid: dict[int, BundleOp]) -> str:
    """Name the flows the switch refused first; the bundle's own error last."""
    lines = []
    for error in errors:
        op = by_xid.get(error.xid) or by_xid.get(error.failed_xid or -1)
        if op is not None:
            what = str(op.about) if op.about is not None else f"table={op.flow.table},priority={op.flow.priority}"
            lines.append(f"{'deleting' if op.delete else 'adding'} {what}: {error.describe()}")
    if not lines:
        lines = [error.describe() for error in errors]
    return "the switch refused the change, nothing was applied: " + "; ".join(lines)


def dump_flows(channel: Channel, cookie: int = 0, cookie_mask: int = 0,
               timeout: float = DEFAULT_TIMEOUT) -> list[m.FlowStats]:
    """Every flow of every table (only those whose cookie matches under the mask, if given)."""
    xid = channel.next_xid()
    out: list[m.FlowStats] = []
    for reply in _multipart(channel, xid, m.flow_stats_request(xid, cookie, cookie_mask, channel.version),
                            m.OFPMP_FLOW, "a flow dump", timeout):
        out += m.flow_stats_entries(reply)
    return out


def dump_groups(channel: Channel, timeout: float = DEFAULT_TIMEOUT) -> list[m.FlowMod]:
    """ovsmgr's select groups (`groups.is_our_group`), as entries beside the flows."""
    xid = channel.next_xid()
    out: list[m.FlowMod] = []
    for reply in _multipart(channel, xid, group_desc_request(xid, channel.version), OFPMP_GROUP_DESC,
                            "a group dump", timeout):
        out += group_desc_entries(reply)
    return out


def dump_meters(channel: Channel, timeout: float = DEFAULT_TIMEOUT) -> list[m.FlowMod]:
    """ovsmgr's meters on the switch, as entries of the flow table (`meters.meter_entry`)."""
    xid = channel.next_xid()
    out: list[m.FlowMod] = []
    for reply in _multipart(channel, xid, meters.meter_request(xid, meters.OFPMP_METER_CONFIG, channel.version),
                            meters.OFPMP_METER_CONFIG, "a meter dump", timeout):
        out += meters.meter_config_entries(reply)
    return out


def meter_stats(channel: Channel, timeout: float = DEFAULT_TIMEOUT) -> dict[int, meters.MeterStats]:
    """The counters of ovsmgr's meters, by meter id."""
    xid = channel.next_xid()
    out: dict[int, meters.MeterStats] = {}
    for reply in _multipart(channel, xid, meters.meter_request(xid, meters.OFPMP_METER, channel.version),
                            meters.OFPMP_METER, "meter statistics", timeout):
        out.update(meters.meter_stats_entries(reply))
    return out


def _multipart(channel: Channel, xid: int, request: bytes, kind: int, what: str,
               timeout: float) -> Iterator[bytes]:
    """The replies of one multipart request, until the last."""
    deadline = time.monotonic() + timeout
    channel.send(request)
    while True:
        reply = channel.receive(deadline)
        reply_kind, reply_xid = reply[1], m.HEADER.unpack_from(reply)[3]
        if reply_xid != xid:
            continue
        if reply_kind == m.OFPT_ERROR:
            raise OpenFlowError(f"the switch refused {what}: {m.parse_error(reply).describe()}")
        if reply_kind == m.OFPT_MULTIPART_REPLY and struct.unpack_from("!H", reply, 8)[0] == kind:
            yield reply
            if not m.multipart_more(reply):
                return


def push_meters(channel: Channel, ops: Sequence[tuple[int, BundleOp]], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Send meter_mods (command, the meter's op) and wait for them: OpenFlow has no bundle for
    meters (Open vSwitch refuses a meter_mod inside one, OFPBFC_MSG_UNSUP). Each meter_mod is
    atomic by itself; OpenFlowError names the meters the switch refused."""
    if not ops:
        return
    deadline = time.monotonic() + timeout
    by_xid: dict[int, tuple[int, BundleOp]] = {}
    parts = []
    for command, op in ops:
        xid = channel.next_xid()
        by_xid[xid] = (command, op)
        parts.append(meters.meter_mod(command, op.flow, xid, channel.version))
    barrier_xid = channel.next_xid()
    parts.append(m.message(m.OFPT_BARRIER_REQUEST, barrier_xid, version=channel.version))
    channel.send(b"".join(parts))
    errors = _errors_until(channel, deadline, barrier_xid, set(by_xid))
    if errors:
        lines = []
        for error in errors:
            sent = by_xid.get(error.xid)
            what = f"{_METER_VERBS[sent[0]]} {sent[1].about or meters.meter_text(sent[1].flow)}: " if sent else ""
            lines.append(what + error.describe())
        raise OpenFlowError("the switch refused a meter: " + "; ".join(lines))


_METER_VERBS = {meters.OFPMC_ADD: "adding", meters.OFPMC_MODIFY: "changing", meters.OFPMC_DELETE: "deleting"}


def barrier(channel: Channel, timeout: float = 30.0) -> None:
    """Wait until the switch has processed everything sent before."""
    deadline = time.monotonic() + timeout
    xid = channel.next_xid()
    channel.send(m.message(m.OFPT_BARRIER_REQUEST, xid, version=channel.version))
    while True:
        reply = channel.receive(deadline)
        if m.HEADER.unpack_from(reply)[3] == xid:
            return
