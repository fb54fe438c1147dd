"""Requests over an OpenFlow channel: one atomic bundle, a flow dump. The same for both channels.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ovsmgr.southbound.openflow import messages as m

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
    """One flow_mod of a bundle: `encode(xid)` gives the message; `about` (its str(), made only when
    the switch refuses the op) names the flow and its rule in the error."""

    flow: m.FlowMod
    delete: bool
    about: object = None

    def encode(self, xid: int, version: int) -> bytes:
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
    deadline = time.monotonic() + timeout
    xid = channel.next_xid()
    channel.send(m.flow_stats_request(xid, cookie, cookie_mask, channel.version))
    out: list[m.FlowStats] = []
    while True:
        reply = channel.receive(deadline)
        kind, reply_xid = reply[1], m.HEADER.unpack_from(reply)[3]
        if reply_xid != xid:
            continue
        if kind == m.OFPT_ERROR:
            raise OpenFlowError(f"the switch refused a flow dump: {m.parse_error(reply).describe()}")
        if kind == m.OFPT_MULTIPART_REPLY and struct.unpack_from("!H", reply, 8)[0] == m.OFPMP_FLOW:
            out += m.flow_stats_entries(reply)
            if not m.multipart_more(reply):
                return out


def barrier(channel: Channel, timeout: float = 30.0) -> None:
    """Wait until the switch has processed everything sent before."""
    deadline = time.monotonic() + timeout
    xid = channel.next_xid()
    channel.send(m.message(m.OFPT_BARRIER_REQUEST, xid, version=channel.version))
    while True:
        reply = channel.receive(deadline)
        if m.HEADER.unpack_from(reply)[3] == xid:
            return
