"""What the device under test runs (`Config`) and how an OVS pipeline gets onto a switch.

OVS pipelines are plain port-to-port forwarding, a seed policy, a policy file, a generated
policy of N rules, or the seed's own hand-written flows (`HANDWRITTEN`, pushed with
`set_handwritten` in place of ovsmgr's flows, the bench's baseline for what ovsmgr compiles), each optionally with the bench's blocklist
(`with_blocklist`, what the ``updates`` method changes while the load runs). Both OVS
test beds (the embedded lab in `testbed`, a running switch in `systembed`) switch
pipelines with `switch_pipeline`: a policy is applied by ovsmgr itself, as a difference
against the one before; plain forwarding sits on top (`set_plain`). A pipeline may carry a
bench-only variant of its NAT rules (a meter on SYNs before conntrack, nat() flags:
`ovsmgr.bench.natvariant`; a limit on a NAT rule is the policy's own `limit:`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from ovsmgr.bench.natvariant import apply_variant
from ovsmgr.bench.spec import NatMeter
from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.compiler.pipeline import COOKIE_MAGIC, COOKIE_MASK
from ovsmgr.lab.spec import LabPort, LabSpec, lab_spec_from_policy
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.policy.generate import Kind, generate_policy
from ovsmgr.policy.loader import load_file
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.apply import apply_policy
from ovsmgr.switch.settings import snat_source_ports

POLICY_DIRS = (Path(__file__).resolve().parents[2] / "policies", Path("/etc/ovsmgr"))
"""Where the seed pipelines' policies are looked up, in order: the repository's policies/ (ovsmgr
run from a checkout), then /etc/ovsmgr (an installed ovsmgr; the test VMs put them there)."""
BENCH_COOKIE = 0xBE0C
"""Cookie of the plain-forwarding flows the bench adds on top of a policy (ovsmgr ignores them)."""
PLAIN_PRIORITY = 65535
DEFAULT_PORTS = (LabPort("inside", 1, "10.1.0.2/16"), LabPort("outside", 2, "10.2.0.2/16"))
HANDWRITTEN_DIR = Path(__file__).resolve().parents[2] / "bench" / "handwritten"
HANDWRITTEN = {"seed-firewall-handwritten": ("seed-firewall.flows", None),
               "seed-nat-handwritten": ("seed-nat.flows", "200.200.200.200")}
"""The seed's hand-written pipelines: their flows (``ovs-ofctl add-flow`` text in `HANDWRITTEN_DIR`)
and the address their SNAT translates to (None: no SNAT)."""
HANDWRITTEN_PORTS = (1, 2)
"""The ofports (inside, outside) the hand-written flows name: the default lab's."""
BLOCKLIST = "bench-blocklist"
"""Name of the address set and of the drop rule `with_blocklist` adds to a pipeline."""
BLOCKLIST_MEMBERS = ("203.0.113.1",)
"""The set's members in the policy (TEST-NET-3: no load, probe or NAT address is in it)."""


@dataclass(frozen=True)
class Config:
    """What the device under test runs.

    ``system``: ``ovs`` pipelines (``pipeline`` = plain | seed-firewall | seed-nat | a policy
    file | generated | one of `HANDWRITTEN`) or a Linux one (linux | iptables | iptables-nft | ipset | nftables).
    """

    system: str
    pipeline: str = "plain"
    rules: int = 0
    rule_kind: str = "dport"
    blocklist: str | None = None
    """The pipeline with the bench's blocklist added (`with_blocklist`) for the zone of this
    generator port ("": the test bed's default generator port); None: the pipeline as it is."""
    nat_meter: NatMeter | None = None
    nat_flags: tuple[str, ...] = ()
    """A bench-only variant of the pipeline's NAT rules (`ovsmgr.bench.natvariant`)."""

    @property
    def testbed(self) -> Literal["ovs", "linux"]:
        return "ovs" if self.system == "ovs" else "linux"

    @property
    def label(self) -> str:
        if self.system == "ovs" and self.pipeline == "generated":
            return f"ovsmgr {self.rule_kind} x{self.rules}"
        if self.system == "ovs":
            name = Path(self.pipeline).stem if self.pipeline.endswith((".yaml", ".yml")) else self.pipeline
            if self.nat_flags:
                name += f"+nat({','.join(self.nat_flags)})"
            if self.nat_meter is not None:
                name += f"+{self.nat_meter}"
            return f"{name}+blocklist" if self.blocklist is not None else name
        if self.system == "linux":
            return "linux"
        return f"{self.system} {self.rule_kind} x{self.rules}"


