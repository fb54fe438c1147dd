"""Scenario tables against a real switch: the lab runner of `tests/scenarios/README.md`.

For a table, `ScenarioLab` takes a lab whose hosts are the table's (`lab_spec_for`,
`prepare_lab` apply the policy and give hosts all their addresses), mutes the
hosts' kernels and taps their eth0 (`ovsmgr.lab.taps`), and runs every scenario
twice: in the simulator (`run_scenario`) and for real. For real, each scenario
starts with an empty conntrack (`dpctl/flush-conntrack`) and every host
announcing its addresses (a gratuitous ARP, the frame `arping -U` sends; an
unsolicited neighbour advertisement); then each step's packet goes out of the in-port host's eth0 as a frame,
and the runner records which hosts received it and how it looked (`Observation`).

What a real host would do is modelled only as far as the switch can tell:

- MACs: the sender's own; the destination MAC is that of the host owning the
  destination address, or the switch's NAT MAC for a NAT-owned address (what
  ARP would have given the host); broadcast for ARP requests (`LabAddressing`).
- `reply`/`error` steps are built from the frame that actually arrived (real
  NAT addresses and ports), by the receiving host.
- TCP sequence numbers follow each endpoint (`TcpBook`), since OVS conntrack
  checks them; ICMP echo replies keep the request's id.
- Frames of a step carry its number in the IPv4 identification (IPv6 flow
  label), which NAT keeps, so frames are told apart from earlier ones; a frame
  of an earlier step that shows up late is reported.
- Hosts announce their IPv4 addresses with a gratuitous ARP and their IPv6
  addresses with an unsolicited neighbour advertisement, so NORMAL and the
  switch's MAC bindings know them.

Verdict: `allow` when the frame arrived at some host, else `drop`. A `reject`
needs the controller to answer, and none runs here, so it looks like a drop.
The deciding rule is read from the switch: the FILTER flow whose packet count
went up, shadow rules' flows left out (datapath flows are deleted before each step so the packet is a miss
upcall, which credits flow statistics at once), else the rule whose fingerprint
is the ct_mark of the connection the delivered packet belongs to.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.compiler.pipeline import CT_MARK_RULE_MASK, CookieKind, Table, cookie_parts
from ovsmgr.lab.compare import Arrival, Observation, StepReport, TableReport, compare_step
from ovsmgr.lab.hosts import LabAddressing, TcpBook
from ovsmgr.lab.ovs import Datapath, Lab, LabPort, LabSpec, vlan_iface
from ovsmgr.lab.taps import HostTaps, Received, guarded_hosts
from ovsmgr.policy import ResolvedPolicy, load_policy
from ovsmgr.sim.fields import DL_TYPE_ARP, ND_ADVERT, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP
from ovsmgr.sim.packet import Packet, PacketSpecError, announcement, icmp_error_for, reply_of
from ovsmgr.sim.scenarios import Scenario, ScenarioStep, ScenarioTable, load_table, run_scenario
from ovsmgr.sim.session import ICMP_ERROR, REPLY, SimulatedSwitch
from ovsmgr.sim.wire import WireExtras, decode, encode
from ovsmgr.southbound.openflow import SwitchConnection, SwitchFlowTable
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.apply import apply_policy

FIRST_IDENT = 0x1000


@dataclass(frozen=True)
class Timing:
    drop_wait: float = 0.4
    """Seconds without any arrival after which a packet counts as not delivered."""
    grace: float = 0.05
    """After the first arrival, how long to wait for copies on other ports."""
    announce_wait: float = 1.0


# --- the lab a table needs ---------------------------------------------------------------------
def lab_ports(table: ScenarioTable, policy: ResolvedPolicy) -> list[LabPort]:
    """One lab port per policy port, its host on the table's first untagged address for it and, for
    each VLAN its addresses are in (`ResolvedPolicy.host_vlan`), on the first address of that VLAN."""
    ports = []
    for name, port in policy.ports.items():
        untagged, tagged = _host_addresses(table, policy, name)
        vlans = tuple((vid, addresses[0]) for vid, addresses in sorted(tagged.items()))
        ports.append(LabPort(name, port.ofport, untagged[0] if untagged else None, vlans))
    return ports


def _host_addresses(table: ScenarioTable, policy: ResolvedPolicy, port: str) -> tuple[list[str], dict[int, list[str]]]:
    """The table's addresses of the host on `port`: untagged ones, and those of each VLAN."""
    untagged: list[str] = []
    tagged: dict[int, list[str]] = {}
    for address in table.hosts.get(port, ()):
        vid = policy.host_vlan(port, ipaddress.ip_interface(address).ip)
        (untagged if vid is None else tagged.setdefault(vid, [])).append(address)
    return untagged, tagged


