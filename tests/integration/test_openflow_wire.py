"""ovsmgr's OpenFlow encoding against the switch: byte for byte, both ways.

- Flows loaded with `ovs-ofctl` from `ovsmgr compile`'s text read back over ovsmgr's own
  OpenFlow connection byte-identical to ovsmgr's encoding of the same compiled flows (so a
  plan compares bytes, and an unchanged flow is never seen as changed);
- flows pushed in ovsmgr's own bundle are what `ovs-ofctl dump-flows`, an independent
  reader, prints for the rendered policy;
- meters (`limit:`, policies/limits.yaml) added with `ovs-ofctl add-meter` as the compiled
  text's header says read back as ovsmgr's meter entries, and go after the flows using them;
- and the same for select groups (`ovs-ofctl dump-groups`), which go in the same bundle,
  before the flows that use them, and away after them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsmgr.compiler import compile_policy
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.policy.generate import generate_policy
from ovsmgr.render.ofctl import flow_text, group_text, meter_text
from ovsmgr.southbound.openflow import (
    BundleOp,
    SwitchConnection,
    SwitchFlowTable,
    encode_flow,
    encode_group,
)
from ovsmgr.southbound.openflow.meters import meter_entry
from ovsmgr.switch.plan import desired_flows, make_plan

from .switch import POLICIES, target_of

pytestmark = pytest.mark.integration

CASES = [p.stem for p in sorted(POLICIES.glob("*.yaml"))] + ["generated-1000"]


def compiled(case: str):  # type: ignore[no-untyped-def]
    if case == "generated-1000":
        return compile_policy(load_policy_text(generate_policy(1000, "mixed"), "generated.yaml"))
    return compile_policy(load_policy([POLICIES / f"{case}.yaml"]))


def _sorted_dump(text: str) -> list[str]:
    return sorted(line.strip() for line in text.splitlines() if "actions=" in line)


@pytest.mark.parametrize("case", CASES)
def test_the_switch_reports_every_flow_as_ovsmgr_encodes_it(lab_factory, case: str) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory()
    policy = compiled(case)
    flows, groups = policy.flows, policy.groups
    for meter in policy.meters:  # as the compiled text's header says (limits.yaml)
        lab.ofctl(["add-meter", meter_text(meter)])
    if groups:  # as `ovsmgr compile` writes it then: groups and flows in one `ovs-ofctl bundle`
        lab.ofctl(["bundle", "-"], input="".join(f"group add {group_text(g)}\n" for g in groups)
                  + "".join(f"flow add {flow_text(f)}\n" for f in flows))
    else:
        lab.ofctl(["add-flows", "-"], input="".join(f"{flow_text(f)}\n" for f in flows))
    meters = {meter_entry(m) for m in policy.meters}
    wanted = {encode_flow(f) for f in flows} | {encode_group(g) for g in groups} | meters
    with SwitchConnection(target_of(lab).openflow("br0")) as connection:
        table = SwitchFlowTable(connection)
        read = {s.mod for s in table.read()}
        assert read == wanted
        # and back: ovsmgr's own bundle gives what ovs-ofctl prints for the rendered flows and groups
        rendered = _sorted_dump(lab.ofctl(["dump-flows", "--no-stats"])), _groups(lab)
        table.push(make_plan(table.read(), {}).bundle())
        assert (_sorted_dump(lab.ofctl(["dump-flows", "--no-stats"])), _groups(lab)) == ([], [])
        assert not table.read(), "the meters and groups went after the flows that used them"
        table.push(make_plan([], desired_flows(flows, groups=groups)).bundle() + [BundleOp(m, False) for m in meters])
    assert (_sorted_dump(lab.ofctl(["dump-flows", "--no-stats"])), _groups(lab)) == rendered


def _groups(lab) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(line.strip() for line in lab.ofctl(["dump-groups"]).splitlines() if "group_id=" in line)


def test_a_refused_bundle_names_the_rule_and_changes_nothing(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ovsmgr.compiler.flows import Ct, Flow, Match
    from ovsmgr.compiler.ids import rule_id
    from ovsmgr.compiler.pipeline import CookieKind, Table, cookie
    from ovsmgr.southbound.openflow import BundleRefused
    from ovsmgr.switch.plan import Named

    lab = lab_factory()
    good = [encode_flow(f) for f in compiled("seed-firewall").flows]
    bad = encode_flow(Flow(Table.NAT, 7, Match(), (Ct(commit=True, zone=1),),
                           cookie(CookieKind.FIREWALL, rule_id("no-ip-match"))))
    names = {rule_id("no-ip-match"): "no-ip-match"}
    with SwitchConnection(target_of(lab).openflow("br0")) as connection:
        table = SwitchFlowTable(connection)
        table.push([BundleOp(m, False) for m in good])
        before = _sorted_dump(lab.ofctl(["dump-flows", "--no-stats"]))
        ops = [BundleOp(m, True) for m in good[:5]] + [BundleOp(bad, False, Named(bad, names))]
        with pytest.raises(BundleRefused) as refused:
            table.push(ops)
    message = str(refused.value)
    assert "rule no-ip-match" in message and "OFPBAC_MATCH_INCONSISTENT" in message, message
    assert "nothing was applied" in message
    assert _sorted_dump(lab.ofctl(["dump-flows", "--no-stats"])) == before
