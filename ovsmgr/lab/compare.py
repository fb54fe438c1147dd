"""What the real switch did with a scenario step, next to the simulator and the table.

`Observation` is the real side of one step (which hosts received the frame, as
what, the rule read back from the switch); `compare_step` sets it against the
simulator's `Trace` and the table's `Expectation`; `format_table` prints the
result, one block per step: sent, expected, simulator, real, and every
difference. Pure: the lab runner (`ovsmgr.lab.scenarios`) does the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ovsmgr.sim.fields import format_value, parse_value
from ovsmgr.sim.packet import Inner, Packet, format_packet
from ovsmgr.sim.scenarios import (
    Expectation,
    Scenario,
    ScenarioStep,
    ScenarioTable,
    StepOutcome,
    field_of,
)
from ovsmgr.sim.trace import Trace, Verdict
from ovsmgr.sim.wire import Frame

COMPARED_FIELDS = ("vlan_vid", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "tp_src", "tp_dst", "icmp_type", "icmp_code",
                   "tcp_flags", "arp_op", "arp_spa", "arp_tpa", "nd_target", "nd_tll")
"""Fields of a delivered packet the simulator and the real switch must agree on (MACs are named
differently by the two: the simulator derives them from addresses, the lab from ofports)."""
REJECT_NOTE = ("reject: no controller runs in the lab, so nobody answers the sender and the real "
               "switch shows a reject as not delivered")


@dataclass(frozen=True)
class Picked:
    """Translations NAT picks among for a connection, which OVS picks by a hash and the simulator
    takes the first free one of: an SNAT rule's address or port range (`side` "src"), the backends
    of a load-balanced DNAT rule ("dst"). Each of `ranges` is (first address, last address, first
    port, last port)."""

    side: str
    ranges: tuple[tuple[int, int, int, int], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return ("nw_src", "ipv6_src", "tp_src") if self.side == "src" else ("nw_dst", "ipv6_dst", "tp_dst")

    def holds(self, packet: Packet) -> bool:
        address, port = (packet.src, packet.tp_src) if self.side == "src" else (packet.dst, packet.tp_dst)
        return address is not None and any(
            lo <= address <= hi and (port is None or p_lo <= port <= p_hi) for lo, hi, p_lo, p_hi in self.ranges)


class Addressing(Protocol):
    @property
    def picked(self) -> tuple[Picked, ...]: ...

    def accepts(self, port: str, mac: int) -> bool: ...


@dataclass(frozen=True)
class Arrival:
    """A step's frame as one host received it."""

    port: str
    frame: Frame

    @property
    def packet(self) -> Packet:
        return self.frame.packet


@dataclass(frozen=True)
class Observation:
    """What the real switch did with one step's packet."""

    sent: Packet | None
    """None: the step could not be sent (`error` says why)."""
    in_port: str | None
    arrivals: tuple[Arrival, ...] = ()
    rule: str | None = None
    error: str | None = None
    late: tuple[str, ...] = ()
    """Frames of earlier steps that arrived during this one (the wait was too short)."""

    @property
    def verdict(self) -> Verdict:
        return "allow" if self.arrivals else "drop"

    @property
    def output(self) -> tuple[str, ...]:
        return tuple(sorted({a.port for a in self.arrivals}))

    def packet_at(self, port: str) -> Packet | None:
        return next((a.packet for a in self.arrivals if a.port == port), None)

    def packet_for(self, ports: Sequence[str]) -> Packet | None:
        """The packet as it arrived at the first of `ports` it reached, else at any port."""
        for port in ports:
            if (packet := self.packet_at(port)) is not None:
                return packet
        return self.arrivals[0].packet if self.arrivals else None


@dataclass(frozen=True)
class StepReport:
    scenario: Scenario
    number: int
    step: ScenarioStep
    sim: Trace
    real: Observation
    sim_problems: tuple[str, ...]
    """The simulator against the table."""
    real_problems: tuple[str, ...]
    """The real switch against the table."""
    disagreements: tuple[str, ...]
    """The simulator against the real switch."""
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.sim_problems or self.real_problems or self.disagreements)


@dataclass(frozen=True)
class TableReport:
    table: ScenarioTable
    steps: tuple[StepReport, ...]

    @property
    def failures(self) -> list[StepReport]:
        """Failed steps, except in scenarios with a `known_issue`."""
        return [s for s in self.steps if not s.ok and not s.scenario.known_issue]

    @property
    def agreeing(self) -> int:
        """Steps where the simulator and the real switch agree."""
        return sum(1 for s in self.steps if not s.disagreements)


# --- comparing ---------------------------------------------------------------------------------
def compare_step(scenario: Scenario, number: int, outcome: StepOutcome, real: Observation,
                 addressing: Addressing) -> StepReport:
    step, sim = outcome.step, outcome.trace
    notes = [REJECT_NOTE] if "reject" in (sim.verdict, step.expect.verdict) else []
    differences = disagreements(sim, real, addressing.picked)
    notes += [d for d in differences if PICKED in d]
    return StepReport(scenario, number, step, sim, real, outcome.problems,
                      tuple(check_real(step.expect, real, addressing)),
                      tuple(d for d in differences if PICKED not in d), tuple(notes))