def lab_spec_for(table: ScenarioTable, policy: ResolvedPolicy, name: str, datapath: Datapath = "netdev") -> LabSpec:
    return LabSpec(policy.bridge, datapath, lab_ports(table, policy), name)


def add_host_addresses(lab: Lab, table: ScenarioTable, policy: ResolvedPolicy) -> None:
    """Give each host the table's further addresses (the lab gives it the first, and the first of
    each VLAN), each on the interface of its VLAN."""
    for port in table.hosts:
        untagged, tagged = _host_addresses(table, policy, port)
        further = [("eth0", a) for a in untagged[1:]]
        further += [(vlan_iface(vid), a) for vid, addresses in tagged.items() for a in addresses[1:]]
        for iface, address in further:
            family = "-6" if ipaddress.ip_interface(address).version == 6 else "-4"
            lab.exec(port, ["ip", family, "addr", "add", address, "dev", iface], check=True,
                     capture_output=True, timeout=30)


def prepare_lab(lab: Lab, table: ScenarioTable, compiled: CompiledPolicy) -> None:
    """Give hosts all their addresses and apply the table's policy."""
    add_host_addresses(lab, table, compiled.policy)
    apply_policy(compiled, SwitchTarget(lab.db_endpoint, lab.dir, lab.dir, lab=lab.name))


def datapath_ports(lab: Lab) -> dict[int, str]:
    """Datapath port number -> port name (`ovs-appctl dpif/show`), the bridge's own port left out."""
    ports = {}
    for line in lab.appctl(["dpif/show"]).splitlines():
        found = re.match(r"^\s+(?P<name>\S+) (?P<ofport>\d+)/(?P<dp>\d+):", line)
        if found and found["ofport"] != "65534":
            ports[int(found["dp"])] = found["name"]
    return ports


# --- the run -----------------------------------------------------------------------------------
@dataclass
class _Outgoing:
    port: str
    packet: Packet
    extras: WireExtras


@dataclass
class _ScenarioState:
    tcp: TcpBook = field(default_factory=TcpBook)
    last: Observation | None = None


