"""`limit:`: the rates the language takes, the meters a limited rule compiles to, how they travel
(a meter entry beside the flows; meter_mods around the flows' bundle, never a flow without its
meter) and how their drops are read back. Real traffic held to a rate: tests/integration/test_limits.py."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_protocol, ofproto_v1_3
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import Meter
from ovsmgr.compiler.ids import meter_id
from ovsmgr.compiler.pipeline import METER_IDS, Table
from ovsmgr.controller.metrics import registry_for
from ovsmgr.policy import load_policy_text
from ovsmgr.policy.terms import TermError, parse_limit
from ovsmgr.southbound.openflow import BundleOp, InstalledFlow, SwitchFlowTable
from ovsmgr.southbound.openflow import messages as m
from ovsmgr.southbound.openflow import meters as mt
from ovsmgr.switch.plan import desired_of, full_replacement, make_plan
from ovsmgr.switch.settings import snat_exhaustion_warnings
from tests.support.fakes import FakeTable
from tests.unit.test_controller_engine import POLICY

LIMITED = POLICY.replace("services: [tcp/80, tcp/443], action: allow}",
                         "services: [tcp/80, tcp/443], action: allow, limit: 200/s}") + """nat:
  - {name: masq, type: snat, from: inside, to: outside, translate_to: 198.51.100.200, limit: 120/m}
