"""The bench spec language (see `ovsmgr.bench.spec`) as frozen pydantic models.

These models check shape: keys, types, ranges and choices, the keys each method takes
(an experiment is a union tagged by ``method``). What needs more than one value (a
sweep has rates, a policy file exists, ndr.low is below ndr.high, names are unique)
is checked by `ovsmgr.bench.specfile`, which also turns a model into the
`ovsmgr.bench.spec` dataclasses the runner uses. The JSON Schema that editors and CI
use (``ovsmgr bench schema``, schema/ovsmgr-bench.schema.json) is generated from here.

A field left out means "as the spec's top level says" inside an experiment and "the
default" at the top level (`ovsmgr.bench.spec.Settings`), so every field may be left out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    model_validator,
)

from ovsmgr.bench.spec import (
    FRAME_SIZES,
    MAX_DESTINATION_ADDRESSES,
    MAX_DESTINATION_PORTS,
    MAX_FLOWS,
    MAX_UPDATE_RATE,
    MEASURES,
    METER_PACKETS,
    METHODS,
    NAT_FLAGS,
    RATE_SCALE,
    RULE_KINDS,
    SEED_PIPELINES,
    SYSTEMS,
    UPDATE_KINDS,
    Measure,
    MeterPackets,
    NatFlag,
    Rate,
    RuleKind,
    System,
    UpdateKind,
    parse_rate,
    rate_steps,
)

BOUNDS: dict[str | tuple[str, str], tuple[float, float, type]] = {
    "duration": (0.1, 600, float), "warmup": (0, 60, float), "repetitions": (1, 100, int),
    "probe_rate": (0, 20000, int), "dpdk_ring": (0, 65536, int), "nice": (-20, 19, int),
    ("ndr", "loss"): (0, 0.5, float), ("ndr", "steps"): (1, 30, int), ("ndr", "retries"): (0, 5, int),
    ("ndr", "min_cpu_share"): (0, 1, float), ("traffic", "dport"): (1, 19999, int),
    "rules": (0, 100_000, int), "flows": (1, MAX_FLOWS, int),
    "sizes": (FRAME_SIZES.start, FRAME_SIZES.stop - 1, int), "update_rate": (0.1, MAX_UPDATE_RATE, float),
    ("rates", "steps"): (2, 200, int),
    ("destinations", "addresses"): (1, MAX_DESTINATION_ADDRESSES, int),
    ("destinations", "ports"): (1, MAX_DESTINATION_PORTS, int),
    ("nat_meter", "rate"): (1, 10_000_000, float),
}
"""(low, high, int or float) of every number, by field name (or (section, field) where a name
is used twice); the models' constraints and the error messages both come from here."""
CHOICES: dict[str, tuple[str, ...]] = {
    "datapath": ("netdev", "dpdk"), "proto": ("udp", "tcp"), "update_kind": UPDATE_KINDS, "method": METHODS,
    "systems": SYSTEMS, "rule_kinds": RULE_KINDS, "measures": MEASURES, "packets": METER_PACKETS,
    "nat_flags": NAT_FLAGS,
}


