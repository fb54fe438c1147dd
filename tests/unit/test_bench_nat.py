"""NAT under connection floods: SYNs spread over destinations, the flood method's arithmetic,
the bench-only NAT variants (meters, nat() flags) and the verdicts on the issue's targets."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ovsmgr.bench.flood import ping_figures, port_space_figures, stream_figures
from ovsmgr.bench.methods import plan_experiment
from ovsmgr.bench.natvariant import meter_command, variant_flows, with_flags
from ovsmgr.bench.pipelines import BENCH_COOKIE, Config, compiled_for
from ovsmgr.bench.report import evaluate_targets, render_report
from ovsmgr.bench.results import FORMAT, point_record
from ovsmgr.bench.runner import repeat_starved
from ovsmgr.bench.spec import Destinations, NatMeter, Rate, SpecError
from ovsmgr.bench.specfile import load_spec, parse_spec
from ovsmgr.bench.testbed import LOAD_PORT_DROP
from ovsmgr.bench.traffic import Endpoints, trafgen_config
from ovsmgr.switch.settings import snat_exhaustion_warnings, snat_source_ports

BENCH = Path(__file__).resolve().parents[2] / "bench"
ENDS = Endpoints("aa:00:00:00:00:01", "aa:00:00:00:00:02", "10.1.0.2", "10.2.0.2", "10.1.0.0/16", "10.2.0.0/16")


# --- the spec ----------------------------------------------------------------------------------------
def test_cps_spreads_destinations_unless_told_and_flood_defaults_to_one() -> None:
    cps, flood = parse_spec("experiments:\n  - {method: cps}\n  - {method: flood}\n").experiments
    assert cps.destinations == (Destinations(16, 64),)
    assert flood.destinations == (Destinations(1, 1),) and flood.pipelines == ("seed-nat",)
    assert flood.rates == (Rate(250000.0),) and flood.stream == Rate(100e6, "bps")
    assert flood.nat_meter is None and flood.nat_flags == ()
    exp = parse_spec("""\
experiments:
  - {method: flood, destinations: [{addresses: 4}, {ports: 8}], rates: [50kpps, 100kpps], stream: 20Mbit,
     nat_meter: {packets: syn, rate: 2000}, nat_flags: [random, persistent]}
""").experiments[0]
    assert exp.destinations == (Destinations(4, 1), Destinations(1, 8))
    assert exp.nat_meter == NatMeter("syn", 2000.0) and exp.nat_flags == ("random", "persistent")
    assert exp.stream == Rate(20e6, "bps") and len(exp.rates) == 2


def test_mistakes_in_destinations_and_nat_variants_have_their_place() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("""\
experiments:
  - {method: cps, destinations: [{addresses: 0}, {adresses: 2}]}
  - {method: flood, nat_meter: {packets: all, rate: 100}, nat_flags: [fast]}
  - {method: flood, pipelines: [plain], nat_flags: random}
  - {method: ndr, destinations: {ports: 2}}
  - {method: flood, nat_meter: {packets: new, rate: 100}}
""", "n.yaml")
    messages = [str(d) for d in caught.value.diagnostics]
    assert any(m.startswith("n.yaml:2:") and "integer in 1..4096" in m for m in messages)
    assert any(m.startswith("n.yaml:2:") and "unknown key 'adresses' (allowed: addresses, ports)" in m
               for m in messages)
    assert any(m.startswith("n.yaml:3:") and "packets must be syn" in m for m in messages)
    assert any(m.startswith("n.yaml:3:") and "'fast' is not one of random, hash, persistent" in m for m in messages)
    assert any(m.startswith("n.yaml:4:") and "plain forwarding has none" in m for m in messages)
    assert any(m.startswith("n.yaml:5:") and "unknown key 'destinations'" in m for m in messages)
    assert any(m.startswith("n.yaml:6:") and "packets: new is the policy's limit: on the NAT rule" in m
               for m in messages), "a meter on a NAT rule's new connections is the policy's limit:"


def test_the_nat_spec_measures_both_datapaths_spread_and_one_destination() -> None:
    spec = load_spec(BENCH / "nat.yaml")
    by_name = {e.name: e for e in spec.experiments}
    assert set(by_name["cps"].destinations) == {Destinations(16, 64), Destinations(1, 1)}
    floods = [e for e in spec.experiments if e.method == "flood"]
    assert {e.settings.datapath for e in floods} == {"dpdk", "netdev"}
    assert any(e.nat_meter and e.nat_meter.packets == "syn" for e in floods)
    limited = [p for e in floods for p in e.pipelines if p.endswith(".yaml")
               and any(rule.limit for rule in compiled_for(Config("ovs", p))[0].policy.nat)]
    assert {e.settings.datapath for e in floods if set(e.pipelines) & set(limited)} == {"dpdk", "netdev"}, \
        "the NAT limit is measured as the policy's own limit: on the NAT rule, on both datapaths"
    for exp in spec.experiments:
        for pipeline in exp.pipelines:
            assert pipeline in ("plain", "seed-firewall", "seed-nat") or Path(pipeline).is_file()


# --- plans and loads -----------------------------------------------------------------------------------
def test_cps_has_a_group_per_destinations_and_flood_compares_a_pipeline_with_itself() -> None:
    cps, flood = parse_spec("""\