class ScenarioLab:
    """A lab with a table's policy applied (`prepare_lab`), its hosts muted and tapped while
    `run` goes through the table's scenarios."""

    def __init__(self, lab: Lab, table: ScenarioTable, compiled: CompiledPolicy, timing: Timing | None = None):
        self.lab, self.table, self.compiled = lab, table, compiled
        self.timing = timing or Timing()
        self.switch = SimulatedSwitch.from_policy(compiled.policy, table.hosts, compiled)
        self.addressing = LabAddressing.of(compiled.policy, table.hosts)
        self.ident = FIRST_IDENT
        self.sent: dict[int, str] = {}
        """ident -> which step sent it, to name frames that arrive late."""
        self._taps: HostTaps | None = None
        self._counts: dict[tuple[int, int, bytes], int] = {}
        self._late_frames: list[str] = []

    @contextmanager
    def running(self) -> Iterator[ScenarioLab]:
        with guarded_hosts(self.lab), HostTaps.of_lab(self.lab) as taps:
            self._taps = taps
            try:
                yield self
            finally:
                self._taps = None

    def run(self, names: Sequence[str] | None = None) -> TableReport:
        reports: list[StepReport] = []
        with self.running():
            for scenario in self.table.scenarios:
                if names is None or scenario.name in names:
                    reports += self.run_scenario(scenario)
        return TableReport(self.table, tuple(reports))

    def run_scenario(self, scenario: Scenario) -> list[StepReport]:
        simulated = run_scenario(self.switch, scenario)
        self.reset()
        state = _ScenarioState()
        reports = []
        for number, (step, outcome) in enumerate(zip(scenario.steps, simulated, strict=True), 1):
            observed = self.real_step(step, state, f"{scenario.name!r} step {number}")
            state.last = observed
            reports.append(compare_step(scenario, number, outcome, observed, self.addressing))
        return reports

    # --- per scenario ------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty conntrack, then every host announces its addresses: a gratuitous ARP (as `arping -U`
        sends it) or an unsolicited neighbour advertisement."""
        self.lab.appctl(["dpctl/flush-conntrack"])
        taps = self._require_taps()
        announced = set()
        for port, addresses in sorted(self.table.hosts.items()):
            for text in addresses:
                ip = ipaddress.ip_interface(text).ip
                vlan = self.compiled.policy.host_vlan(port, ip)
                frame = encode(announcement(int(ip), ip.version, self.addressing.port_macs[port])
                               .replace(vlan_vid=None if vlan is None else 0x1000 | vlan))
                taps.send(port, frame[:42 + (4 if vlan else 0)] if ip.version == 4 else frame)  # as arping: unpadded
                announced.add(int(ip))
        heard: set[int] = set()

        def all_heard(got: list[Received]) -> bool:
            for r in got:
                packet = decode(r.data).packet
                if packet.dl_type == DL_TYPE_ARP and packet.arp_spa == packet.arp_tpa:
                    heard.add(packet.arp_spa or 0)
                elif packet.icmp_type == ND_ADVERT and packet.nd_target == packet.ipv6_src:
                    heard.add(packet.nd_target or 0)
            return heard >= announced

        self._late_frames = self._late(taps.wait_for(self.timing.announce_wait, all_heard))
        self._counts = self._filter_counts()

    def _require_taps(self) -> HostTaps:
        if self._taps is None:
            raise RuntimeError("use ScenarioLab.running() (or run()) first")
        return self._taps

    # --- per step ----------------------------------------------------------------------------
    def real_step(self, step: ScenarioStep, state: _ScenarioState, label: str) -> Observation:
        """Send one step's frame and watch every host for it (see the module docstring)."""
        try:
            out = self._outgoing(step, state)
        except PacketSpecError as exc:
            return Observation(None, step.in_port, error=str(exc))
        taps = self._require_taps()
        late = self._late_frames + self._late(taps.drain())
        self._late_frames = []
        self.lab.appctl(["dpctl/del-flows"])
        ident = out.extras.ident
        self.sent[ident] = label
        taps.send(out.port, encode(out.packet, out.extras))
        got = taps.collect(self.timing.drop_wait, self.timing.grace, lambda r: self._is_ours(r, out))
        arrivals = []
        for received in got:
            if self._is_ours(received, out):
                frame = decode(received.data, 0)
                if frame.packet.nw_proto == PROTO_TCP:
                    state.tcp.received(received.port, frame)
                arrivals.append(Arrival(received.port, frame))
        late += self._late([r for r in got if not self._is_ours(r, out)])
        rule = self._real_rule(out, arrivals)
        return Observation(out.packet, out.port, tuple(arrivals), rule, late=tuple(late))

    def _outgoing(self, step: ScenarioStep, state: _ScenarioState) -> _Outgoing:
        self.ident = FIRST_IDENT if self.ident >= 0xFFFF else self.ident + 1
        extras = WireExtras(ident=self.ident, icmp_seq=self.ident)
        if step.send in (REPLY, ICMP_ERROR):
            last = state.last
            ports = sorted({a.port for a in last.arrivals}) if last is not None else []
            if last is None or (len(ports) != 1 and step.in_port is None):
                where = ", ".join(ports) or "nowhere"
                raise PacketSpecError(f"{step.send}: the last packet arrived {where}, so no one host answers")
            arrival = next(a for a in last.arrivals if a.port == (step.in_port or ports[0]))
            port = step.in_port or arrival.port
            if step.send == REPLY:
                packet = reply_of(arrival.frame.packet)
                extras = WireExtras(ident=self.ident, icmp_id=arrival.frame.extras.icmp_id,
                                    icmp_seq=arrival.frame.extras.icmp_seq)
            else:
                packet = icmp_error_for(arrival.frame.packet)
                extras = WireExtras(ident=self.ident, quote=_quote(arrival.frame.l3))
            packet = self.addressing.address(packet, port)
        else:
            port = step.in_port or ""
            packet = self.addressing.address(self.switch.packet(port, step.send), port, step.send)
        if packet.nw_proto == PROTO_TCP:
            seq, ack = state.tcp.sending(port, packet)
            extras = WireExtras(ident=extras.ident, seq=seq, ack=ack)
        return _Outgoing(port, packet.replace(in_port=self.switch.port_numbers[port]), extras)

    def _is_ours(self, received: Received, out: _Outgoing) -> bool:
        frame = decode(received.data)
        if out.packet.dl_type == DL_TYPE_ARP:
            sent = {out.packet.arp_spa, out.packet.arp_tpa}
            return frame.packet.dl_type == DL_TYPE_ARP and {frame.packet.arp_spa, frame.packet.arp_tpa} == sent
        return frame.packet.version is not None and frame.extras.ident == out.extras.ident

    def _late(self, frames: list[Received]) -> list[str]:
        late = []
        for received in frames:
            frame = decode(received.data)
            if frame.packet.version is not None and frame.extras.ident in self.sent:
                late.append(f"a frame of {self.sent[frame.extras.ident]} arrived at {received.port} after "
                            f"the {self.timing.drop_wait} s wait")
        return late

    # --- the deciding rule, read from the switch ------------------------------------------------
    def _real_rule(self, out: _Outgoing, arrivals: list[Arrival]) -> str | None:
        counts = self._filter_counts()
        hits = [key for key, n in counts.items() if n > self._counts.get(key, 0)
                and cookie_parts(key[0])[1] != CookieKind.SHADOW]  # a shadow rule counts, never decides
        self._counts = counts
        if hits:
            return self._rule_of_cookie(max(hits, key=lambda k: k[1])[0])
        if not arrivals or out.packet.version is None:
            return None
        mark = self._connection_mark(out)
        return None if mark is None else self.compiled.fingerprints.get(mark & CT_MARK_RULE_MASK)

    def _filter_counts(self) -> dict[tuple[int, int, bytes], int]:
        """Packets counted by each of ovsmgr's FILTER flows: (cookie, priority, flow key) -> count,
        from the switch's flow statistics."""
        target = SwitchTarget(self.lab.db_endpoint, self.lab.dir, self.lab.dir, lab=self.lab.name)
        with SwitchConnection(target.openflow(self.compiled.policy.bridge)) as connection:
            flows = SwitchFlowTable(connection).read()
        return {(s.mod.cookie, s.mod.priority, s.mod.key): s.packets for s in flows
                if s.mod.table == Table.FILTER}

    def _rule_of_cookie(self, cookie: int) -> str | None:
        ours, kind, rule_id = cookie_parts(cookie)
        if ours and kind in (CookieKind.FIREWALL, CookieKind.NAT):
            return self.compiled.rule_ids.get(rule_id)
        return None

    def _connection_mark(self, out: _Outgoing) -> int | None:
        wanted = [_tuple(out.packet, out.extras)]
        if out.packet.inner is not None:  # an ICMP error quotes a packet going the other way
            proto, src, dst, sport, dport = wanted[0]
            wanted.append((proto, dst, src, dport, sport))
        policy = self.compiled.policy
        for zone in (policy.ct_zone, policy.second_zone):  # a reply of a connection translated twice is
            text = self.lab.appctl(["dpctl/dump-conntrack", f"zone={zone}"])  # as sent in the second
            for line in text.splitlines():
                entry = _conntrack_entry(line)
                if entry is not None and any(_same(w, t) for w in wanted for t in entry[:2]):
                    return entry[2]
        return None