def _float_text(value: Any) -> Any:
    """The YAML loader keeps numbers with a fraction as text (the policy language has none)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _range(name: str | tuple[str, str], kind: type) -> Any:
    lo, hi, declared = BOUNDS[name]
    assert declared is kind, f"BOUNDS[{name!r}] says {declared.__name__}"
    return Field(ge=kind(lo), le=kind(hi))


Duration = Annotated[float, _range("duration", float), BeforeValidator(_float_text)]
Warmup = Annotated[float, _range("warmup", float), BeforeValidator(_float_text)]
Repetitions = Annotated[int, _range("repetitions", int)]
ProbeRate = Annotated[int, _range("probe_rate", int)]
DpdkRing = Annotated[int, _range("dpdk_ring", int)]
Nice = Annotated[int, _range("nice", int)]
Loss = Annotated[float, _range(("ndr", "loss"), float), BeforeValidator(_float_text)]
NdrSteps = Annotated[int, _range(("ndr", "steps"), int)]
Retries = Annotated[int, _range(("ndr", "retries"), int)]
CpuShare = Annotated[float, _range(("ndr", "min_cpu_share"), float), BeforeValidator(_float_text)]
Dport = Annotated[int, _range(("traffic", "dport"), int)]
RuleCount = Annotated[int, _range("rules", int)]
FlowCount = Annotated[int, _range("flows", int)]
FrameSize = Annotated[int, _range("sizes", int)]
UpdateRate = Annotated[float, _range("update_rate", float), BeforeValidator(_float_text)]
SweepSteps = Annotated[int, _range(("rates", "steps"), int)]
DestinationAddresses = Annotated[int, _range(("destinations", "addresses"), int)]
DestinationPorts = Annotated[int, _range(("destinations", "ports"), int)]
MeterRate = Annotated[float, _range(("nat_meter", "rate"), float), BeforeValidator(_float_text)]

T = TypeVar("T")
OneOrMore = Annotated[Annotated[T, Tag("one")] | Annotated[list[T], Tag("many"), Field(min_length=1)],
                      Discriminator(lambda v: "many" if isinstance(v, list) else "one")]
"""A value or a non-empty list of values (`listed` reads both as a list)."""


def listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _pipeline(value: str) -> str:
    if value not in SEED_PIPELINES and not value.endswith((".yaml", ".yml")):
        raise ValueError(f"pipeline {value!r} must be one of {', '.join(SEED_PIPELINES)} "
                         "or a policy file (*.yaml)")
    return value


Pipeline = Annotated[str, AfterValidator(_pipeline), WithJsonSchema({
    "anyOf": [{"enum": list(SEED_PIPELINES)}, {"type": "string", "pattern": r"\.ya?ml$"}],
    "description": "plain (OVS forwarding port to port), a seed pipeline, or a policy file (*.yaml) "
                   "relative to the spec's directory"})]
RATE_PATTERN = (r"^\s*[0-9]+(\.[0-9]+)?\s*(" + "|".join("".join(f"[{c}{c.upper()}]" for c in unit) for unit in RATE_SCALE)
                + r")?(/[sS])?\s*$")
"""`RATE_RE` for JSON Schema, whose patterns have no case-insensitive flag."""
RateValue = Annotated[str | float, AfterValidator(parse_rate), WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": RATE_PATTERN}, {"type": "number", "exclusiveMinimum": 0}],
    "description": "N, Npps, Nkpps, NMpps (packets per second), NMbit, NGbit (frame bits per second)"})]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)


class NdrModel(_Frozen):
    """RFC 2544 search: the highest rate whose loss is at most ``loss``, in ``steps`` rates."""

    loss: Loss | None = None
    steps: NdrSteps | None = None
    low: RateValue | None = None
    high: RateValue | None = None
    retries: Retries | None = Field(
        default=None, description="More tries of a rate that lost too much, before it counts as failed.")
    min_cpu_share: CpuShare | None = Field(
        default=None, description="A failed trial in which the DPDK PMD got less CPU is repeated.")


class TrafficModel(_Frozen):
    proto: Literal["udp", "tcp"] | None = Field(default=None, description="tcp load is bare ACK segments.")
    dport: Dport | None = None


class CommonSettings(_Frozen):
    """Settings a spec gives at its top level and an experiment may override."""

    datapath: Literal["netdev", "dpdk"] | None = Field(default=None, description="The OVS lab's datapath.")
    duration: Duration | None = Field(default=None, description="Seconds measured per trial.")
    warmup: Warmup | None = Field(default=None, description="Seconds of load before counting.")
    repetitions: Repetitions | None = None
    probe_rate: ProbeRate | None = Field(
        default=None, description="Latency probes per second (0: no latency).")
    ndr: NdrModel | None = None
    traffic: TrafficModel | None = None
    dpdk_ring: DpdkRing | None = Field(
        default=None, description="Frames in each DPDK af_packet port's rings (0: DPDK's default).")
    nice: Nice | None = Field(
        default=None, description="Scheduling priority of the switch's forwarding threads and of trafgen.")


class RateRange(_Frozen):
    """A linear sweep from ``from`` to ``to``, by a number of ``steps`` or a ``step``."""

    from_: RateValue = Field(alias="from")
    to: RateValue
    steps: SweepSteps | None = None
    step: RateValue | None = None

    @model_validator(mode="after")
    def _sweepable(self) -> RateRange:
        self.rates()
        return self

    def rates(self) -> list[Rate]:
        return rate_steps(self.from_, self.to, self.steps, self.step)  # type: ignore[arg-type]


Rates = Annotated[Annotated[OneOrMore[RateValue], Tag("list")] | Annotated[RateRange, Tag("range")],
                  Discriminator(lambda v: "range" if isinstance(v, dict) else "list")]
Baseline = Annotated[Literal["none"] | Pipeline | None, Field(
    description="What each point is measured against (none or null: nothing).")]
PolicyPorts = Annotated[list[str], Field(min_length=2, max_length=2, description="[GENERATOR_PORT, SINK_PORT]")]


class DestinationsModel(_Frozen):
    """Where SYNs go: addresses of the sink's network x ports from traffic.dport up."""

    addresses: DestinationAddresses = 1
    ports: DestinationPorts = 1