experiments:
  - {method: cps, pipelines: [seed-nat], destinations: [{addresses: 16, ports: 64}, {}]}
  - {method: flood, pipelines: [plain, seed-nat], nat_meter: {packets: syn, rate: 500}, rates: [10kpps, 20kpps]}
""").experiments
    groups = plan_experiment(cps)
    assert [g.subjects[0].destinations for g in groups] == [Destinations(16, 64), Destinations(1, 1)]
    assert all(g.baseline is not None and g.baseline.config.pipeline == "plain" for g in groups)
    assert groups[0].subjects[0].params()["destinations"] == "16x64"
    groups = plan_experiment(flood)
    assert len(groups) == 4
    for g in groups:
        assert g.baseline is not None and g.baseline.rate is None and g.subjects[0].rate is not None
        assert g.baseline.config == g.subjects[0].config
    plain, nat = groups[0].baseline, groups[2].baseline
    assert plain is not None and nat is not None
    assert plain.config.nat_meter is None, "plain forwarding has no NAT rule to meter"
    assert nat.config.nat_meter == NatMeter("syn", 500) and nat.config.label == "seed-nat+meter syn 500/s"
    assert groups[2].subjects[0].params()["flood"] == "10kpps" and nat.params()["flood"] == "none"


def test_syns_go_to_random_destinations_of_the_sink_network_and_ports_above_10000() -> None:
    spread = trafgen_config(ENDS, "tcp", 9, 64, 1, "random", Destinations(16, 64))
    assert "da=10.2.0.0, da[2:2]=drnd(256, 271)" in spread and "dp=drnd(10000, 10063)" in spread
    assert "syn" in spread and "sp=drnd(1024, 65535)" in spread
    one = trafgen_config(ENDS, "tcp", 9, 64, 1, "random")
    assert "da=10.2.0.2," in one and "dp=9," in one
    small = replace(ENDS, dst_network="10.2.0.0/24")
    assert "da[3]=drnd(1, 10)" in trafgen_config(small, "tcp", 9, 64, 1, "random", Destinations(10, 1))
    with pytest.raises(ValueError, match="no room for 300"):
        trafgen_config(small, "tcp", 9, 64, 1, "random", Destinations(300, 1))


def test_the_hosts_drop_and_count_every_destination_port_and_nothing_the_bench_needs() -> None:
    rules = LOAD_PORT_DROP.format(iface="eth0", ports="{ 9, 10000-14095 }")
    assert "th dport { 9, 10000-14095 } counter drop" in rules
    for needed in (22, 5201, 7000, 7001, 7002):
        assert not (needed == 9 or 10000 <= needed <= 14095)


# --- NAT variants --------------------------------------------------------------------------------------
def test_flags_go_inside_nat_and_the_syn_meter_is_a_packet_rate() -> None:
    flow = "cookie=0x1,table=50,priority=20000,ip actions=set_field:0x2->reg4,ct(commit,nat(src=200.200.200.200))"
    assert "nat(src=200.200.200.200,random,hash)" in with_flags(flow, ("random", "hash"))
    assert with_flags(flow, ()) == flow
    assert meter_command(NatMeter("syn", 2000)) == ["add-meter",
                                                    "meter=1,pktps,burst,band=type=drop,rate=2000,burst_size=200"]


def test_variants_of_the_seed_nat() -> None:
    compiled, _ = compiled_for(Config("ovs", "seed-nat"))
    flags = variant_flows(compiled, None, ("random",), BENCH_COOKIE)
    assert len(flags) == 1 and "nat(src=200.200.200.200,random)" in flags[0] and "meter" not in flags[0]
    syn = variant_flows(compiled, NatMeter("syn", 100), (), BENCH_COOKIE)
    assert syn == [f"cookie={BENCH_COOKIE:#x},table=10,priority=101,tcp,in_port=1,tcp_flags=+syn-ack "
                   "actions=meter:1,ct(table=20,zone=1)"]
    assert variant_flows(compiled, None, (), BENCH_COOKIE) == []
    firewall, _ = compiled_for(Config("ovs", "seed-firewall"))
    with pytest.raises(ValueError, match="has none"):
        variant_flows(firewall, NatMeter("syn", 100), (), BENCH_COOKIE)


def test_the_port_space_of_an_snat_rule_and_the_warning_when_a_flood_can_exhaust_it() -> None:
    compiled, _ = compiled_for(Config("ovs", "seed-nat"))
    assert snat_source_ports(compiled.policy.nat[0]) == 64512
    wide, _ = compiled_for(Config("ovs", str(BENCH / "nat" / "seed-nat-8-addresses.yaml")))
    assert snat_source_ports(wide.policy.nat[0]) == 8 * 64512
    limited, _ = compiled_for(Config("ovs", str(BENCH / "nat" / "seed-nat-zone-limit.yaml")))
    assert snat_exhaustion_warnings(limited.policy) == []
    (warning,) = snat_exhaustion_warnings(compiled.policy)
    assert "masquerade has 64,512 source ports per destination" in warning and "is not set" in warning
    (warning,) = snat_exhaustion_warnings(wide.policy)
    assert "516,096" in warning
    firewall, _ = compiled_for(Config("ovs", "seed-firewall"))
    assert snat_exhaustion_warnings(firewall.policy) == []
    assert port_space_figures(32256, 64512, 1) == {"conntrack_connections": 32256.0, "port_space_used": 0.5}
    assert port_space_figures(500, 0, 1) == {"conntrack_connections": 500.0}
    assert port_space_figures(None, 64512, 1) == {}


# --- the flood's arithmetic ------------------------------------------------------------------------------
def ping_output(replies: dict[int, float], sent: int, start: float = 1000.0, interval: float = 0.01) -> str:
    lines = [f"[{start + (seq - 1) * interval + rtt / 1000:.6f}] 64 bytes from 10.2.0.2: icmp_seq={seq} ttl=64 "
             f"time={rtt} ms" for seq, rtt in replies.items()]
    lines += ["", "--- 10.2.0.2 ping statistics ---",
              f"{sent} packets transmitted, {len(replies)} received, 0% packet loss, time 999ms"]
    return "\n".join(lines)


def test_ping_counts_only_requests_sent_in_the_window_and_places_lost_ones_between_neighbours() -> None:
    replies = {seq: 0.5 for seq in range(1, 101) if seq not in (50, 51, 99)}
    replies[60] = 30.0  # a late answer still counts, by its send time
    text = ping_output(replies, sent=100)
    figures = ping_figures(text, (1000.195, 1000.805))  # requests 21..81
    assert figures["ping_sent"] == 61
    assert figures["ping_loss"] == pytest.approx(2 / 61, abs=1e-4)
    assert figures["ping_rtt_p50_ms"] == 0.5 and figures["ping_rtt_max_ms"] == 30.0
    quiet = ping_figures(ping_output({s: 0.1 for s in range(1, 11)}, 10), (999.0, 1001.0))
    assert quiet["ping_loss"] == 0 and quiet["ping_sent"] == 10
    assert math.isnan(ping_figures("", (0, 1))["ping_loss"])


def test_the_stream_is_what_the_server_received_in_the_window() -> None:
    intervals = [{"sum": {"start": t, "end": t + 0.25, "bytes": 3_125_000 if 1.0 <= t < 3.0 else 1_000_000}}
                 for t in (i * 0.25 for i in range(16))]
    server = {"intervals": intervals}
    client = {"end": {"sum_sent": {"retransmits": 7}}}
    figures = stream_figures(server, client, (1.0, 3.0))
    assert figures == {"stream_mbps": 100.0, "stream_window_s": 2.0, "stream_retransmits": 7.0}
    assert math.isnan(stream_figures({}, {}, (1.0, 3.0))["stream_mbps"])


def test_a_trial_that_starved_the_switch_is_repeated_and_the_best_one_kept() -> None:
    shares = iter([0.4, 0.95, 0.3])
    result = repeat_starved(lambda: {"pmd_cpu_share": next(shares)}, 0.9)
    assert result == {"pmd_cpu_share": 0.95, "attempts": 2, "attempt_pmd_cpu_shares": [0.4, 0.95]}
    always = itertools.repeat(0.5)
    result = repeat_starved(lambda: {"pmd_cpu_share": next(always)}, 0.9)
    assert result["attempts"] == 4
    assert repeat_starved(lambda: {"stream_mbps": 1.0}, 0.9) == {"stream_mbps": 1.0, "attempts": 1}


# --- verdicts ------------------------------------------------------------------------------------------
def flood_point(pipeline: str, destinations: str, stream: tuple[float, float], loss: float) -> dict[str, Any]:
    params = {"pipeline": pipeline, "measure": "flood", "destinations": destinations, "flood": "250kpps"}
    run = {"stream_mbps": stream[1], "ping_loss": loss, "ping_rtt_p50_ms": 1.0, "flood_offered_pps": 2e5}
    base = {"stream_mbps": stream[0], "ping_loss": 0.0, "ping_rtt_p50_ms": 0.1, "flood_offered_pps": 1.0}
    return point_record("flood", "flood", params, [run], {**params, "flood": "none"}, [base], "flood")


def test_targets_nat_cps_over_spread_destinations_and_established_traffic_under_a_flood() -> None:
    cps = [point_record("cps", "cps", {"pipeline": "seed-nat", "measure": "cps", "destinations": d},
                        [{"cps": v}], {"pipeline": "plain", "measure": "cps"}, [{"cps": 100_000.0}], "cps")
           for d, v in (("16x64", 60_000.0), ("1x1", 20_000.0))]
    floods = [flood_point("seed-nat", "1x1", (100, 9), 0.6), flood_point("seed-nat-zone-limit", "1x1", (100, 99), 0.0),
              flood_point("seed-nat+meter syn 2000/s", "1x1", (100, 99), 0.01),
              flood_point("plain", "1x1", (100, 100), 0.0), flood_point("seed-nat", "16x64", (100, 100), 0.0)]
    verdicts = {(v["target"], _pipeline(v)): v for v in evaluate_targets([*cps, *floods])}
    nat_cps = verdicts[("NAT new connections/s, spread destinations / plain forwarding", "seed-nat")]
    assert nat_cps["status"] == "met" and nat_cps["ratio"] == 0.6
    flood = "established stream during a one-destination SYN flood / without"
    assert verdicts[(flood, "seed-nat")]["status"] == "missed"
    assert verdicts[(flood, "seed-nat-zone-limit")]["status"] == "met"
    meter = verdicts[(flood, "seed-nat+meter syn 2000/s")]
    assert meter["status"] == "missed" and meter["reason"] == "the ping lost 1.0%"
    assert (flood, "plain") not in verdicts, "plain forwarding is the testbed's own reference"
    report = render_report({"format": FORMAT, "name": "n", "points": [*cps, *floods], "experiments": [],
                            "environment": {"host": {}, "versions": {}}})
    assert "| seed-nat-zone-limit | 1x1 |" in report and "100 / 99 | 0.99x | 0 / 0 |" in report


def _pipeline(verdict: dict[str, Any]) -> str | None:
    return verdict["point"]["params"]["pipeline"] if verdict["point"] else None


def test_connections_are_counted_where_the_datapath_cannot_count_them() -> None:
    from ovsmgr.bench.testbed import conntrack_count

    def userspace(args: list[str]) -> str:
        return "1234\n"

    def kernel(args: list[str]) -> str:
        if args == ["dpctl/ct-get-nconns"]:
            raise RuntimeError("ct-get-nconns: operation not supported")
        return "tcp,orig=(src=10.1.0.2,...)\nicmp,orig=(src=10.1.0.2,...)\n\n"

    def broken(args: list[str]) -> str:
        raise OSError("no control socket")

    assert conntrack_count(userspace) == 1234
    assert conntrack_count(kernel) == 2
    assert conntrack_count(broken) is None