def seed_policy_path(name: str, dirs: tuple[Path, ...] = POLICY_DIRS) -> Path:
    """The policy file of seed pipeline ``name``: the first ``NAME.yaml`` in `POLICY_DIRS`."""
    for directory in dirs:
        path = directory / f"{name}.yaml"
        if path.is_file():
            return path
    raise FileNotFoundError(f"seed pipeline {name}: no {name}.yaml in {' or '.join(str(d) for d in dirs)} "
                            "(name the policy file by path instead)")


def pipeline_data(pipeline: str) -> dict[str, Any]:
    """The policy data (as in its YAML file) of a seed pipeline or a policy file."""
    path = seed_policy_path(pipeline) if pipeline in ("seed-firewall", "seed-nat") else Path(pipeline)
    return cast(dict[str, Any], copy.deepcopy(load_file(path).data))


def with_blocklist(data: dict[str, Any], generator_port: str = "") -> dict[str, Any]:
    """The policy plus an address set `BLOCKLIST` (members `BLOCKLIST_MEMBERS`) and, first in the
    firewall, a rule of that name dropping traffic from the generator port's zone to the set.
    The load (to the sink's address) is tested against the rule and never matches it; the
    ``updates`` method changes the set and the rule while the load runs. The generator port
    defaults as in `lab_ports_for`: ``inside`` when the policy has it, else the lowest ofport."""
    out = copy.deepcopy(data)
    ports: dict[str, Any] = out.get("switch", {}).get("ports", {})
    if not generator_port:
        generator_port = "inside" if {"inside", "outside"} <= set(ports) else min(
            ports, key=lambda name: int((ports[name] or {}).get("ofport", 1 << 30)), default="")
    zones: dict[str, Any] = out.get("zones") or {}
    zone = next((name for name, z in zones.items() if generator_port in ((z or {}).get("ports") or [])), None)
    if zone is None:
        raise ValueError(f"no zone holds the generator port {generator_port!r}: the blocklist rule "
                         "needs the zone the load enters from")
    if BLOCKLIST in (out.get("addresses") or {}):
        raise ValueError(f"the policy already has an address set named {BLOCKLIST!r}")
    out["addresses"] = {**(out.get("addresses") or {}), BLOCKLIST: list(BLOCKLIST_MEMBERS)}
    firewall = out.setdefault("firewall", {})
    firewall["rules"] = [{"name": BLOCKLIST, "from": zone, "dst": f"@{BLOCKLIST}", "action": "drop"},
                         *(firewall.get("rules") or [])]
    return out


def policy_text(config: Config) -> str:
    """The YAML of an OVS pipeline with the bench's blocklist (what its controller would load)."""
    import yaml

    if config.blocklist is None:
        raise ValueError(f"{config.label} is a pipeline without the blocklist")
    return str(yaml.safe_dump(with_blocklist(pipeline_data(config.pipeline), config.blocklist),
                              sort_keys=False))


@cache
def _compiled(pipeline: str, rules: int, kind: str, blocklist: str | None = None) -> tuple[CompiledPolicy, float]:
    """(compiled policy, seconds to load and compile), cached for the run."""
    start = time.perf_counter()
    if blocklist is not None:
        config = Config("ovs", pipeline, rules, kind, blocklist)
        policy = load_policy_text(policy_text(config), f"{config.label}.yaml")
    elif pipeline == "generated":
        policy = load_policy_text(generate_policy(rules, cast(Kind, kind)), f"generated-{kind}-{rules}.yaml")
    elif pipeline in ("seed-firewall", "seed-nat"):
        policy = load_policy([seed_policy_path(pipeline)])
    else:
        policy = load_policy([pipeline])
    compiled = compile_policy(policy)
    return compiled, time.perf_counter() - start


def compiled_for(config: Config) -> tuple[CompiledPolicy, float]:
    return _compiled(config.pipeline, config.rules, config.rule_kind, config.blocklist)


def handwritten_flows(pipeline: str) -> list[str]:
    """The flows of a hand-written pipeline, one ``ovs-ofctl add-flows`` line each, with the bench's
    cookie added (they are removed by it after); comments and blank lines left out."""
    if pipeline not in HANDWRITTEN:
        raise ValueError(f"{pipeline!r} is not a hand-written pipeline ({', '.join(HANDWRITTEN)})")
    path = HANDWRITTEN_DIR / HANDWRITTEN[pipeline][0]
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [f"cookie={BENCH_COOKIE:#x},{line}" for line in lines if line and not line.startswith("#")]