_CT_TUPLE = re.compile(r"(?P<dir>orig|reply)=\((?P<fields>[^)]*)\)")
ConnTuple = tuple[int, int, int, int | None, int | None]
"""(proto, src, dst, sport or ICMP id, dport); None matches anything."""
_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}


def _quote(l3: bytes) -> bytes:
    """What an ICMP error quotes of a packet: its IP header and the first 8 bytes after it."""
    header = (l3[0] & 0x0F) * 4 if l3 and l3[0] >> 4 == 4 else 40
    return l3[:header + 8]


def _tuple(packet: Packet, extras: WireExtras) -> ConnTuple:
    """The connection tuple of a sent packet (of the quoted packet, for an ICMP error)."""
    if packet.inner is not None:
        inner = packet.inner
        ports = (None, None) if inner.nw_proto in (PROTO_ICMP, PROTO_ICMPV6) else (inner.tp_src, inner.tp_dst)
        return (inner.nw_proto, inner.src, inner.dst, *ports)
    if packet.nw_proto in (PROTO_ICMP, PROTO_ICMPV6):
        return (packet.nw_proto, packet.src or 0, packet.dst or 0, extras.icmp_id, None)
    return (packet.nw_proto or 0, packet.src or 0, packet.dst or 0, packet.tp_src, packet.tp_dst)