"""


@pytest.mark.parametrize(("text", "unit", "rate"), [
    ("500/s", "pktps", 500), ("600/m", "pktps", 10), (" 64kbit/s", "kbps", 64), ("10mbit/s", "kbps", 10000),
    ("3 / s", "pktps", 3),
])
def test_rates_are_what_a_meter_counts(text: str, unit: str, rate: int) -> None:
    limit = parse_limit(text)
    assert (limit.unit, limit.rate) == (unit, rate)


@pytest.mark.parametrize("text", ["0/s", "30/m", "5kbit/m", "10", "fast", "1gbit/s", "99999999999/s"])
def test_rates_a_meter_cannot_count_are_refused(text: str) -> None:
    with pytest.raises(TermError):
        parse_limit(text)


def test_every_packet_of_a_limited_rule_meets_its_meter_once() -> None:
    compiled = compile_policy(load_policy_text(LIMITED))
    web, masq = meter_id("web"), meter_id("masq")
    assert web in METER_IDS and masq in METER_IDS
    metered = {(f.table, f.rule) for f in compiled.flows if f.actions and f.actions[0] == Meter(web)}
    # new connections in FILTER, their later packets (both ways) in STATE on the rule's fingerprint
    assert metered == {(Table.FILTER, "web"), (Table.STATE, "web")}
    web_filter = [f for f in compiled.flows if f.table == Table.FILTER and f.rule == "web"
                  and not all(type(a).__name__ == "Conjunction" for a in f.actions)]
    assert web_filter and all(f.actions[0] == Meter(web) for f in web_filter)
    nat = [f for f in compiled.flows if f.table == Table.NAT and f.rule == "masq"]
    assert nat and all(f.actions[0] == Meter(masq) for f in nat)
    assert not any(Meter(web) in f.actions or Meter(masq) in f.actions for f in compiled.flows
                   if f.rule not in ("web", "masq"))
    by_rule = {c.rule: c for c in compiled.meters}
    assert (by_rule["web"].unit, by_rule["web"].rate, by_rule["web"].burst) == ("pktps", 200, 20)
    assert (by_rule["masq"].unit, by_rule["masq"].rate, by_rule["masq"].burst) == ("pktps", 2, 1)


def test_a_limit_on_one_rule_renumbers_no_other_meter() -> None:
    one = compile_policy(load_policy_text(LIMITED))
    two = compile_policy(load_policy_text(LIMITED.replace("action: allow, stateful: false}",
                                                          "action: allow, stateful: false, limit: 1mbit/s}")))
    assert {c.rule: c.id for c in one.meters}.items() <= {c.rule: c.id for c in two.meters}.items()
    assert {c.rule: c.unit for c in two.meters}["dns"] == "kbps"


def test_meter_mods_are_what_os_ken_writes() -> None:
    """An independent encoder of OpenFlow 1.3 makes the same meter_mods from the same fields."""
    dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    for meter in compile_policy(load_policy_text(LIMITED)).meters:
        flags = (dp.ofproto.OFPMF_PKTPS if meter.unit == "pktps" else dp.ofproto.OFPMF_KBPS) \
            | dp.ofproto.OFPMF_BURST | dp.ofproto.OFPMF_STATS
        for command in (mt.OFPMC_ADD, mt.OFPMC_MODIFY, mt.OFPMC_DELETE):
            bands = [] if command == mt.OFPMC_DELETE else [parser.OFPMeterBandDrop(meter.rate, meter.burst)]
            theirs = parser.OFPMeterMod(dp, command, flags if bands else 0, meter.id, bands)
            theirs.set_xid(9)
            theirs.serialize()
            assert mt.meter_mod(command, mt.meter_entry(meter), 9, m.OFP13) == bytes(theirs.buf)


def _config_reply(entries: Sequence[tuple[int, bytes]], xid: int = 1) -> bytes:
    """An OFPMP_METER_CONFIG reply as the switch sends it, with foreign meters among ours."""
    body = b"".join(struct.pack("!HHI", 8 + len(bands), flags, meter) + bands for meter, flags, bands in
                    ((meter, struct.unpack_from("!H", raw)[0], raw[2:]) for meter, raw in entries))
    return struct.pack("!BBHIHH4x", m.OFP13, m.OFPT_MULTIPART_REPLY, 16 + len(body), xid, mt.OFPMP_METER_CONFIG,
                       0) + body


def test_a_meter_read_back_is_the_entry_written() -> None:
    meters = compile_policy(load_policy_text(LIMITED)).meters
    entries = [mt.meter_entry(c) for c in meters]
    reply = _config_reply([(7, entries[0].body[8:])] + [(mt.meter_id(e), e.body[8:]) for e in entries])
    assert mt.meter_config_entries(reply) == entries  # meter 7 is somebody else's: never read


class FakeSwitch:
    """A `Channel` that keeps meters, answers barriers, bundle controls and meter dumps, and records
    what it was sent."""

    version = m.OFP14

    def __init__(self, meters: Sequence[m.FlowMod] = ()) -> None:
        self.meters = {mt.meter_id(e): e.body[8:] for e in meters}
        self.sent: list[tuple[str, int]] = []
        self.replies: list[bytes] = []
        self.xid = 0

    def next_xid(self) -> int:
        self.xid += 1
        return self.xid

    def send(self, data: bytes) -> None:
        offset = 0
        while offset < len(data):
            _, kind, length, xid = m.HEADER.unpack_from(data, offset)
            if kind == mt.OFPT_METER_MOD:
                command, flags, meter = struct.unpack_from("!HHI", data, offset + 8)
                self.sent.append(({0: "meter add", 1: "meter modify", 2: "meter delete"}[command], meter))
                if command == mt.OFPMC_DELETE:
                    del self.meters[meter]
                else:
                    assert (command == mt.OFPMC_MODIFY) == (meter in self.meters), "ADD of a meter that is there"
                    self.meters[meter] = struct.pack("!H", flags) + data[offset + 16:offset + length]
            elif kind == m.OFPT_BUNDLE_ADD_MESSAGE:
                self.sent.append(("bundle", data[offset + 16 + 24]))  # the flow_mod's table
            elif kind == m.OFPT_MULTIPART_REQUEST:
                self.replies.append(_config_reply(list(self.meters.items()), xid))
            elif kind in (m.OFPT_BARRIER_REQUEST, m.OFPT_BUNDLE_CONTROL):
                self.replies.append(m.message(kind + 1 if kind == m.OFPT_BARRIER_REQUEST else kind, xid))
            offset += length

    def receive(self, deadline: float) -> bytes:
        return self.replies.pop(0)


def _ops(plan_ops: list[BundleOp], installed: Sequence[m.FlowMod] = ()) -> list[tuple[str, int]]:
    switch = FakeSwitch([mod for mod in installed if mt.is_meter(mod)])
    SwitchFlowTable(switch).push(plan_ops)
    return [(what, n) for what, n in switch.sent if what != "bundle" or n in (Table.FILTER, Table.NAT)]


def test_new_meters_go_before_the_flows_that_use_them_and_old_ones_after() -> None:
    before = desired_of(compile_policy(load_policy_text(POLICY)))
    after = desired_of(compile_policy(load_policy_text(LIMITED)))
    adding = _ops(make_plan([InstalledFlow(mod, 0, 0) for mod in before.values()], after).bundle())
    first_flow = next(i for i, (what, _) in enumerate(adding) if what == "bundle")
    assert {what for what, _ in adding[:first_flow]} == {"meter add"}
    assert {n for what, n in adding if what == "meter add"} == {meter_id("web"), meter_id("masq")}
    removing = _ops(make_plan([InstalledFlow(mod, 0, 0) for mod in after.values()], before).bundle(),
                    list(after.values()))
    last_flow = max(i for i, (what, _) in enumerate(removing) if what == "bundle")
    assert {what for what, _ in removing[last_flow + 1:]} == {"meter delete"}
    assert "meter add" not in {what for what, _ in removing}


def test_a_changed_or_replaced_meter_is_modified_never_deleted() -> None:
    """Deleting a meter deletes the flows that use it: a full replacement must not."""
    old = desired_of(compile_policy(load_policy_text(LIMITED)))
    new = desired_of(compile_policy(load_policy_text(LIMITED.replace("limit: 200/s", "limit: 300/s"))))
    installed = [InstalledFlow(mod, 0, 0) for mod in old.values()]
    changed = _ops(make_plan(installed, new).bundle(), list(old.values()))
    assert [op for op in changed if op[0].startswith("meter")] == [("meter modify", meter_id("web"))]
    replaced = _ops(full_replacement(installed, new).bundle(), list(old.values()))
    undone = _ops(make_plan(installed, new).inverse().bundle(), list(new.values()))
    assert [op for op in undone if op[0].startswith("meter")] == [("meter modify", meter_id("web"))]
    assert sorted(op for op in replaced if op[0].startswith("meter")) == sorted(
        [("meter modify", meter_id("masq")), ("meter modify", meter_id("web"))])


def test_a_table_without_meters_gets_one_bundle_as_before() -> None:
    table = FakeTable()
    plan = make_plan([], desired_of(compile_policy(load_policy_text(POLICY))))
    table.push(plan.bundle())
    assert len(table.pushes) == 1 and not any(mt.is_meter(op.flow) for op in table.pushes[0])


def test_metrics_count_each_limit_s_drops_by_rule() -> None:
    snap = {"bridge": "br0", "generation": 1, "applied_at": 0, "last_change_seconds": 0, "connected": True,
            "flows": 1, "reload_failures": 0, "update_failures": 0, "stats": {}, "names": {},
            "counters": __import__("ovsmgr.controller.metrics", fromlist=["Counters"]).Counters(),
            "limit_drops": {"web": 42}}
    registry = registry_for(lambda: snap)
    assert registry.get_sample_value("ovsmgr_limit_dropped_packets_total", {"bridge": "br0", "rule": "web"}) == 42


@pytest.mark.parametrize(("max_connections", "warns"), [
    (64512, True), (60000, True), (50000, True), (32257, True), (32256, False), (30000, False), (1000, False)])
def test_the_warning_fires_while_the_zone_limit_is_close_to_the_nat_s_ports(max_connections: int,
                                                                             warns: bool) -> None:
    """OVS's NAT gives up its search before the ports are all taken: a zone limit of 60,000 of the
    64,512 ports does not keep a one-destination flood from failed searches, half of them does."""
    seed = (Path(__file__).resolve().parents[2] / "policies" / "seed-nat.yaml").read_text()
    found = snat_exhaustion_warnings(load_policy_text(seed.replace(
        "  zone: 1", f"  zone: 1\n  max_connections: {max_connections}")))
    if not warns:
        assert found == []
        return
    (warning,) = found
    assert f"conntrack.max_connections {max_connections:,} is too close to that" in warning
    assert "keep max_connections well below the ports, at most 32,256 (half)" in warning
    assert "gives up before they are all taken" in warning


def test_no_example_policy_keeps_a_zone_limit_close_to_its_nat_s_ports() -> None:
    """The examples show the advice they would get from apply: a zone limit at most half an SNAT
    rule's ports (gateway.yaml gave 60,000 of 64,512)."""
    policies = Path(__file__).resolve().parents[2] / "policies"
    for path in sorted(policies.glob("*.yaml")):
        policy = load_policy_text(path.read_text())
        if policy.max_connections is not None:
            assert snat_exhaustion_warnings(policy) == [], path.name


def test_a_nat_limit_that_keeps_one_destination_s_ports_from_filling_silences_the_warning() -> None:
    seed = (Path(__file__).resolve().parents[2] / "policies" / "seed-nat.yaml").read_text()

    def warnings(limit: str) -> list[str]:
        text = seed.replace("translate_to: 200.200.200.200", f"translate_to: 200.200.200.200{limit}")
        return snat_exhaustion_warnings(load_policy_text(text))

    (warning,) = warnings("")
    assert "below 2,150/s new connections" in warning  # 64,512 ports over 30 s of unanswered SYNs
    assert warnings("\n    limit: 2000/s") == []
    assert len(warnings("\n    limit: 3000/s")) == 1