def set_handwritten(ofctl: Callable[..., str], pipeline: str, ofports: tuple[int, int]) -> None:
    """Replace what runs on the bridge by a hand-written pipeline: the bench's flows and ovsmgr's
    (selected by cookie) are deleted, and the next policy is applied as a difference against the
    table without them. The flows name ofports 1 and 2; other test beds are refused."""
    if ofports != HANDWRITTEN_PORTS:
        raise ValueError(f"{pipeline}: the hand-written flows name ofports {HANDWRITTEN_PORTS}, "
                         f"the test bed's generator and sink are {ofports}")
    flows = handwritten_flows(pipeline)
    ofctl(["del-flows", f"cookie={BENCH_COOKIE:#x}/-1"])
    ofctl(["del-flows", f"cookie={COOKIE_MAGIC << 48:#x}/{COOKIE_MASK:#x}"])
    ofctl(["add-flows", "-"], input="".join(f"{flow}\n" for flow in flows))


class _PipelineSwitch(Protocol):
    target: SwitchTarget
    gen_ofport: int
    sink_ofport: int
    nat_address: str | None
    nat_ports: int
    """Source ports the current pipeline's first SNAT rule can give out per destination:
    its addresses x its port range (0 without SNAT)."""

    def _plain(self, on: bool) -> None: ...
    def ofctl(self, args: list[str], input: str | None = None) -> str: ...


def switch_pipeline(bed: _PipelineSwitch, config: Config) -> tuple[dict[str, Any], bool]:
    """Put ``config``'s OVS pipeline on ``bed``'s switch: plain forwarding sits on top of
    whatever policy is applied (its flows at priority 65535 with the bench's cookie); a policy is
    applied by ovsmgr itself, as a difference against the one before. Sets ``bed.nat_address``;
    returns what it cost and whether the pipeline translates (its hosts must then announce
    themselves: the NAT pipeline learns MAC bindings from ARP)."""
    info: dict[str, Any] = {}
    bed.nat_address, bed.nat_ports = None, 0
    if config.pipeline == "plain":
        bed._plain(True)
        return info, False
    if config.pipeline in HANDWRITTEN:
        set_handwritten(bed.ofctl, config.pipeline, (bed.gen_ofport, bed.sink_ofport))
        bed.nat_address = HANDWRITTEN[config.pipeline][1]
        info["flows"] = len(handwritten_flows(config.pipeline))
        return info, False
    compiled, compile_s = compiled_for(config)
    bed._plain(False)
    applied = time.perf_counter()
    result = apply_policy(compiled, bed.target)
    info.update(compile_s=round(compile_s, 4), apply_s=round(time.perf_counter() - applied, 4),
                flows=len(compiled.flowset), changed=sum(result.plan.counts().values()))
    snat = [r for r in compiled.policy.nat if r.kind == "snat"]
    bed.nat_address = str(snat[0].translate_lo) if snat else None
    bed.nat_ports = snat_source_ports(snat[0]) if snat else 0
    if config.nat_meter is not None or config.nat_flags:
        info["variant_flows"] = apply_variant(bed.ofctl, compiled, config.nat_meter, config.nat_flags, BENCH_COOKIE)
    return info, bool(compiled.policy.nat)



def set_plain(ofctl: Callable[..., str], on: bool, ofports: tuple[int, int]) -> None:
    """Plain forwarding between two ports on top of whatever runs (priority `PLAIN_PRIORITY`,
    cookie `BENCH_COOKIE`: ovsmgr ignores them), or (``on=False``) not any more.
    ``ofctl(args, input=...)`` is the bed's ``ovs-ofctl``."""
    ofctl(["del-flows", f"cookie={BENCH_COOKIE:#x}/-1"])
    if on:
        a, b = ofports
        ofctl(["add-flows", "-"], input="".join(
            f"cookie={BENCH_COOKIE:#x},table=0,priority={PLAIN_PRIORITY},in_port={x} actions=output:{y}\n"
            for x, y in ((a, b), (b, a))))


def lab_ports_for(policy_file: str | None, datapath: str, name: str,
                  ports: tuple[str, str] | None) -> tuple[LabSpec, str, str]:
    """The lab for a pipeline: the default two-port layout, or a policy file's own ports.
    Returns (spec, generator port, sink port)."""
    if policy_file is None:
        return LabSpec("br0", cast(Any, datapath), list(DEFAULT_PORTS), name), "inside", "outside"
    policy = load_policy([policy_file])
    spec = lab_spec_from_policy(policy, cast(Any, datapath), {}, name)
    names = [p.name for p in sorted(spec.ports, key=lambda p: p.ofport)]
    if ports is None:
        ports = ("inside", "outside") if {"inside", "outside"} <= set(names) else (names[0], names[1])
    missing = [p for p in ports if p not in names]
    if missing or len(names) < 2:
        raise ValueError(f"{policy_file}: no port(s) {', '.join(missing)} (ports: {', '.join(names)})")
    return spec, ports[0], ports[1]
