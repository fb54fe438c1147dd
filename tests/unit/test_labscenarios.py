"""The pure parts of the real-switch scenario runner: addressing, TCP sequence numbers, reading
the switch back, and comparing a real observation with the simulator and the table."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ovsmgr.compiler import compile_policy
from ovsmgr.lab.compare import (
    Arrival,
    Observation,
    Picked,
    StepReport,
    TableReport,
    compare_step,
    format_table,
)
from ovsmgr.lab.scenarios import (
    LabAddressing,
    TcpBook,
    _conntrack_entry,
    _quote,
    lab_ports,
)
from ovsmgr.policy import load_policy
from ovsmgr.sim.packet import parse_packet, reply_of
from ovsmgr.sim.scenarios import ScenarioTable, load_table, run_scenario
from ovsmgr.sim.session import SimulatedSwitch
from ovsmgr.sim.wire import WireExtras, decode, encode

ROOT = Path(__file__).resolve().parents[2]


@cache
def _table(name: str) -> ScenarioTable:
    return load_table(ROOT / "tests" / "scenarios" / f"{name}.yaml")


@cache
def _gateway() -> tuple[LabAddressing, SimulatedSwitch]:
    table = _table("gateway")
    compiled = compile_policy(load_policy(list(table.policy_files)))
    return LabAddressing.of(compiled.policy, table.hosts), SimulatedSwitch.from_policy(
        compiled.policy, table.hosts, compiled)


def test_lab_ports_follow_the_policy_and_the_tables_first_addresses() -> None:
    table = _table("gateway")
    ports = lab_ports(table, load_policy(list(table.policy_files)))
    assert [(p.name, p.ofport, p.address) for p in ports] == [
        ("lan0", 1, "10.0.0.5/24"), ("dmz0", 2, "10.0.1.10/24"), ("wan0", 3, "198.51.100.9/24")]


def test_hosts_address_frames_to_the_owner_or_to_the_nat_mac() -> None:
    addressing, switch = _gateway()
    to_wan = addressing.address(switch.packet("lan0", "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.66,tp_dst=80"), "lan0")
    assert (to_wan.dl_src, to_wan.dl_dst) == (0x020000000001, 0x020000000003)
    to_nat = addressing.address(switch.packet("wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_dst=8080"),
                                "wan0")
    assert to_nat.dl_dst == addressing.nat_mac == 0x0A0F1575AB17
    arp = addressing.address(switch.packet("wan0", "arp,arp_spa=198.51.100.9,arp_tpa=200.200.200.200"), "wan0")
    assert (arp.dl_dst, arp.arp_sha) == (0xFFFFFFFFFFFF, 0x020000000003)
    assert addressing.accepts("lan0", 0x020000000001) and addressing.accepts("lan0", 0xFFFFFFFFFFFF)
    assert not addressing.accepts("lan0", addressing.nat_mac)
    assert addressing.picked == (Picked("src", ((0xC8C8C8C8, 0xC8C8C8C8, 1024, 65535),)),)


def test_tcp_endpoints_ack_what_they_received() -> None:
    book = TcpBook()
    syn = parse_packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443")
    seq, ack = book.sending("inside", syn)
    assert ack == 0 and book.sending("inside", syn) == (seq, 0)  # a retransmitted SYN: same ISN
    book.received("outside", decode(encode(syn, WireExtras(seq=seq))))
    synack = reply_of(syn)
    their_seq, their_ack = book.sending("outside", synack)
    assert their_ack == seq + 1 and their_seq != seq
    book.received("inside", decode(encode(synack, WireExtras(seq=their_seq, ack=their_ack))))
    assert book.sending("inside", reply_of(synack)) == (seq + 1, their_seq + 1)


def test_conntrack_entries_are_read_back() -> None:
    entry = _conntrack_entry("tcp,orig=(src=10.0.0.5,dst=198.51.100.9,sport=40000,dport=443),reply=(src=198.51.100.9,"
                             "dst=200.200.200.200,sport=443,dport=40000),zone=1,mark=2906270157,"
                             "protoinfo=(state=SYN_SENT)")
    assert entry == ((6, 0x0A000005, 0xC6336409, 40000, 443), (6, 0xC6336409, 0xC8C8C8C8, 443, 40000), 0xAD3A29CD)
    icmp = _conntrack_entry("icmp,orig=(src=10.0.0.5,dst=198.51.100.9,id=3930,type=8,code=0),"
                            "reply=(src=198.51.100.9,dst=10.0.0.5,id=3930,type=0,code=0),zone=9")
    assert icmp is not None and icmp[0] == (1, 0x0A000005, 0xC6336409, 3930, None) and icmp[2] == 0


def test_an_icmp_error_quotes_the_ip_header_and_eight_bytes() -> None:
    l3 = decode(encode(parse_packet("udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=53"),
                       WireExtras(payload=b"0123456789"))).l3
    assert _quote(l3) == l3[:28]


def _first_step_report(name: str, arrivals: tuple[Arrival, ...], rule: str | None) -> StepReport:
    addressing, switch = _gateway()
    scenario = next(s for s in _table("gateway").scenarios if s.name.startswith(name))
    outcome = run_scenario(switch, scenario)[0]
    sent = outcome.trace.packet_in
    return compare_step(scenario, 1, outcome, Observation(sent, "wan0", arrivals, rule), addressing)


def _arrival(port: str, text: str, dl_dst: int) -> Arrival:
    packet = parse_packet(text).replace(dl_dst=dl_dst)
    return Arrival(port, decode(encode(packet)))


def test_a_reject_the_real_switch_did_not_deliver_agrees() -> None:
    report = _first_step_report("ssh from the wan is rejected", (), "no-ssh-from-wan")
    assert report.ok and any("no controller" in note for note in report.notes)


def test_a_port_picked_from_the_snat_range_is_a_note_not_a_disagreement() -> None:
    delivered = _arrival("wan0", "tcp,nw_src=200.200.200.200,nw_dst=198.51.100.9,tp_src=28445,tp_dst=443",
                         0x020000000003)
    report = _first_step_report("lan web out", (delivered,), "lan-out")
    assert report.ok, report
    assert any("picked by NAT from a range" in note for note in report.notes)


def test_a_frame_at_another_port_or_with_a_foreign_mac_is_reported() -> None:
    wrong = _arrival("dmz0", "tcp,nw_src=200.200.200.200,nw_dst=198.51.100.9,tp_src=1024,tp_dst=443", 0x0A0F1575AB17)
    report = _first_step_report("lan web out", (wrong,), "lan-out")
    assert "output: simulator ['wan0'], real ['dmz0']" in report.disagreements
    assert any("which the host there ignores" in p for p in report.real_problems)
    text = "\n".join(format_table(TableReport(_table("gateway"), (report,))))
    assert "[FAIL] step 1" in text and "simulator vs real: output" in text
    assert text.endswith("simulator and real switch agree on 0; 1 step(s) fail")
