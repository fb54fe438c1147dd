"""What a bench run measures: the experiments of a spec, their settings and defaults.

A spec is YAML (read by `ovsmgr.bench.specfile` with the policy front end's strict
loader, so a mistake is reported as ``file:line:column``)::

    version: 1
    name: seed004
    datapath: dpdk          # netdev | dpdk: the OVS lab's datapath
    duration: 2             # seconds measured per trial
    warmup: 0.5             # seconds of load before counting starts
    repetitions: 1          # each point (and its baseline) this many times, alternating
    probe_rate: 500         # latency probe packets per second (0: no latency)
    ndr: {loss: 0.001, steps: 6, low: 5kpps, high: 250kpps}
    experiments:
      - {name: fw-sweep, method: sweep, pipelines: [seed-firewall, seed-nat],
         flows: [100, 10000], sizes: [64, 1518],
         rates: {from: 20kpps, to: 180kpps, steps: 5}}

Every top-level setting can be repeated inside an experiment to override it
there. Rates are ``N``/``Npps``/``Nkpps``/``NMpps`` (packets per second) or
``NMbit``/``NGbit`` (frame bits per second, frame size including the FCS, no
inter-frame gap, as in the seed). Methods and what they take are the models of
`ovsmgr.bench.specmodel` (schema/ovsmgr-bench.schema.json); pipelines are ``plain``
(OVS forwarding port to port), ``seed-firewall``, ``seed-nat`` (the seed policies compiled
by ovsmgr), ``seed-firewall-handwritten``, ``seed-nat-handwritten`` (the seed's own flows), or a
policy file (``*.yaml``); systems (method
``rules``) are ``ovsmgr`` and the Linux baselines in ``LINUX_SYSTEMS``. Method
``updates`` measures the NDR of a pipeline while ``update_rate`` runtime changes
per second (``update_kind``: address-set members, rules enabled and disabled, or
both in turn) go through the controller's engine (`ovsmgr.bench.updates`). Methods ``cps``
and ``flood`` send TCP SYNs to ``destinations`` (addresses x ports; one destination exhausts
a NAT's source ports on purpose); ``flood`` measures what an established TCP stream and a
ping keep while SYNs flood the switch (`ovsmgr.bench.flood`). ``nat_meter`` and ``nat_flags``
are bench-only variants of a pipeline's NAT rules for what the policy language has no key for
(`ovsmgr.bench.natvariant`); a limit on a NAT rule's new connections is the policy's own
``limit:``, measured with a policy file that has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from ovsmgr.policy.diagnostics import PolicyError

Method = Literal["sweep", "ndr", "rules", "flows", "tcp", "cps", "control", "updates", "flood"]
METHODS: tuple[Method, ...] = get_args(Method)
LinuxSystem = Literal["linux", "iptables", "iptables-nft", "ipset", "nftables"]
LINUX_SYSTEMS: tuple[LinuxSystem, ...] = get_args(LinuxSystem)
System = Literal["ovsmgr", LinuxSystem]
SYSTEMS: tuple[System, ...] = get_args(System)
RuleKind = Literal["dport", "src", "mixed"]
RULE_KINDS: tuple[RuleKind, ...] = get_args(RuleKind)
SEED_PIPELINES = ("plain", "seed-firewall", "seed-nat", "seed-firewall-handwritten", "seed-nat-handwritten")
"""Pipelines named, not files: plain forwarding, the seed policies (compiled by ovsmgr) and the
seed's own hand-written flows (`ovsmgr.bench.pipelines.HANDWRITTEN`)."""
Measure = Literal["ndr", "tcp", "cps", "cost"]
MEASURES: tuple[Measure, ...] = get_args(Measure)
UpdateKind = Literal["set", "rule", "mixed"]
UPDATE_KINDS: tuple[UpdateKind, ...] = get_args(UpdateKind)
"""What the ``updates`` method changes: a member of the blocklist address set added and removed
(``set``), the blocklist rule disabled and enabled (``rule``), or the four steps in turn."""
MAX_UPDATE_RATE = 10000.0
KEPT_UP = 0.95
"""The ``updates`` method's updater kept up when it applied at least this share of the rate."""
COST_RATE = 50000.0
"""pps of a ``cost`` measurement (one fixed-rate trial) when the experiment gives no rates."""
MAX_FLOWS = 1_000_000
FRAME_SIZES = range(64, 1519)
MAX_DESTINATION_ADDRESSES = 4096
MAX_DESTINATION_PORTS = 4096
SPREAD_PORTS_FROM = 10000
"""SYNs to more than one destination port go to ports 10000 up (one port: ``traffic.dport``):
clear of ssh, iperf3 (5201) and the probes (7000-7002), below the generated rules (20000 up)."""
MeterPackets = Literal["syn"]
METER_PACKETS: tuple[MeterPackets, ...] = get_args(MeterPackets)
"""What a bench-only NAT meter counts: ``new``, the packets of new connections that reach a NAT
rule (after conntrack, as a ``limit:`` on the rule would); ``syn``, TCP SYNs from the NAT rule's
zone before they reach conntrack."""
NatFlag = Literal["random", "hash", "persistent"]
NAT_FLAGS: tuple[NatFlag, ...] = get_args(NatFlag)

RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(pps|kpps|mpps|bit|kbit|mbit|gbit)?(?:/s)?\s*$",
                     re.IGNORECASE)
RATE_SCALE = {"pps": 1.0, "kpps": 1e3, "mpps": 1e6, "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


class SpecError(PolicyError):
    """The spec is not valid; like a policy error, every problem with its file:line:column."""


@dataclass(frozen=True, order=True)
class Rate:
    """A transmit rate in packets per second (``unit='pps'``) or frame bits per second."""

    value: float
    unit: Literal["pps", "bps"] = "pps"

    def pps(self, frame_size: int) -> float:
        return self.value if self.unit == "pps" else self.value / (frame_size * 8)

    def __str__(self) -> str:
        if self.unit == "bps":
            return f"{self.value / 1e6:g}Mbit"
        return f"{self.value / 1e3:g}kpps" if self.value >= 1000 else f"{self.value:g}pps"


def parse_rate(text: str | int | float) -> Rate:
    """``"10kpps"``, ``"500Mbit"``, ``"1.5Gbit/s"``, ``20000`` (pps) -> Rate; ValueError if not."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a rate")
    if isinstance(text, int | float):
        if text <= 0:
            raise ValueError(f"rate {text} must be positive")
        return Rate(float(text))
    found = RATE_RE.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a rate (like 20kpps, 150000pps or 500Mbit)")
    unit = (found[2] or "pps").lower()
    value = float(found[1]) * RATE_SCALE[unit]
    if value <= 0:
        raise ValueError(f"rate {text!r} must be positive")
    return Rate(value, "pps" if unit.endswith("pps") else "bps")


def rate_steps(start: Rate, stop: Rate, steps: int | None = None, step: Rate | None = None) -> list[Rate]:
    """A linear sweep from start to stop inclusive, by a number of points or a step."""
    if start.unit != stop.unit or (step is not None and step.unit != start.unit):
        raise ValueError("a sweep's from, to and step must all be pps or all bit rates")
    if stop.value < start.value:
        raise ValueError("a sweep's 'to' must not be below its 'from'")
    if step is not None:
        count = int((stop.value - start.value) / step.value + 1e-9) + 1
        return [Rate(start.value + i * step.value, start.unit) for i in range(count)]
    count = steps or 2
    if count < 2:
        return [start]
    width = (stop.value - start.value) / (count - 1)
    return [Rate(start.value + i * width, start.unit) for i in range(count)]


@dataclass(frozen=True)
class NdrSettings:
    """RFC 2544 search: the highest rate whose loss is at most ``loss``, in ``steps`` rates;
    a rate that fails is tried up to ``retries`` more times before it counts as failed (a
    shared machine's other tenants cause losses the device under test did not)."""

    loss: float = 0.001
    steps: int = 6
    low: Rate = Rate(5000.0)
    high: Rate = Rate(250000.0)
    retries: int = 1
    min_cpu_share: float = 0.9
    """A failed trial in which the DPDK PMD got less than this share of its CPU (other tenants
    of the machine ran there) is repeated without using up ``retries``, up to
    ``MAX_ATTEMPTS`` trials per rate."""


@dataclass(frozen=True)
class Traffic:
    """The load's transport (``tcp`` load is bare ACK segments) and destination port (< 20000,
    so the generated filler rules never match it)."""

    proto: Literal["udp", "tcp"] = "udp"
    dport: int = 9


@dataclass(frozen=True, order=True)
class Destinations:
    """Where SYN loads go: ``addresses`` addresses of the sink's network and ``ports`` ports
    (`SPREAD_PORTS_FROM` up), drawn at random per packet. A NAT has a source port range per
    (destination address, destination port, public address): one destination exhausts it."""

    addresses: int = 1
    ports: int = 1

    @property
    def count(self) -> int:
        return self.addresses * self.ports

    def __str__(self) -> str:
        return f"{self.addresses}x{self.ports}"


ONE_DESTINATION = Destinations()


@dataclass(frozen=True)
class NatMeter:
    """A bench-only meter, in packets per second, on the TCP SYNs from a pipeline's NAT zones
    before conntrack (`METER_PACKETS`: ``syn``). The policy language has no such key; its
    ``limit:`` on a NAT rule meters the rule's new connections after conntrack."""

    packets: MeterPackets
    rate: float

    def __str__(self) -> str:
        return f"meter {self.packets} {self.rate:g}/s"


@dataclass(frozen=True)
class Settings:
    datapath: Literal["netdev", "dpdk"] = "netdev"
    duration: float = 2.0
    warmup: float = 0.5
    repetitions: int = 1
    probe_rate: int = 500
    ndr: NdrSettings = NdrSettings()
    traffic: Traffic = Traffic()
    nice: int = -10
    """Scheduling priority of the switch's forwarding threads and of trafgen (both the bench's
    own processes): on a machine shared with other work they should get their CPUs."""
    dpdk_ring: int = 4096
    """Frames in each DPDK af_packet port's rings (``framecnt``; 0: DPDK's default of 512). A
    deeper ring rides out the PMD being descheduled on a shared machine, as a NIC's would."""


@dataclass(frozen=True)
class Experiment:
    name: str
    method: Method
    settings: Settings = Settings()
    pipelines: tuple[str, ...] = ("seed-firewall",)
    baseline: str | None = "plain"
    systems: tuple[str, ...] = ("ovsmgr", "iptables", "ipset", "nftables")
    rule_kinds: tuple[str, ...] = ("dport",)
    rules: tuple[int, ...] = (0, 1000, 5000)
    flows: tuple[int, ...] = (1000,)
    sizes: tuple[int, ...] = (64,)
    rates: tuple[Rate, ...] = ()
    measures: tuple[str, ...] = ("ndr",)
    establish: bool = False
    policy_ports: tuple[str, str] | None = None
    """(generator port, sink port) of a policy-file pipeline; default inside/outside or the
    first two ports by ofport."""
    update_rate: float = 100.0
    """Method ``updates``: runtime changes per second applied during the subject's NDR search."""
    update_kind: str = "mixed"
    """Method ``updates``: one of `UPDATE_KINDS`."""
    destinations: tuple[Destinations, ...] = (ONE_DESTINATION,)
    """Methods ``cps`` and ``flood``: where the SYNs go (a point per entry)."""
    stream: Rate = Rate(100e6, "bps")
    """Method ``flood``: the established TCP stream's rate (iperf3 ``-b``)."""
    nat_meter: NatMeter | None = None
    nat_flags: tuple[str, ...] = ()
    """Bench-only flags added to the ``nat()`` of every NAT rule (`NAT_FLAGS`)."""


@dataclass(frozen=True)
class BenchSpec:
    name: str
    experiments: tuple[Experiment, ...]
    source: str = "<builtin>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def with_overrides(spec: BenchSpec, **overrides: Any) -> BenchSpec:
    """Command-line flags (datapath, duration, warmup, repetitions) override every experiment."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return spec
    return replace(spec, experiments=tuple(replace(e, settings=replace(e.settings, **given))
                                           for e in spec.experiments))


def only(spec: BenchSpec, names: tuple[str, ...]) -> BenchSpec:
    unknown = sorted(set(names) - {e.name for e in spec.experiments})
    if unknown:
        have = ", ".join(e.name for e in spec.experiments)
        raise ValueError(f"no experiment named {', '.join(unknown)} (have: {have})")
    return replace(spec, experiments=tuple(e for e in spec.experiments if e.name in names))
