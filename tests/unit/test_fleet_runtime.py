"""Runtime changes to fleet switches: validated per switch, refused for all when one does not fit,
recorded by the digest a controller records, kept on new files by the next generation."""

from __future__ import annotations

import hashlib
import json

import pytest

from ovsmgr.controller.runtime import ChangeError, RuntimeChanges
from ovsmgr.fleet.runtime import (
    add_rule,
    changes_of,
    file_data,
    plan_change,
    set_enabled,
    set_members,
    with_runtime,
)
from ovsmgr.fleet.state import DesiredSwitch, PolicySource, StoreState, SwitchRow
from tests.support.policies import two_ports


def source(*ports: int, addresses: str = "") -> PolicySource:
    rules = "".join(f"    - {{name: tcp{p}, from: inside, services: [tcp/{p}], action: allow}}\n" for p in ports)
    text = two_ports(f"{addresses}firewall:\n  default: drop\n  rules:\n{rules}")
    return PolicySource(f"digest-{'-'.join(map(str, ports))}", (("sites/edge.yaml", text),))


def state(**switches: PolicySource) -> StoreState:
    rows = {name: SwitchRow(name, "br0", release=src.digest, policy=src.digest) for name, src in switches.items()}
    return StoreState(3, switches=rows, policies={src.digest: src for src in switches.values()})


def test_a_change_that_does_not_fit_one_switch_is_refused_for_all() -> None:
    store = state(a=source(8080), b=source(9090))
    with pytest.raises(ChangeError) as info:
        plan_change(store, ["a", "b"], set_enabled("tcp9090", False))
    assert info.value.diagnostics == ["switch a: no rule 'tcp9090'"]
    with pytest.raises(ChangeError, match="switch a: no address set 'blocked'"):
        plan_change(store, ["a"], set_members("blocked", ["203.0.113.7"], []))
    with pytest.raises(ChangeError, match="rule tcp8080 exists already"):
        plan_change(store, ["a"], add_rule({"name": "tcp8080", "from": "inside", "action": "allow"}, None, None))
    with pytest.raises(ChangeError, match="nowhere"):
        plan_change(store, ["a"], add_rule({"name": "x", "from": "nowhere", "action": "allow"}, None, None))


def test_each_switch_gets_its_files_with_its_changes_under_the_controllers_digest() -> None:
    base = source(8080, addresses="addresses: {blocked: [192.0.2.1]}\n")
    out = plan_change(state(a=base), ["a"], set_members("blocked", ["203.0.113.7"], []))
    new = out["a"]
    assert new.files == base.files and changes_of(new).sets["blocked"].add == ("203.0.113.7",)
    file_digest, _ = file_data(base)
    runtime = json.dumps(changes_of(new).describe())
    assert new.digest == hashlib.sha256(f"{file_digest}\n{runtime}".encode()).hexdigest()  # Engine._digest
    again = plan_change(StoreState(4, switches={"a": SwitchRow("a", "br0", release=new.digest)},
                                   policies={new.digest: new}), ["a"], set_members("blocked", [], ["203.0.113.7"]))
    assert changes_of(again["a"]).empty and again["a"].digest == file_digest and again["a"].runtime == ""


def test_the_next_generation_keeps_runtime_changes_on_the_new_files() -> None:
    changed = PolicySource("d-runtime", source(8080).files,
                           json.dumps(RuntimeChanges().set_enabled("tcp8080", False).to_json()))
    store = StoreState(2, switches={"a": SwitchRow("a", "br0", policy="d-runtime"), "b": SwitchRow("b", "br0")},
                       policies={"d-runtime": changed})
    desired = {"a": DesiredSwitch("br0", None, source(8080, 7070)), "b": DesiredSwitch("br0", None, source(9090))}
    out = with_runtime(desired, store)
    assert changes_of(out["a"].policy).enabled == {"tcp8080": False}
    assert out["a"].policy.files == source(8080, 7070).files and out["a"].policy.digest != source(8080, 7070).digest
    assert out["b"] == desired["b"]