def _conntrack_entry(line: str) -> tuple[ConnTuple, ConnTuple, int] | None:
    """(orig, reply, mark) of a `dpctl/dump-conntrack` line."""
    proto = _PROTO_NUMBERS.get(line.split(",", 1)[0])
    found = {m["dir"]: dict(f.split("=", 1) for f in m["fields"].split(",") if "=" in f)
             for m in _CT_TUPLE.finditer(line)}
    mark = re.search(r"\bmark=(\d+)", line)
    if proto is None or set(found) != {"orig", "reply"}:
        return None

    def conn_tuple(f: dict[str, str]) -> ConnTuple:
        first = f.get("sport", f.get("id"))
        return (proto, int(ipaddress.ip_address(f["src"])), int(ipaddress.ip_address(f["dst"])),
                None if first is None else int(first), None if "dport" not in f else int(f["dport"]))

    return conn_tuple(found["orig"]), conn_tuple(found["reply"]), int(mark[1]) if mark else 0


def _same(wanted: ConnTuple, entry: ConnTuple) -> bool:
    return all(a is None or b is None or a == b for a, b in zip(wanted, entry, strict=True))


# --- one call: a table on a lab of its own ------------------------------------------------------
def run_table(path: str | Path, datapath: Datapath = "netdev", timing: Timing | None = None,
              names: Sequence[str] | None = None) -> TableReport:
    """Bring up a lab for the table, run it, take the lab down (the CLI's `lab scenarios`)."""
    table = load_table(path)
    compiled = compile_policy(load_policy(list(table.policy_files)))
    name = f"sc{secrets.token_hex(3)}"
    lab = Lab(name, tempfile.mkdtemp(prefix=f"ovsmgr-{name}-", dir="/tmp"))
    try:
        lab.up(lab_spec_for(table, compiled.policy, name, datapath))
        prepare_lab(lab, table, compiled)
        return ScenarioLab(lab, table, compiled, timing).run(names)
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


__all__ = ["LabAddressing", "ScenarioLab", "TcpBook", "Timing", "add_host_addresses", "datapath_ports",
           "lab_ports", "lab_spec_for", "prepare_lab", "run_table"]
