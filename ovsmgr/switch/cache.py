"""The compile cache: each rule's flows in wire form, kept next to the applied state.

`apply` and `plan` of a policy whose rules mostly did not change should cost about
what changed. `STATE_DIR/ovsmgr-BRIDGE.cache` keeps an `IncrementalFlows` between
runs: every owner's flows (each rule's, and the pipeline's own), each rule's
*fingerprint* (what its flows are made from: name, action, flags, zones, its
resolved addresses and services), levels and conjunction ids. The next run
fingerprints the new policy's rules, and `IncrementalFlows.prepare` recompiles
only the rules whose fingerprint changed, and those whose priority level moved.

Everything else a rule's flows depend on is the cache's *context*: the pipeline
(ports, zones, links, NAT rules, conntrack settings, default action) and the code
that compiles and encodes (a digest of those modules' sources and ovsmgr's
version). A different context, an unreadable file, rules that moved relative to
each other, or a conjunction id that could shift: the full compile runs instead.
The full compile stays the reference: tests hold cached == full after random
sequences of edits (tests/unit/test_compile_cache.py).
"""

from __future__ import annotations

import functools
import hashlib
import marshal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ovsmgr
from ovsmgr.compiler.stages.filter import shadow_bits
from ovsmgr.compiler.stages.helpers import used_helpers
from ovsmgr.policy.ir import ResolvedPolicy, Rule
from ovsmgr.southbound.openflow import FlowMod
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.incremental import (
    BASE,
    IncrementalFlows,
    NeedsFullCompile,
    Owners,
    nat_signature,
)
from ovsmgr.switch.statefile import atomic_write

FORMAT = 4
_CODE = ("compiler", "switch/incremental.py", "southbound/openflow/oxm.py", "southbound/openflow/actions.py",
         "southbound/openflow/messages.py", "southbound/openflow/meters.py", "southbound/openflow/groups.py",
         "policy/ir.py")


def cache_path(target: SwitchTarget, bridge: str) -> Path:
    return target.state_dir / f"ovsmgr-{bridge}.cache"


@functools.cache
def code_version() -> str:
    """ovsmgr's version and the sources of what compiles and encodes flows: a change to either
    (an upgrade, a developer's edit) makes every cached flow stale."""
    root = Path(ovsmgr.__file__).parent
    h = hashlib.sha256(ovsmgr.__version__.encode())
    for part in _CODE:
        path = root / part
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(source.read_bytes())
    return h.hexdigest()


def context_digest(policy: ResolvedPolicy) -> str:
    """What every rule's flows depend on besides the rule: all of the policy but its rules, and the
    helpers the rules use (NAT's commits come in a variant per helper)."""
    parts = (policy.bridge, policy.forwarding, policy.mac, sorted(policy.ports.items()),
             sorted(policy.links.items()), sorted(policy.zones.items()), nat_signature(policy.nat),
             policy.default_action, policy.ct_zone, policy.second_zone, policy.invalid, policy.cut_on_rule_removal,
             used_helpers(policy.rules),
             [r.name for r in policy.rules if r.shadow])  # a shadow rule's flows depend on its place among them
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def fingerprint(rule: Rule) -> bytes:
    """What a rule's flows are made from (not where it stands in the file)."""
    m = rule.match
    text = "\x1f".join((rule.name, rule.action, "s" if rule.stateful else "", "l" if rule.log else "",
                        f"{rule.limit.unit}:{rule.limit.rate}" if rule.limit else "",
                        "w" if rule.shadow else "",
                        m.from_zone, m.to_zone or "", ",".join(map(str, m.src)), ",".join(map(str, m.dst)),
                        ",".join(map(str, m.services)), rule.helper or ""))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class Compiled:
    """The flows of a policy, how they were made, and what to keep for the next run."""

    flows: IncrementalFlows
    fingerprints: list[bytes]
    from_cache: bool
    rules_compiled: int


def compile_with_cache(policy: ResolvedPolicy, path: Path | None) -> Compiled:
    """The policy's flows: from the cache at `path` where it still holds, else the full compile."""
    fps = [fingerprint(r) for r in policy.rules]
    data = _read(path) if path is not None else None
    if data is not None and data.get("context") == context_digest(policy):
        try:
            cached = _from_cache(policy, data, fps)
        except (KeyError, ValueError, TypeError):
            cached = None  # a cache written wrong (or by hand): compile instead
        if cached is not None:
            return cached
    return Compiled(IncrementalFlows(policy), fps, False, len(policy.rules))


def _from_cache(policy: ResolvedPolicy, data: dict[str, Any], fps: list[bytes]) -> Compiled | None:
    old = dict(zip(data["names"], data["fingerprints"], strict=True))
    names = [r.name for r in policy.rules]
    changed = {n for n, fp in zip(names, fps, strict=True) if old.get(n) != fp} | (old.keys() - set(names))
    if [n for n in data["names"] if n not in changed] != [n for n in names if n not in changed]:
        return None  # rules moved relative to each other: their levels all change
    inc = restore(policy, data)
    if changed:
        try:
            pending = inc.prepare(policy.rules, changed, same_order=names == data["names"])
        except NeedsFullCompile:
            return None
        inc.commit(pending)
        return Compiled(inc, fps, True, pending.rules_recompiled)
    return Compiled(inc, fps, True, 0)


def save(path: Path, policy: ResolvedPolicy, compiled: Compiled) -> None:
    """Keep the flows for the next run (a compile cache: losing it costs time, never correctness)."""
    inc = compiled.flows
    data = {
        "format": FORMAT, "code": code_version(), "context": context_digest(policy),
        "names": [r.name for r in inc.rules], "fingerprints": compiled.fingerprints, "levels": inc.levels,
        "conj": inc.conj, "passed_over": sorted(inc.passed_over), "owners": inc.owners.packed(), "index": inc.index,
        "keys": list(inc.flows), "bodies": [mod.body for mod in inc.flows.values()],
    }
    atomic_write(path, marshal.dumps(data), durable=False)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("code") != code_version():
        return None
    return data


def restore(policy: ResolvedPolicy, data: dict[str, Any]) -> IncrementalFlows:
    """An `IncrementalFlows` as it was saved, for `policy` (whose context is the saved one). Owners'
    flows stay packed until `prepare` looks at one."""
    inc = IncrementalFlows.__new__(IncrementalFlows)
    inc.policy, inc.rules, inc._names = policy, list(policy.rules), None
    inc.levels = data["levels"]
    inc.positions = {name: i for i, name in enumerate(data["names"])}
    inc.owners = Owners(data["owners"])
    inc.conj = data["conj"]
    inc.passed_over = set(data["passed_over"])
    inc.shadow = shadow_bits(policy.rules)  # the context holds the shadow rules: the saved ones
    inc.conj_owner = {v: n for n, values in inc.conj.items() for v in values}
    inc.index = data["index"]
    inc.flows = dict(zip(data["keys"], map(FlowMod, data["keys"], data["bodies"]), strict=True))
    if BASE not in inc.owners:
        raise ValueError("a compile cache without the pipeline's own flows")
    return inc
