"""The os-ken OpenFlow 1.3 messages controller mode sends; the only place they are made.

Flows are not programmed here (see docs/design.md, controller mode): the
OpenFlow channel carries connection events, packet-ins with their answers
(packet-outs) and flow statistics.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from typing import Any

from ovsmgr.compiler.pipeline import COOKIE_MAGIC, COOKIE_MASK

PACKET_IN_FORMAT_NXT_PACKET_IN2 = 2
"""NXPIF_NXT_PACKET_IN2: the packet-in format that carries the controller action's userdata."""


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
