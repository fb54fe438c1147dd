"""Static NAT, load-balanced DNAT (select groups) and DNAT+SNAT on one connection, off the switch.

The compiled groups on the wire and back; a plan that brings a group in before the flows that use
it and takes it away after them (against a fake of OVS's bundle rules); the simulator's choice of a
bucket (one connection keeps its backend, connections spread by weight); the second zone.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter

from os_ken.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3, ofproto_v1_4

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import Ct, Group
from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.pipeline import CT_LABEL_SECOND_ZONE, Table, is_our_group
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.policy.ir import Backend
from ovsmgr.sim import Conversation, SimulatedSwitch, parse_packet
from ovsmgr.sim.engine import pick_bucket
from ovsmgr.southbound.openflow import InstalledFlow, encode_group
from ovsmgr.southbound.openflow.groups import (
    OFPGC_ADD,
    decode_group,
    group_desc_entries,
    group_id_of,
    group_mod,
    is_group,
)
from ovsmgr.southbound.openflow.messages import OFP13, OFP14, OFPT_MULTIPART_REPLY, message
from ovsmgr.switch.plan import desired_flows, make_plan
from tests.support.fakes import FakeTable
from tests.support.policies import two_ports

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
HOSTING = compile_policy(load_policy([ROOT / "policies" / "hosting.yaml"]))


def _pool(weights: tuple[int, int] = (3, 1), up: tuple[bool, bool] = (True, True)) -> str:
    backends = ", ".join(f"{{address: 10.0.0.{10 + i}, port: 8443, weight: {w}}}" for i, w in enumerate(weights))
    return two_ports(f"""
firewall:
  default: drop
  rules:
    - {{name: web-in, from: outside, dst: 200.200.200.200, services: [tcp/443], action: allow}}
nat:
  - {{name: web-pool, type: dnat, from: outside, dst: 200.200.200.200, services: [tcp/443],
     backends: [{backends}]}}