def check_real(expect: Expectation, real: Observation, addressing: Addressing) -> list[str]:
    """Where the real switch differs from the table (a reject passes as not delivered)."""
    if real.error is not None:
        return [f"not sent: {real.error}"]
    problems = []
    wanted = "drop" if expect.verdict == "reject" else expect.verdict
    if real.verdict != wanted:
        problems.append(f"verdict {real.verdict}, expected {expect.verdict}")
    if expect.check_rule and real.rule != expect.rule:
        problems.append(f"rule {real.rule}, expected {expect.rule}")
    if expect.output is not None and list(real.output) != sorted(expect.output):
        problems.append(f"output {list(real.output)}, expected {sorted(expect.output)}")
    packet = real.packet_for(expect.output or ())
    for name, text in expect.packet if packet is not None else ():
        want, got = parse_value(name, text), field_of(packet, name) if packet is not None else None
        if got != want:
            shown = "absent" if got is None else format_value(name, got)
            problems.append(f"packet {name}={shown}, expected {format_value(name, want)}")
    for arrival in real.arrivals:
        if not addressing.accepts(arrival.port, arrival.packet.dl_dst):
            problems.append(f"arrived at {arrival.port} addressed to "
                            f"{format_value('dl_dst', arrival.packet.dl_dst)}, which the host there ignores")
    return problems + list(real.late)


def disagreements(sim: Trace, real: Observation, picked: Sequence[Picked] = ()) -> list[str]:
    """Where the simulator and the real switch differ (a simulated reject equals a real drop).

    An address or port NAT picked from a range or among backends differs by nature (OVS
    picks by a hash, the simulator the first free one): that difference says `PICKED`.
    """
    if real.error is not None:
        return [f"the real step was not sent ({real.error})"]
    out = []
    verdict = "drop" if sim.verdict == "reject" else sim.verdict
    if verdict != real.verdict:
        out.append(f"verdict: simulator {sim.verdict}, real {real.verdict}")
    if sorted(set(sim.output)) != list(real.output):
        out.append(f"output: simulator {sorted(set(sim.output))}, real {list(real.output)}")
    if sim.rule != real.rule:
        out.append(f"rule: simulator {sim.rule}, real {real.rule}")
    for delivery in sim.deliveries:
        got = real.packet_at(delivery.port)
        if got is not None:
            out += [f"at {delivery.port}: {d}" for d in field_differences(delivery.packet, got, picked)]
    return out


PICKED = "picked by NAT from a range or among backends"


def field_differences(simulated: Packet, real: Packet, picked: Sequence[Picked] = ()) -> list[str]:
    out = []
    for name in COMPARED_FIELDS:
        a, b = field_of(simulated, name), field_of(real, name)
        if a != b:
            chosen = any(name in p.fields and p.holds(simulated) and p.holds(real) for p in picked)
            why = f" ({PICKED}: tables do not check it)" if chosen else ""
            out.append(f"{name}: simulator {_show(name, a)}, real {_show(name, b)}{why}")
    if simulated.inner != real.inner:
        out.append(f"quoted packet: simulator {_inner(simulated.inner)}, real {_inner(real.inner)}")
    return out


def _show(name: str, value: int | None) -> str:
    return "absent" if value is None else format_value(name, value)


def _inner(inner: Inner | None) -> str:
    return "none" if inner is None else inner.describe()


# --- printing ----------------------------------------------------------------------------------
def format_table(report: TableReport, everything: bool = True) -> list[str]:
    """The report as text: every step (or only the failed ones), then a summary line."""
    lines = [f"{report.table.path.name}: {report.table.description}".rstrip(": ")]
    scenario = None
    for step in report.steps:
        if not everything and step.ok:
            continue
        if step.scenario is not scenario:
            scenario = step.scenario
            issue = f"  (known issue: {scenario.known_issue})" if scenario.known_issue else ""
            lines.append(f"- {scenario.name}{issue}")
        lines += ["  " + line for line in format_step(step)]
    lines.append(summary(report))
    return lines


def summary(report: TableReport) -> str:
    total = len(report.steps)
    return (f"{report.table.path.name}: {total} steps; simulator and real switch agree on "
            f"{report.agreeing}; {len(report.failures)} step(s) fail")


def format_step(report: StepReport) -> list[str]:
    step, sim, real = report.step, report.sim, report.real
    mark = "ok" if report.ok else "FAIL"
    entry = f" by {step.in_port}" if step.in_port else ""
    sent = format_packet(real.sent, in_port=False) if real.sent is not None else "(not sent)"
    lines = [f"[{mark}] step {report.number}: {step.send}{entry}",
             f"    sent      {real.in_port}: {sent}" if real.sent is not None else "    sent      (not sent)",
             f"    expected  {_expected(step.expect)}",
             f"    simulator {_outcome(sim.verdict, sim.rule, sim.output, sim.packet if sim.deliveries else None)}",
             f"    real      {_real(real)}"]
    lines += [f"    ! simulator vs table: {p}" for p in report.sim_problems]
    lines += [f"    ! real vs table: {p}" for p in report.real_problems]
    lines += [f"    ! simulator vs real: {p}" for p in report.disagreements]
    lines += [f"    note: {n}" for n in report.notes]
    return lines


def _expected(expect: Expectation) -> str:
    words: list[str] = [expect.verdict]
    if expect.check_rule:
        words.append(f"rule={expect.rule}")
    if expect.output is not None:
        words.append(f"output={list(expect.output)}")
    if expect.packet:
        words.append(",".join(f"{k}={v}" for k, v in expect.packet))
    return " ".join(words)


def _outcome(verdict: str, rule: str | None, output: Sequence[str], packet: Packet | None) -> str:
    words = [verdict, f"rule={rule}", f"output={sorted(set(output))}"]
    if packet is not None:
        words.append(format_packet(packet, in_port=False))
    return " ".join(words)


def _real(real: Observation) -> str:
    if real.error is not None:
        return f"not sent: {real.error}"
    return _outcome(real.verdict, real.rule, real.output, real.packet_for(()))
