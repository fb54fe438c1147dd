"""Packet-ins of reject and log rules: answers built with os-ken's packet library, log lines.

Pure functions of bytes in, bytes out, so they are tested without a switch:

- `parse_userdata`: the controller action's userdata (`pipeline.packet_in_userdata`):
  what to do (REJECT, LOG) and for which rule;
- `reject_reply`: a TCP RST for TCP (acking the SYN, so the client's connect
  fails at once with "connection refused"), else an ICMP (v4 or v6)
  destination unreachable (port unreachable for UDP, administratively
  prohibited for anything else), sent back from the original destination;
- `log_record`: one JSON line per logged match;
- `TokenBucket`: rate limiting, so a flood is counted, not printed.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from typing import Any

from os_ken.lib.packet import ethernet, icmp, icmpv6, ipv4, ipv6, packet, tcp, udp

from ovsmgr.compiler.pipeline import PacketInKind

ETH_HEADER = 14
OXM_OF_IN_PORT = (0x8000, 0)
NXM_OF_IN_PORT = (0x0000, 0)


@dataclass(frozen=True)
class PacketInfo:
    kind: PacketInKind
    rule_id: int


def parse_userdata(userdata: bytes | None) -> PacketInfo | None:
    """Kind and rule id from a controller action's userdata; None when it is not ours."""
    if not userdata or len(userdata) != 8 or userdata[0] not in PacketInKind._value2member_map_:
        return None
    return PacketInfo(PacketInKind(userdata[0]), int.from_bytes(userdata[4:8], "big"))


def in_port_of(metadata: bytes | None) -> int | None:
    """OXM/NXM `in_port` from an NXT_PACKET_IN2 metadata property (a run of OXM TLVs)."""
    offset, data = 0, metadata or b""
    while offset + 4 <= len(data):
        (header,) = struct.unpack_from("!I", data, offset)
        cls, field, length = header >> 16, (header >> 9) & 0x7F, header & 0xFF
        value = data[offset + 4: offset + 4 + length]
        if (cls, field) == OXM_OF_IN_PORT and length == 4:
            return int.from_bytes(value, "big")
        if (cls, field) == NXM_OF_IN_PORT and length == 2:
            return int.from_bytes(value, "big")
        offset += 4 + length
    return None


def reject_reply(frame: bytes) -> bytes | None:
    """The frame that rejects `frame` (sent back out of its in_port); None for what must not
    be answered (a RST, an ICMP error, something that is not IP)."""
    pkt = packet.Packet(frame)
    eth = pkt.get_protocol(ethernet.ethernet)
    ip4, ip6 = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(ipv6.ipv6)
    if eth is None or (ip4 is None and ip6 is None):
        return None
    seg = pkt.get_protocol(tcp.tcp)
    if seg is not None:
        return _tcp_rst(eth, ip4, ip6, seg)
    if _is_icmp_error(pkt):
        return None
    return _unreachable(eth, ip4, ip6, frame, pkt.get_protocol(udp.udp) is not None)


def _tcp_rst(eth: Any, ip4: Any, ip6: Any, seg: Any) -> bytes | None:
    if seg.bits & tcp.TCP_RST:
        return None
    if ip4 is not None:
        payload = ip4.total_length - ip4.header_length * 4 - seg.offset * 4
    else:
        payload = ip6.payload_length - seg.offset * 4
    if seg.bits & tcp.TCP_ACK:
        seq, ack, bits = seg.ack, 0, tcp.TCP_RST
    else:
        grow = max(payload, 0) + (1 if seg.bits & tcp.TCP_SYN else 0) + (1 if seg.bits & tcp.TCP_FIN else 0)
        seq, ack, bits = 0, (seg.seq + grow) & 0xFFFFFFFF, tcp.TCP_RST | tcp.TCP_ACK
    reply = packet.Packet()
    reply.add_protocol(ethernet.ethernet(dst=eth.src, src=eth.dst, ethertype=eth.ethertype))
    reply.add_protocol(_ip_back(ip4, ip6, 6))
    reply.add_protocol(tcp.tcp(src_port=seg.dst_port, dst_port=seg.src_port, seq=seq, ack=ack, bits=bits,
                               window_size=0))
    reply.serialize()
    return bytes(reply.data)


def _ip_back(ip4: Any, ip6: Any, proto: int) -> Any:
    if ip4 is not None:
        return ipv4.ipv4(src=ip4.dst, dst=ip4.src, proto=proto, ttl=64)
    return ipv6.ipv6(src=ip6.dst, dst=ip6.src, nxt=proto, hop_limit=64)


def _is_icmp_error(pkt: Any) -> bool:
    """ICMP errors are never answered with errors (RFC 1122 3.2.2, RFC 4443 2.4)."""
    msg4 = pkt.get_protocol(icmp.icmp)
    if msg4 is not None:
        return msg4.type not in (icmp.ICMP_ECHO_REQUEST, 13, 15, 17)
    msg6 = pkt.get_protocol(icmpv6.icmpv6)
    return msg6 is not None and msg6.type_ < 128


def _unreachable(eth: Any, ip4: Any, ip6: Any, frame: bytes, is_udp: bool) -> bytes:
    original = frame[ETH_HEADER:]
    reply = packet.Packet()
    reply.add_protocol(ethernet.ethernet(dst=eth.src, src=eth.dst, ethertype=eth.ethertype))
    if ip4 is not None:
        reply.add_protocol(_ip_back(ip4, None, 1))
        code = icmp.ICMP_PORT_UNREACH_CODE if is_udp else 13  # 13: communication administratively prohibited
        quoted = original[: ip4.header_length * 4 + 8]
        reply.add_protocol(icmp.icmp(type_=icmp.ICMP_DEST_UNREACH, code=code, csum=0,
                                     data=icmp.dest_unreach(data=quoted)))
    else:
        reply.add_protocol(_ip_back(None, ip6, 58))
        code = 4 if is_udp else 1  # 4: port unreachable; 1: administratively prohibited
        # os-ken has no payload class for this type: 4 unused bytes, then as much of the original as fits
        reply.add_protocol(icmpv6.icmpv6(type_=icmpv6.ICMPV6_DST_UNREACH, code=code,
                                         data=bytes(4) + original[:1232]))
    reply.serialize()
    return bytes(reply.data)


def log_record(frame: bytes, rule: str, action: str, in_port: int | None, suppressed: int = 0,
               now: float | None = None, shadow: bool = False) -> dict[str, Any]:
    """What a log line says about one matched packet; a shadow rule's says `"shadow": true` (its
    action was not taken)."""
    pkt = packet.Packet(frame)
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now if now is not None else time.time())),
        "event": "match", "rule": rule, "action": action, "in_port": in_port,
    }
    if shadow:
        record["shadow"] = True
    ip4, ip6 = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(ipv6.ipv6)
    ip = ip4 or ip6
    if ip is not None:
        record.update(src=ip.src, dst=ip.dst, proto=ip.proto if ip4 is not None else ip.nxt)
    for layer in (pkt.get_protocol(tcp.tcp), pkt.get_protocol(udp.udp)):
        if layer is not None:
            record.update(sport=layer.src_port, dport=layer.dst_port)
    if suppressed:
        record["suppressed"] = suppressed
    return record


def log_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=False)


class TokenBucket:
    """`rate` events a second on average, bursts of `burst`; counts what it refuses."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()
        self.suppressed = 0
        self.suppressed_total = 0

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        self.suppressed_total += 1
        return False

    def take_suppressed(self) -> int:
        """How many were refused since the last allowed event (reported with it)."""
        count, self.suppressed = self.suppressed, 0
        return count