""")


def test_a_pool_is_one_select_group_with_a_bucket_per_backend_by_weight() -> None:
    compiled = compile_policy(load_policy_text(_pool(), "pool.yaml"))
    (group,) = compiled.groups
    assert is_our_group(group.group_id) and group.table == Table.NAT and group.rule == "web-pool"
    assert [b.weight for b in group.buckets] == [3, 1]
    targets = [next(a for a in b.actions if isinstance(a, Ct)).nat for b in group.buckets]
    assert [(str(ipaddress.ip_address(t.addr_lo)), t.port_lo) for t in targets if t] == [
        ("10.0.0.10", 8443), ("10.0.0.11", 8443)]
    users = [f for f in compiled.flows if any(isinstance(a, Group) for a in f.actions)]
    assert users and all(f.table == Table.NAT for f in users)
    assert compiled.rule_ids[group.group_id] == "web-pool"


def test_a_backend_taken_out_leaves_the_group_and_a_pool_with_none_up_has_no_bucket() -> None:
    policy = load_policy_text(_pool(), "pool.yaml")
    rule = policy.nat[0]
    down = rule.backends[1].__class__(rule.backends[1].address, 8443, 1, up=False)
    one = compile_policy(policy.__class__(**{**policy.__dict__, "nat": (
        rule.__class__(**{**rule.__dict__, "backends": (rule.backends[0], down)}),)}))
    assert [b.weight for b in one.groups[0].buckets] == [3]
    none = rule.__class__(**{**rule.__dict__, "backends": tuple(Backend(b.address, b.port, b.weight, False)
                                                                 for b in rule.backends)})
    empty = compile_policy(policy.__class__(**{**policy.__dict__, "nat": (none,)}))
    assert empty.groups[0].buckets == () and empty.groups[0].group_id == one.groups[0].group_id


def test_groups_go_on_the_wire_as_ovs_reports_them_and_os_ken_reads_them() -> None:
    for group in HOSTING.groups:
        mod = encode_group(group)
        assert is_group(mod) and group_id_of(mod) == group.group_id
        assert decode_group(mod) is not None and decode_group(mod).buckets == group.buckets  # type: ignore[union-attr]
        raw = group_mod(mod, OFPGC_ADD, 9, OFP14)
        assert struct.unpack_from("!BBHIHBxI", raw) == (OFP14, 15, len(raw), 9, OFPGC_ADD, 1, group.group_id)
        assert raw[16:] == mod.body[9:]  # the buckets, as a group description reports them
        # a group description reply as OVS writes one: only ovsmgr's groups are taken, and os-ken (an
        # independent reader) sees the buckets ovsmgr wrote
        desc = struct.pack("!HBxI", 8 + len(mod.body) - 9, mod.body[8], group.group_id) + mod.body[9:]
        foreign = struct.pack("!HBxI", 8, 1, 7)
        for version, ofp in ((OFP13, ofproto_v1_3), (OFP14, ofproto_v1_4)):
            reply = message(OFPT_MULTIPART_REPLY, 1, struct.pack("!HH4x", 7, 0) + foreign + desc, version)
            assert group_desc_entries(reply) == [mod]
            parsed = ofproto_parser.msg(ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION), *ofproto_parser.header(reply),
                                        reply)
            ours = parsed.body[1]
            assert (ours.group_id, ours.type, [b.weight for b in ours.buckets]) == (
                group.group_id, ofp.OFPGT_SELECT, [b.weight for b in group.buckets])
            assert all(b.watch_port == ofp.OFPP_ANY and b.watch_group == ofp.OFPG_ANY for b in ours.buckets)
            assert [len(b.actions) for b in ours.buckets] == [len(b.actions) for b in group.buckets]


def test_a_plan_brings_groups_in_before_their_flows_and_takes_them_away_after() -> None:
    table = FakeTable()
    pool = compile_policy(load_policy_text(_pool(), "pool.yaml"))
    table.push(make_plan(table.read(), desired_flows(pool.flows, groups=pool.groups)).bundle())
    assert {g.group_id for g in pool.groups} <= {group_id_of(m) for m in table.flows.values() if is_group(m)}
    # reweighted: the group changes in place (modified, not added again), the flows stay
    heavier = compile_policy(load_policy_text(_pool((1, 5)), "pool.yaml"))
    plan = make_plan(table.read(), desired_flows(heavier.flows, groups=heavier.groups))
    assert plan.counts() == {"add": 0, "delete": 0, "change": 1}
    (op,) = plan.bundle()
    assert is_group(op.flow) and op.replaces and not op.delete
    table.push(plan.bundle())
    table.push(plan.inverse().bundle())  # and back, as a failed apply puts it
    assert [b.weight for b in decode_group(next(m for m in table.flows.values() if is_group(m))).buckets] == [3, 1]  # type: ignore[union-attr]
    # no pool any more: the flows that use the group go first, the group last
    plain = compile_policy(load_policy_text(two_ports("firewall: {default: drop}"), "plain.yaml"))
    ops = make_plan(table.read(), desired_flows(plain.flows)).bundle()
    kinds = [(is_group(op.flow), op.delete) for op in ops]
    assert kinds[-1] == (True, True) and (True, True) not in kinds[:-1]
    table.push(ops)
    assert not any(is_group(m) for m in table.flows.values())
    assert make_plan([InstalledFlow(m, 0, 0) for m in table.flows.values()], desired_flows(plain.flows)).empty


def test_a_connection_keeps_its_bucket_both_ways_and_connections_spread_by_weight() -> None:
    group = compile_policy(load_policy_text(_pool(), "pool.yaml")).groups[0]
    chosen = Counter()
    for port in range(20000, 24000):
        packet = parse_packet(f"tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_src={port},tp_dst=443")
        bucket = pick_bucket(group, packet)
        back = parse_packet(f"tcp,nw_src=200.200.200.200,nw_dst=198.51.100.9,tp_src=443,tp_dst={port}")
        assert pick_bucket(group, back) is bucket
        chosen[group.buckets.index(bucket)] += 1  # type: ignore[arg-type]
    assert 0.72 < chosen[0] / 4000 < 0.78, chosen


def test_the_office_reaches_the_pool_translated_twice_in_two_zones() -> None:
    switch = SimulatedSwitch.from_policy(HOSTING.policy, compiled=HOSTING)
    talk = Conversation(switch)
    out = talk.send("office0", "tcp,nw_src=10.0.1.50,nw_dst=200.200.200.200,tp_dst=443")
    assert out.output == ("office0",) and out.packet.nw_src == int(ipaddress.IPv4Address("200.200.200.1"))
    zones = {c.zone: c for c in out.conntrack.connections}
    policy = HOSTING.policy
    assert set(zones) == {policy.ct_zone, policy.second_zone}
    # Each zone's entry names the NAT rule that translated it there (ct_label[32..63]).
    assert zones[policy.ct_zone].nat == frozenset({"dst"})
    assert zones[policy.ct_zone].label == CT_LABEL_SECOND_ZONE | rule_id("web-pool-office") << 32
    assert zones[policy.second_zone].nat == frozenset({"src"})
    assert zones[policy.second_zone].label == rule_id("office-hairpin") << 32
    back = talk.reply()
    assert back.output == ("office0",) and back.packet.nw_src == int(ipaddress.IPv4Address("200.200.200.200"))
    assert back.packet.tp_src == 443 and back.packet.nw_dst == int(ipaddress.IPv4Address("10.0.1.50"))


def test_static_nat_translates_both_ways_and_comes_before_the_masquerade() -> None:
    switch = SimulatedSwitch.from_policy(HOSTING.policy, compiled=HOSTING)
    out = Conversation(switch).send("office0", "udp,nw_src=10.0.1.20,nw_dst=198.51.100.9,tp_dst=53")
    assert out.packet.nw_src == int(ipaddress.IPv4Address("200.200.200.20"))
    inbound = Conversation(switch).send("wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.20,tp_dst=5432")
    assert inbound.rule == "db-in" and inbound.packet.nw_dst == int(ipaddress.IPv4Address("10.0.1.20"))
    masqueraded = Conversation(switch).send("office0", "udp,nw_src=10.0.1.21,nw_dst=198.51.100.9,tp_dst=53")
    assert masqueraded.packet.nw_src == int(ipaddress.IPv4Address("200.200.200.1"))
