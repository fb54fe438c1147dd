"""The OpenFlow pipeline ovsmgr builds, declared once.

Every table is an `IntEnum` member with a docstring (the stage's job), the
match fields it may use and the tables it may pass packets to. Registers,
`ct_mark` bits, cookie layout and priority bands are named here too, so the
compiler never writes a bare `reg3` or `priority=50`, and a flow that breaks
the declaration is refused when it is built (see `flows.FlowSet.add`).
`docs/pipeline.md` is generated from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Table(IntEnum):
    """Pipeline stages, in the order a packet meets them."""

    CLASSIFY = 0
    """Ingress: classify the in_port (and, when a zone is a VLAN, the 802.1Q tag) into its zone
    (REG_FROM_ZONE), taking a VLAN zone's tag off; answer ARP and IPv6 neighbour solicitations for
    NAT-owned addresses; switch ARP and IPv6 neighbour discovery normally, learning where senders
    live, but send ARP for an address of a VLAN zone to that zone's port, tagged; drop unknown
    ports and VLANs."""
    ND_ANSWER = 5
    """Finish the neighbour advertisement CLASSIFY made of a solicitation for a NAT-owned IPv6
    address: its target link-layer address is the switch's MAC (OVS lets a flow set that only on a
    packet it matches as an advertisement); send it back out of the asking port."""
    CONNTRACK = 10
    """Send IP traffic through conntrack in the policy's zone, without `nat`: every stage up to
    OUTPUT sees packets as they arrived, as the policy's rules speak of them. Packets addressed to
    an address SNAT_AFTER_DNAT translates to first meet the second zone with `nat` (the replies of
    connections translated in both zones, whose DNAT the policy's zone knows by the client's address)."""
    EGRESS = 20
    """Decide where the packet leaves: the linked port (forwarding: ports) or the zone whose
    networks hold the destination (forwarding: normal). Sets REG_TO_ZONE and REG_OUT_PORT."""
    STATE = 30
    """Connection state: drop +inv; pass traffic of committed connections whose ct_mark names a
    rule of the current policy; revalidate or cut connections of removed rules; packets nobody
    committed yet (ct_mark 0) to FILTER."""
    FILTER = 40
    """First-match firewall rules for new connections (priority bands keep the written order):
    stateful allow records the rule in REG_RULE and goes to NAT; stateless allow goes straight
    to OUTPUT; drop, reject; then the default action. A shadow rule's flow counts (and logs) the
    packet, marks itself passed in REG_SHADOW and resubmits to FILTER, where the rules below it
    decide."""
    NAT = 50
    """Commit allowed connections: DNAT rules, then SNAT rules, then a plain commit; the
    allowing rule's fingerprint goes into ct_mark so a later policy can cut the connection.
    Translating commits recirculate into OUTPUT so it sees the translated packet."""
    SNAT_AFTER_DNAT = 55
    """A connection a DNAT rule has just translated, as translated, against the SNAT rules that may
    follow (DNAT on arrival, SNAT after it): the first that matches translates it again in the
    second conntrack zone (OVS applies one translation per zone) and marks it in ct_label, so its
    later packets are translated in both zones; none: on to OUTPUT_TRANSLATED."""
    OUTPUT = 60
    """Send the packet out: to REG_OUT_PORT, or to OVS NORMAL switching when it is 0.
    Packets of translated connections (ct_mark TRANSLATED bit) first get their translation
    with ct(nat) and recirculate to OUTPUT_TRANSLATED."""
    OUTPUT_TRANSLATED = 65
    """Send a translated packet out, after setting the destination MAC of the host that now
    receives it (looked up in MAC_BINDING by the translated destination address). Packets of a
    connection translated in both zones (ct_label) first get their second translation. A packet
    whose new destination lies in the networks of the one-port zone it came from goes back out of
    the port it came in by (hairpin NAT)."""
    NAT_COUNT = 68
    """Count the packets of each NAT rule (one flow per rule and zone, its own cookie): resubmitted to
    wherever a packet leaves a translating conntrack pass (OUTPUT_TRANSLATED, the SNAT_AFTER_DNAT
    rules, CONNTRACK's replies from the second zone), it matches the zone and the NAT rule id the
    connection carries in ct_label and does nothing else, so its flow statistics are the rule's
    packets and bytes in both directions."""
    MAC_BINDING = 70
    """Learned address-to-MAC bindings, from ARP (and, with IPv6 NAT, neighbour solicitations and
    advertisements) seen by CLASSIFY (only flows the switch learns)."""
    VLAN_OUT = 75
    """Only for a port with VLAN zones (a trunk): tag the packet, as it leaves, for the VLAN zone of
    the port whose networks hold its destination (after any translation) and send it out; no such
    zone: untagged if the port has an untagged zone, else drop."""


@dataclass(frozen=True)
class TableSpec:
    matches: frozenset[str]
    next_tables: frozenset[Table]
    learned_by: Table | None = None


_REGS = frozenset({"reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6"})
_CT_TUPLE = frozenset({"ct_nw_proto", "ct_tp_src", "ct_tp_dst"})
"""The original-direction tuple conntrack gives a tracked packet: the same for every fragment of a
datagram (userspace conntrack copies it from the datagram it reassembled to each fragment), so FILTER
and NAT judge services by it, never by the packet's own L4 fields (a later fragment has none)."""
_L3 = _CT_TUPLE | frozenset({"nw_frag", "dl_type", "nw_proto", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "tp_src", "tp_dst",
                 "icmp_type", "icmp_code"})
_CT = frozenset({"ct_state", "ct_mark", "ct_zone", "ct_label"})

TABLES: dict[Table, TableSpec] = {
    Table.CLASSIFY: TableSpec(
        frozenset({"in_port", "vlan_vid", "dl_type", "arp_op", "arp_spa", "arp_tpa", "nw_proto", "ipv6_src",
                   "icmp_type", "nd_target", "nd_sll"}),
        frozenset({Table.CONNTRACK, Table.ND_ANSWER}),
    ),
    Table.ND_ANSWER: TableSpec(frozenset({"dl_type", "nw_proto", "icmp_type"}), frozenset()),
    Table.CONNTRACK: TableSpec(frozenset({"dl_type", "ct_state", "ct_zone", "nw_dst", "ipv6_dst"}),
                               frozenset({Table.EGRESS, Table.CONNTRACK, Table.NAT_COUNT})),
    Table.EGRESS: TableSpec(frozenset({"in_port", "dl_type", "nw_dst", "ipv6_dst"}), frozenset({Table.STATE})),
    # A helper's related connection is committed here, a translated one recirculating like NAT's.
    Table.STATE: TableSpec(_CT | frozenset({"dl_type", "nw_proto", "nw_frag", "tcp_flags"}),
                           frozenset({Table.FILTER, Table.OUTPUT, Table.OUTPUT_TRANSLATED})),
    Table.FILTER: TableSpec(_REGS | _L3 | _CT | frozenset({"conj_id"}),
                            frozenset({Table.FILTER, Table.NAT, Table.OUTPUT})),
    # A translating commit recirculates (ct(commit,table=OUTPUT_TRANSLATED,nat(...))) so the
    # next table sees the translated packet and can set the receiver's MAC.
    Table.NAT: TableSpec(_REGS | _L3 | _CT | frozenset({"conj_id"}),
                         frozenset({Table.OUTPUT, Table.OUTPUT_TRANSLATED, Table.SNAT_AFTER_DNAT})),
    Table.SNAT_AFTER_DNAT: TableSpec(_REGS | _L3 | _CT | frozenset({"conj_id"}),
                                     frozenset({Table.OUTPUT_TRANSLATED, Table.NAT_COUNT})),
    Table.OUTPUT: TableSpec(_REGS | _CT | frozenset({"dl_type"}), frozenset({Table.OUTPUT_TRANSLATED, Table.VLAN_OUT})),
    Table.OUTPUT_TRANSLATED: TableSpec(_REGS | _CT | frozenset({"dl_type", "nw_dst", "ipv6_dst"}),
                                       frozenset({Table.MAC_BINDING, Table.OUTPUT_TRANSLATED, Table.NAT_COUNT,
                                                  Table.VLAN_OUT})),
    Table.NAT_COUNT: TableSpec(frozenset({"ct_zone", "ct_label"}), frozenset()),
    Table.MAC_BINDING: TableSpec(frozenset({"dl_type", "nw_dst", "ipv6_dst"}), frozenset(), learned_by=Table.CLASSIFY),
    Table.VLAN_OUT: TableSpec(frozenset({"reg2", "dl_type", "nw_dst"}), frozenset()),
}


@dataclass(frozen=True)
class RegField:
    """A named slice of an OVS register (NXM_NX_REGn[lo..hi])."""

    reg: str
    doc: str
    lo: int = 0
    hi: int = 31

    @property
    def nxm(self) -> str:
        index = self.reg.removeprefix("reg")
        bits = "" if (self.lo, self.hi) == (0, 31) else f"{self.lo}..{self.hi}"
        return f"NXM_NX_REG{index}[{bits}]"


REG_FROM_ZONE = RegField("reg0", "Zone id of the ingress port (1..n in zone-name order).")
REG_TO_ZONE = RegField("reg1", "Zone id the packet leaves by; 0 when unknown.")
REG_OUT_PORT = RegField("reg2", "OpenFlow port the packet leaves by; 0 means OVS NORMAL.")
REG_RULE = RegField("reg3", "Fingerprint of the stateful allow rule that matched; copied to ct_mark at commit.")
REG_FLAGS = RegField("reg4", "Flags: bit 0 REVALIDATE (an established connection re-checked against the current "
                     "rules); bit 1 TRANSLATED (the commit translates; copied to ct_mark bit 31).")
REG_HELPER = RegField("reg5", "Conntrack helper (ALG) the allowing rule asks for, as OVS numbers it (its port): 0 none, "
                      "21 ftp, 69 tftp; NAT's commits take it.")
REG_SHADOW = RegField("reg6", "Shadow rules passed: bit k set when the k-th shadow rule (in written order) or one "
                      "after it has counted the packet, so the resubmit to FILTER finds the rules below it.")
REG_NAT_RULE = RegField("reg7", "Id of the NAT rule a translating commit translates with (its rule id); copied to "
                        "ct_label[32..63] at commit.")
REGISTERS = (REG_FROM_ZONE, REG_TO_ZONE, REG_OUT_PORT, REG_RULE, REG_FLAGS, REG_HELPER, REG_SHADOW, REG_NAT_RULE)

HELPER_ALGS = {"ftp": 21, "tftp": 69}
"""`ct(alg=...)` as OpenFlow carries it: the helper's well-known port."""

FLAG_REVALIDATE = 0x1
FLAG_TRANSLATED = 0x2

VLAN_PRESENT = 0x1000
"""OpenFlow's `vlan_vid` value of a tagged frame is this bit plus the VLAN id; 0 is a frame
without a tag (OFPVID_PRESENT, OFPVID_NONE)."""

CT_MARK_RULE = (0, 30)
"""ct_mark bits 0..30: fingerprint of the rule that allowed the connection (0: none)."""
CT_MARK_TRANSLATED = 1 << 31
"""ct_mark bit 31: the connection is translated by NAT; its packets get ct(nat) at OUTPUT."""
CT_MARK_RULE_MASK = (1 << 31) - 1
CT_LABEL_SECOND_ZONE = 1
"""ct_label bit 0: the connection is translated in the second zone too (SNAT after DNAT)."""
CT_LABEL_NAT_RULE = (32, 63)
"""ct_label bits 32..63: the id of the NAT rule that translated the connection in this zone (0: none);
in the second zone, the SNAT rule that followed a DNAT."""
CT_LABEL_NAT_RULE_SHIFT = CT_LABEL_NAT_RULE[0]
CT_LABEL_NAT_RULE_MASK = 0xFFFF_FFFF << CT_LABEL_NAT_RULE_SHIFT

TCP_FLAG_BITS: dict[str, int] = {
    "fin": 0x001, "syn": 0x002, "rst": 0x004, "psh": 0x008, "ack": 0x010, "urg": 0x020, "ece": 0x040,
    "cwr": 0x080, "ns": 0x100,
}

CT_STATE_BITS: dict[str, int] = {
    "new": 0x01, "est": 0x02, "rel": 0x04, "rpl": 0x08, "inv": 0x10, "trk": 0x20, "snat": 0x40, "dnat": 0x80,
}

COOKIE_MAGIC = 0x0F5A
"""High 16 bits of every cookie ovsmgr writes; flows with another value are never touched."""
COOKIE_MASK = 0xFFFF_0000_0000_0000
GROUP_ID_MAGIC = COOKIE_MAGIC
"""High 16 bits of every group id ovsmgr writes (groups have no cookie); groups with another id are
never read, changed or deleted."""


def is_our_group(group_id: int) -> bool:
    return group_id >> 16 == GROUP_ID_MAGIC


class CookieKind(IntEnum):
    """Bits 32..39 of a cookie: which part of the policy made the flow."""

    INFRA = 0
    FIREWALL = 1
    NAT = 2
    DEFAULT = 3
    LEARNED = 4
    """Flows the switch learned itself (MAC bindings); never diffed or deleted by ovsmgr."""
    METER = 5
    """A rule's meter (`limit:`); the low 32 bits are the meter id. Meters have no cookie on the
    switch: ovsmgr gives its meter entries this one, and owns the meters by their id (`METER_IDS`)."""
    GROUP = 6
    """Not a flow: a select group of a NAT rule, in a plan or a record beside the flows (its rule
    id is the group id, which `names` maps to the rule)."""
    SHADOW = 7
    """Flows of a shadow rule: they count and log matches, the rules below decide."""
    NAT_COUNT = 8
    """A NAT rule's counting flow in NAT_COUNT: its statistics are the rule's translated packets and
    bytes (both directions), apart from the NAT rule's own flows, which meet first packets only."""


METER_IDS = range(0x8000_0000, 0xFFFF_0000)
"""Meter ids ovsmgr owns (the upper half of OpenFlow's, below its reserved ids): only meters with
these ids are read, changed or deleted, as only flows with `COOKIE_MAGIC` are."""
METER_BURST_SECONDS = 0.1
"""A meter's burst: this many seconds of its rate (at least one packet, or 16 kbit: two full-size
frames, so a bandwidth meter passes large frames at all)."""
METER_MIN_BURST_KBIT = 16


def cookie(kind: CookieKind, rule_id: int = 0) -> int:
    return (COOKIE_MAGIC << 48) | (int(kind) << 32) | (rule_id & 0xFFFF_FFFF)


def cookie_parts(value: int) -> tuple[bool, CookieKind | None, int]:
    """(ours, kind, rule id) of a cookie read back from a switch."""
    ours = value >> 48 == COOKIE_MAGIC
    kind_bits = (value >> 32) & 0xFF
    kind = CookieKind(kind_bits) if ours and kind_bits in CookieKind._value2member_map_ else None
    return ours, kind, value & 0xFFFF_FFFF


class Priority(IntEnum):
    """Priority bands. FILTER and NAT rules count down from their band's top in written order."""

    DEFAULT = 0
    CLASSIFY_PORT = 100
    CLASSIFY_ARP = 200
    CLASSIFY_ARP_LEARN = 210
    CLASSIFY_ND = 250
    CLASSIFY_ND_LEARN = 255
    CLASSIFY_ARP_RESPONDER = 300
    CLASSIFY_ND_RESPONDER = 310
    CLASSIFY_ND_UNANSWERED = 320
    CLASSIFY_ARP_TO_VLAN = 220
    CLASSIFY_ARP_TO_VLAN_LEARN = 230
    ND_ANSWER = 100
    TRACK = 100
    TRACK_SECOND_ZONE = 110
    EGRESS_LINK = 100
    EGRESS_PREFIX_BASE = 100
    EGRESS_VLAN_PREFIX_BASE = 101
    STATE_STALE = 100
    STATE_STALE_REPLY = 200
    STATE_NEW = 250
    STATE_NOT_SYN = 260
    STATE_TCP_FRAGMENT = 265
    STATE_ESTABLISHED = 300
    STATE_RELATED_COMMIT = 350
    STATE_INVALID = 400
    FILTER_TOP = 60000
    NAT_REVALIDATE = 50000
    NAT_DNAT_TOP = 40000
    NAT_SNAT_TOP = 20000
    SNAT_AFTER_DNAT_TOP = 20000
    NAT_COMMIT = 1
    OUTPUT_PORT = 100
    OUTPUT_TRANSLATED_CONN = 200
    OUTPUT_HAIRPIN = 210
    OUTPUT_SECOND_ZONE = 250
    OUTPUT_UNTRANSLATED = 300
    OUTPUT_INVALID = 400
    NAT_COUNT_RULE = 100
    TRACK_SECOND_ZONE_REPLY = 120
    MAC_BINDING_LEARNED = 100
    VLAN_OUT_UNTAGGED = 100
    VLAN_OUT_PREFIX_BASE = 101


class PacketInKind(IntEnum):
    """First byte of a controller action's userdata; bytes 4..7 are the rule id (big-endian)."""

    REJECT = 1
    LOG = 2


def packet_in_userdata(kind: PacketInKind, rule_id: int) -> bytes:
    return bytes([int(kind), 0, 0, 0]) + (rule_id & 0xFFFF_FFFF).to_bytes(4, "big")
