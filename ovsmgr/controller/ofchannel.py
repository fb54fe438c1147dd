"""The controller's OpenFlow channel: os-ken's datapath connection, for os-ken's messages and ours.

Flows travel over this connection as ordered, atomic bundles: the exchanges of
`ovsmgr.southbound.openflow.channel` (the same as `apply`'s own connection uses)
run over a `DatapathChannel`, which sends their bytes through os-ken's send queue
and gets back the replies to its own transaction ids from the app's event
handlers. The connection speaks OpenFlow 1.3 (os-ken parses Nicira's packet-in2
only there), so bundles are 1.3's ONF extension. Besides that, the connection
carries packet-ins with their answers (packet-outs) and flow statistics; the os-ken
message objects for those are made here and nowhere else.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import random
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

from os_ken.ofproto import ofproto_v1_3_parser

from ovsmgr.compiler.pipeline import COOKIE_MAGIC, COOKIE_MASK
from ovsmgr.southbound.openflow import OpenFlowError
from ovsmgr.southbound.openflow.messages import OFP13

PACKET_IN_FORMAT_NXT_PACKET_IN2 = 2
"""NXPIF_NXT_PACKET_IN2: the packet-in format that carries the controller action's userdata."""
_RECENT_XIDS = 1 << 20


class DatapathChannel:
    """A `southbound.openflow.channel.Channel` over os-ken's connection to one switch."""

    version = OFP13

    def __init__(self, datapath: Any) -> None:
        self.datapath = datapath
        self._replies: queue.Queue[bytes | None] = queue.Queue()
        self._xids = itertools.count(random.randrange(1 << 32))
        self._issued: set[int] = set()
        self._order: collections.deque[int] = collections.deque()
        self.closed = False

    def next_xid(self) -> int:
        xid = next(self._xids) & 0xFFFFFFFF
        self._issued.add(xid)
        self._order.append(xid)
        if len(self._order) > _RECENT_XIDS:
            self._issued.discard(self._order.popleft())
        return xid

    def send(self, data: bytes) -> None:
        if self.closed or not self.datapath.send(data):
            raise OpenFlowError("the switch is not connected to the controller")

    def receive(self, deadline: float) -> bytes:
        try:
            reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise OpenFlowError("the switch did not answer in time") from None
        if reply is None:
            raise OpenFlowError("the switch disconnected from the controller")
        return reply

    def offer(self, msg: Any) -> bool:
        """Take an os-ken message if it answers one of ours (an exchange waits for it)."""
        if msg.xid not in self._issued:
            return False
        self._replies.put(bytes(msg.buf))
        return True

    def close(self) -> None:
        self.closed = True
        self._replies.put(None)


class _FlowStatsEntry:
    """What metrics read of a flow-statistics entry (cookie and counters), without os-ken building
    match and instruction objects for every flow: at 10,000 rules that took about a second of the
    thread that also carries packet-ins and bundle replies. Whole entries are decoded from
    `msg.buf` by ovsmgr's own codec when needed."""

    _HEAD = struct.Struct("!H22xQQQ")

    def __init__(self, length: int, cookie: int, packets: int, nbytes: int) -> None:
        self.length, self.cookie, self.packet_count, self.byte_count = length, cookie, packets, nbytes

    @classmethod
    def parser(cls, buf: bytes, offset: int) -> _FlowStatsEntry:
        return cls(*cls._HEAD.unpack_from(buf, offset))


ofproto_v1_3_parser.OFPFlowStatsReply.cls_stats_body_cls = _FlowStatsEntry


def refuse(datapath: Any) -> None:
    """Close a connection that is not from our switch: os-ken marks it dead (no more events for it)
    and its socket is shut both ways, so its reader ends at once."""
    datapath.close()
    with contextlib.suppress(OSError, AttributeError):
        datapath.socket.shutdown(socket.SHUT_RDWR)


def set_packet_in_format(datapath: Any) -> None:
    """Ask for NXT_PACKET_IN2, or OVS drops the userdata that says which rule sent the packet."""
    parser = datapath.ofproto_parser
    datapath.send_msg(parser.NXTSetPacketInFormatMsg(datapath, PACKET_IN_FORMAT_NXT_PACKET_IN2))


def packet_out(datapath: Any, port: int, frame: bytes) -> None:
    """Send `frame` out of `port` (the port the rejected packet came in by)."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    datapath.send_msg(parser.OFPPacketOut(datapath=datapath, buffer_id=ofp.OFP_NO_BUFFER,
                                          in_port=ofp.OFPP_CONTROLLER,
                                          actions=[parser.OFPActionOutput(port)], data=frame))


def request_flow_stats(datapath: Any) -> None:
    """Statistics of every flow with ovsmgr's cookie, in every table."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    datapath.send_msg(parser.OFPFlowStatsRequest(
        datapath, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, COOKIE_MAGIC << 48, COOKIE_MASK, parser.OFPMatch()))


def add_stats(totals: dict[int, list[int]], body: Iterable[Any]) -> None:
    """Sum packets and bytes per cookie from one flow-stats reply part."""
    for stat in body:
        entry = totals.setdefault(stat.cookie, [0, 0])
        entry[0] += stat.packet_count
        entry[1] += stat.byte_count


def more_parts(msg: Any) -> bool:
    return bool(msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE)


def request_role(datapath: Any, master: bool, generation: int) -> None:
    """Ask to be the switch's master (it then refuses every other controller's writes and makes a
    previous master a slave) or a slave (read-only, no packet-ins), with the fleet's role generation:
    the switch refuses a request older than the newest master election it saw (OFPRRFC_STALE)."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    role = ofp.OFPCR_ROLE_MASTER if master else ofp.OFPCR_ROLE_SLAVE
    datapath.send_msg(parser.OFPRoleRequest(datapath, role, generation & 0xFFFFFFFFFFFFFFFF))
