"""Scenario tables: packets in, what must come out. One table per example policy.

The same table runs against the simulator (every test run) and against a real OVS
with real hosts (the lab runner): packets use the addresses the table's `hosts`
have, and expectations speak of what a host can see (verdict, the port a packet
leaves by, its fields after translation). The format is documented in
`tests/scenarios/README.md`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from ovsmgr.compiler.pipeline import CT_STATE_BITS
from ovsmgr.sim.conntrack import format_ct_state
from ovsmgr.sim.fields import PACKET_FIELDS, FieldError, format_value, parse_value
from ovsmgr.sim.forwarding import UNRESOLVED
from ovsmgr.sim.packet import Packet
from ovsmgr.sim.session import ICMP_ERROR, REPLY, Conversation, SimulatedSwitch
from ovsmgr.sim.trace import Trace, Verdict

VERDICTS = ("allow", "drop", "reject")
_STEP_KEYS = {"in", "send", "expect", "note"}
_EXPECT_KEYS = {"verdict", "rule", "output", "packet", "ct_state"}


class ScenarioError(ValueError):
    """A scenario table that does not follow the format."""


@dataclass(frozen=True)
class Expectation:
    verdict: Verdict
    rule: str | None = None
    check_rule: bool = False
    """`rule:` was written (null means: no rule decided, a default or the pipeline did)."""
    output: tuple[str, ...] | None = None
    packet: tuple[tuple[str, str], ...] = ()
    """Fields of the packet as it leaves (after translation), as written in the table."""
    ct_state: str | None = None
    """Simulator only: flags like `+trk+inv` that the packet's last ct_state must have."""


@dataclass(frozen=True)
class ScenarioStep:
    send: str
    """A packet spec (ovs-ofctl style), `reply` or `error` (ICMP port unreachable from the far end)."""
    in_port: str | None
    expect: Expectation
    note: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[ScenarioStep, ...]
    known_issue: str | None = None


@dataclass(frozen=True)
class ScenarioTable:
    path: Path
    policy_files: tuple[Path, ...]
    hosts: Mapping[str, tuple[str, ...]]
    scenarios: tuple[Scenario, ...]
    description: str = ""


@dataclass(frozen=True)
class StepOutcome:
    step: ScenarioStep
    trace: Trace
    problems: tuple[str, ...]


# --- loading -----------------------------------------------------------------------------------
def load_table(path: str | Path) -> ScenarioTable:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not {"policy", "hosts", "scenarios"} <= data.keys():
        raise ScenarioError(f"{path}: a scenario table needs policy, hosts and scenarios")
    policies = data["policy"] if isinstance(data["policy"], list) else [data["policy"]]
    hosts = {str(port): tuple(_as_list(addresses)) for port, addresses in data["hosts"].items()}
    for port, addresses in hosts.items():
        for address in addresses:
            try:
                ipaddress.ip_interface(address)
            except ValueError:
                raise ScenarioError(f"{path}: hosts.{port}: {address!r} is not an address/prefix") from None
    scenarios = tuple(_scenario(path, raw) for raw in data["scenarios"])
    return ScenarioTable(path, tuple((path.parent / p).resolve() for p in policies), hosts, scenarios,
                         str(data.get("description", "")))


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _scenario(path: Path, raw: Any) -> Scenario:
    if not isinstance(raw, dict) or "name" not in raw or not raw.get("steps"):
        raise ScenarioError(f"{path}: every scenario needs a name and steps")
    name = str(raw["name"])
    steps = tuple(_step(f"{path}: scenario {name!r} step {i}", s) for i, s in enumerate(raw["steps"], 1))
    return Scenario(name, steps, raw.get("known_issue"))


def _step(where: str, raw: Any) -> ScenarioStep:
    if not isinstance(raw, dict) or "send" not in raw or "expect" not in raw:
        raise ScenarioError(f"{where}: a step needs send and expect")
    if extra := set(raw) - _STEP_KEYS:
        raise ScenarioError(f"{where}: unknown keys {sorted(extra)}")
    send = str(raw["send"])
    if send not in (REPLY, ICMP_ERROR) and "in" not in raw:
        raise ScenarioError(f"{where}: say which port the packet enters by (in: PORT)")
    return ScenarioStep(send, raw.get("in"), _expectation(where, raw["expect"]), str(raw.get("note", "")))