class NatMeterModel(_Frozen):
    """Bench-only: a meter (packets per second) on TCP SYNs from the zones of the pipeline's NAT
    rules, before conntrack. (A limit on a NAT rule's new connections is the policy's `limit:`.)"""

    packets: MeterPackets = Field(description="syn: TCP SYNs from the rule's zone, before conntrack. "
                                              "(New connections of a NAT rule: the policy's limit:.)")
    rate: MeterRate


class _Experiment(CommonSettings):
    name: str | None = Field(default=None, description="Default: METHOD-N.")


# What methods take, in groups; each method's model is the groups it takes (extra keys are errors).
class _Pipelines(_Experiment):
    pipelines: OneOrMore[Pipeline] | None = None


class _AgainstBaseline(_Pipelines):
    baseline: Baseline = "plain"
    policy_ports: PolicyPorts | None = None


class _Sizes(_Experiment):
    sizes: OneOrMore[FrameSize] | None = None


class _Load(_Sizes):
    flows: OneOrMore[FlowCount] | None = None


class _Measures(_Load):
    measures: OneOrMore[Measure] | None = None
    rates: Rates | None = None


class _Rules(_Experiment):
    rule_kinds: OneOrMore[RuleKind] | None = None
    rules: OneOrMore[RuleCount] | None = None


class Sweep(_AgainstBaseline, _Load):
    method: Literal["sweep"]
    rates: Rates | None = None


class Ndr(_AgainstBaseline, _Load):
    method: Literal["ndr"]


class Flows(_Pipelines, _Measures):
    method: Literal["flows"]
    establish: bool | None = Field(default=None, description="UDP flows get a reply before measuring.")


class Rules(_Rules, _Measures):
    method: Literal["rules"]
    systems: OneOrMore[System] | None = None


class Tcp(_AgainstBaseline):
    method: Literal["tcp"]


class _NatVariant(_Pipelines):
    destinations: OneOrMore[DestinationsModel] | None = Field(
        default=None, description="Where the SYNs go; a point per entry.")
    nat_meter: NatMeterModel | None = None
    nat_flags: OneOrMore[NatFlag] | None = Field(
        default=None, description="Bench-only flags added to the nat() of every NAT rule.")


class Cps(_AgainstBaseline, _Sizes, _NatVariant):
    method: Literal["cps"]


class Flood(_NatVariant):
    method: Literal["flood"]
    rates: Rates | None = Field(default=None, description="SYN flood rates (a point per rate).")
    stream: RateValue | None = Field(default=None, description="The established TCP stream's rate.")


class Control(_Rules):
    method: Literal["control"]


class Updates(_Pipelines, _Load):
    method: Literal["updates"]
    policy_ports: PolicyPorts | None = None
    update_rate: UpdateRate | None = Field(
        default=None, description="Runtime changes per second during the subject's NDR search.")
    update_kind: UpdateKind | None = None


EXPERIMENTS: dict[str, type[_Experiment]] = {
    "sweep": Sweep, "ndr": Ndr, "flows": Flows, "rules": Rules, "tcp": Tcp, "cps": Cps, "control": Control,
    "updates": Updates, "flood": Flood,
}
Experiment = Annotated[Sweep | Ndr | Flows | Rules | Tcp | Cps | Control | Updates | Flood,
                       Field(discriminator="method")]


class BenchFile(CommonSettings):
    """A bench spec file: settings, then the experiments that use them."""

    version: Literal[1] = 1
    name: str | None = Field(default=None, description="Default: the file's name.")
    experiments: Annotated[list[Experiment], Field(min_length=1)]


def bench_json_schema() -> dict[str, object]:
    return {**BenchFile.model_json_schema(by_alias=True), "title": "ovsmgr bench spec (version 1)",
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://ovsmgr.dev/schema/ovsmgr-bench.schema.json"}