def _expectation(where: str, raw: Any) -> Expectation:
    if isinstance(raw, str):
        raw = {"verdict": raw}
    if not isinstance(raw, dict) or raw.get("verdict") not in VERDICTS:
        raise ScenarioError(f"{where}: expect needs verdict: allow, drop or reject")
    if extra := set(raw) - _EXPECT_KEYS:
        raise ScenarioError(f"{where}: unknown expect keys {sorted(extra)}")
    packet = {k: v for k, v in _vlan_spelled((raw.get("packet") or {}).items())}
    for name, value in packet.items():
        if name not in PACKET_FIELDS:
            raise ScenarioError(f"{where}: expect.packet: unknown field {name!r}")
        try:
            parse_value(name, str(value))
        except FieldError as exc:
            raise ScenarioError(f"{where}: expect.packet: {exc}") from None
    output = raw.get("output", [] if raw["verdict"] != "allow" else None)
    return Expectation(
        verdict=cast(Verdict, raw["verdict"]), rule=raw.get("rule"), check_rule="rule" in raw,
        output=None if output is None else tuple(_as_list(output)),
        packet=tuple((k, str(v)) for k, v in packet.items()), ct_state=raw.get("ct_state"))


def _vlan_spelled(items: Any) -> Any:
    """`dl_vlan: N` in an expectation is `vlan_vid` N tagged, `dl_vlan: 0` a frame without a tag."""
    for name, value in items:
        if name == "dl_vlan":
            yield "vlan_vid", hex(0x1000 | int(value)) if int(value) else "0"
        else:
            yield name, value


def field_of(packet: Packet, name: str) -> int | None:
    """A packet's field as tables compare it: a frame without a tag has vlan_vid 0."""
    value = getattr(packet, name)
    return (value or 0) if name == "vlan_vid" else value


# --- running in the simulator ------------------------------------------------------------------
def run_scenario(switch: SimulatedSwitch, scenario: Scenario) -> list[StepOutcome]:
    """Run a scenario from a fresh switch (after the hosts announce themselves by ARP)."""
    conversation = Conversation(switch)
    conversation.announce_hosts()
    outcomes = []
    for step in scenario.steps:
        trace = conversation.step(step.in_port, step.send)
        problems = check_trace(step.expect, trace) + delivery_problems(switch, trace)
        outcomes.append(StepOutcome(step, trace, tuple(problems)))
    return outcomes


def check_trace(expect: Expectation, trace: Trace) -> list[str]:
    """Where the trace differs from the expectation (empty: it meets it)."""
    problems = []
    if trace.verdict != expect.verdict:
        problems.append(f"verdict {trace.verdict}, expected {expect.verdict}")
    if expect.check_rule and trace.rule != expect.rule:
        problems.append(f"rule {trace.rule}, expected {expect.rule}")
    if expect.output is not None and sorted(trace.output) != sorted(expect.output):
        problems.append(f"output {list(trace.output)}, expected {list(expect.output)}")
    for name, text in expect.packet:
        want = parse_value(name, text)
        got = field_of(trace.packet, name)
        if got != want:
            shown = "absent" if got is None else format_value(name, got)
            problems.append(f"packet {name}={shown}, expected {format_value(name, want)}")
    if expect.ct_state is not None and not _has_flags(trace.ct_state, expect.ct_state):
        problems.append(f"ct_state {format_ct_state(trace.ct_state)}, expected {expect.ct_state}")
    problems.extend(f"warning: {w}" for w in trace.warnings)
    return problems


def _has_flags(state: int, flags: str) -> bool:
    for token in flags.replace("+", " +").replace("-", " -").split():
        bit = CT_STATE_BITS[token[1:]]
        if bool(state & bit) != (token[0] == "+"):
            return False
    return True


def delivery_problems(switch: SimulatedSwitch, trace: Trace) -> list[str]:
    """A unicast IP packet must reach a lab host that has its destination address."""
    problems = []
    for delivery in trace.deliveries:
        if delivery.port == UNRESOLVED or delivery.packet.dst is None or (delivery.packet.dl_dst >> 40) & 1:
            continue
        if not _host_has(switch.hosts.get(delivery.port, ()), delivery.packet.dst, delivery.packet):
            problems.append(f"left by {delivery.port} for {_address(delivery.packet)}, "
                            f"which no host on {delivery.port} has (hosts: {switch.hosts.get(delivery.port)})")
    return problems


def source_problems(table: ScenarioTable, switch: SimulatedSwitch) -> list[str]:
    """Packets a step sends must come from an address the host on their in port has."""
    problems = []
    for scenario in table.scenarios:
        for step in scenario.steps:
            if step.send in (REPLY, ICMP_ERROR) or step.in_port is None:
                continue
            packet = switch.packet(step.in_port, step.send)
            source = packet.src if packet.version else packet.arp_spa
            if source and not _host_has(table.hosts.get(step.in_port, ()), source, packet):  # :: is no address
                problems.append(f"{scenario.name}: {step.send!r} enters by {step.in_port}, "
                                f"whose host does not have its source address")
    return problems


def _host_has(addresses: tuple[str, ...], value: int, packet: Packet) -> bool:
    version = 6 if packet.version == 6 else 4
    return any(ipaddress.ip_interface(a).version == version and int(ipaddress.ip_interface(a).ip) == value
               for a in addresses)


def _address(packet: Packet) -> str:
    return format_value("nw_dst" if packet.version == 4 else "ipv6_dst", packet.dst or 0)
