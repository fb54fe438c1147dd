"""Controller mode's engine without a switch: runtime changes give exactly the full compile's flows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsmgr.compiler import compile_policy
from ovsmgr.controller.engine import Engine
from ovsmgr.controller.policydata import resolve_data
from ovsmgr.controller.runtime import ChangeError, load_changes
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.policy.generate import generate_policy
from ovsmgr.southbound.openflow import FlowMod
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.incremental import IncrementalFlows
from ovsmgr.switch.plan import desired_flows
from tests.support.fakes import FakeTable, ops_text

ROOT = Path(__file__).resolve().parents[2]

POLICY = """
version: 1
switch:
  bridge: br0
  datapath: netdev
  ports: {inside: {ofport: 1}, outside: {ofport: 2}}
  links: [[inside, outside]]
zones:
  inside: {ports: [inside]}
  outside: {ports: [outside]}
addresses:
  blocklist: [203.0.113.0/24]
  admins: [10.0.0.10, 10.0.0.11]
  servers: [198.51.100.0/28, 198.51.100.64/28]
  everyone: ["@admins", 10.0.0.0/24]
firewall:
  default: drop
  rules:
    - {name: blocked, from: inside, src: "@blocklist", action: drop, log: true}
    - {name: admin-ssh, from: inside, src: "@admins", dst: "@servers", services: [tcp/22, tcp/2222], action: allow}
    - {name: no-telnet, from: inside, services: [tcp/23], action: reject}
    - {name: web, from: inside, src: "@everyone", services: [tcp/80, tcp/443], action: allow}
    - {name: dns, from: inside, services: [udp/53], action: allow, stateful: false}
    - {name: spare, from: outside, services: [tcp/25], action: allow, enabled: false}
    - {name: inbound-web, from: outside, dst: "@servers", services: [tcp/80], action: allow}
"""


def make_engine(tmp_path: Path, text: str = POLICY) -> tuple[Engine, FakeTable]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    table = FakeTable()
    engine = Engine([str(path)], SwitchTarget("unix:/nonexistent", None, tmp_path), table, record=False)
    engine.load()
    engine.reconcile()
    return engine, table


def expected(engine: Engine) -> list[FlowMod]:
    return sorted(desired_flows(compile_policy(resolve_data(engine.data, "<check>")).flows).values())


def assert_consistent(engine: Engine, table: FakeTable) -> None:
    want = expected(engine)
    assert sorted(engine.entries.values()) == want
    assert sorted(table.flows.values()) == want


@pytest.mark.parametrize("name", ["gateway", "microseg", "seed-firewall", "seed-nat"])
def test_incremental_build_is_the_full_compile(name: str) -> None:
    policy = load_policy([ROOT / "policies" / f"{name}.yaml"])
    assert IncrementalFlows(policy).sorted_flows() == sorted(desired_flows(compile_policy(policy).flows).values())


OPS = st.sampled_from([
    ("set", "blocklist", ["10.0.0.10"], []), ("set", "blocklist", [], ["203.0.113.0/24"]),
    ("set", "admins", ["10.0.0.12"], []), ("set", "admins", [], ["10.0.0.10"]),
    ("set", "servers", ["198.51.100.128/28", "2001:db8::/64"], []), ("set", "servers", [], ["198.51.100.0/28"]),
    ("set", "admins", [], ["10.0.0.11", "10.0.0.10", "10.0.0.12"]),
    ("add", {"name": "new-drop", "from": "inside", "src": "10.0.0.99", "action": "drop"}, "web", None),
    ("add", {"name": "new-allow", "from": "inside", "services": ["tcp/8080"], "action": "allow"}, None, None),
    ("add", {"name": "first", "from": "inside", "services": ["tcp/80"], "action": "drop"}, "blocked", None),
    ("add", {"name": "after-dns", "from": "inside", "dst": "@servers", "action": "allow"}, None, "dns"),
    ("remove", "web"), ("remove", "blocked"), ("remove", "new-drop"),
    ("enable", "spare"), ("disable", "spare"), ("disable", "admin-ssh"), ("enable", "admin-ssh"),
    ("disable", "blocked"),
    ("add", {"name": "ftp", "from": "inside", "services": ["tcp/21"], "helper": "ftp", "action": "allow"},
     "web", None),
    ("add", {"name": "tftp", "from": "inside", "services": ["udp/69"], "helper": "tftp", "action": "allow"},
     None, None),
    ("remove", "ftp"), ("disable", "tftp"), ("enable", "tftp"),
])


def run_op(engine: Engine, op: tuple) -> None:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "set":
        engine.set_members(op[1], op[2], op[3])
    elif kind == "add":
        engine.add_rule(op[1], op[2], op[3])
    elif kind == "remove":
        engine.remove_rule(op[1])
    else:
        engine.set_rule_enabled(op[1], kind == "enable")


@settings(max_examples=30, deadline=None)
@given(st.lists(OPS, min_size=1, max_size=6))
def test_any_sequence_of_runtime_changes_gives_the_full_compile(tmp_path_factory, ops) -> None:  # type: ignore[no-untyped-def]
    engine, table = make_engine(tmp_path_factory.mktemp("engine"))
    for op in ops:
        try:
            run_op(engine, op)
        except ChangeError as exc:
            assert exc.status in (404, 409), exc  # removing what is gone, adding what exists
        assert_consistent(engine, table)
    reloaded = Engine(engine.files, engine.target, table, record=False)
    reloaded.load()
    assert sorted(reloaded.entries.values()) == sorted(engine.entries.values())


def test_a_set_change_pushes_only_the_flows_of_the_rules_using_the_set(tmp_path: Path) -> None:
    engine, table = make_engine(tmp_path)
    before = dict(table.flows)
    result = engine.set_members("blocklist", ["192.0.2.7"], [])
    assert result.rules_recompiled == 1 and result.counts == {"add": 1, "delete": 0, "change": 0}
    pushed = ops_text(table.pushes[-1])
    assert len(pushed) == 1 and pushed[0].startswith("+ ") and "nw_src=192.0.2.7" in pushed[0], pushed
    assert {k: v for k, v in table.flows.items() if k in before} == before
    engine.set_members("blocklist", [], ["192.0.2.7"])
    assert table.flows == before


def test_bad_changes_are_refused_with_4xx_and_change_nothing(tmp_path: Path) -> None:
    engine, table = make_engine(tmp_path)
    flows, pushes = dict(table.flows), len(table.pushes)
    refused = [
        (lambda: engine.set_members("blocklist", ["10.0.0.300"], []), 400, "10.0.0.300"),
        (lambda: engine.set_members("nosuchset", ["10.0.0.1"], []), 404, "nosuchset"),
        (lambda: engine.remove_rule("nosuchrule"), 404, "nosuchrule"),
        (lambda: engine.add_rule({"name": "web", "from": "inside", "action": "drop"}, None, None), 409, "web"),
        (lambda: engine.add_rule({"name": "x", "from": "nowhere", "action": "drop"}, None, None), 400, "nowhere"),
        (lambda: engine.add_rule({"name": "y", "from": "inside", "action": "maybe"}, None, None), 400, "maybe"),
        (lambda: engine.add_rule({"name": "z", "from": "inside", "action": "drop"}, "nosuch", None), 404, "nosuch"),
        (lambda: engine.set_members("admins", ["2001:db8::1"], ["10.0.0.10", "10.0.0.11"]), 400, "IPv6"),
    ]
    for call, status, word in refused:
        with pytest.raises(ChangeError) as info:
            call()
        assert info.value.status == status and word in str(info.value) + " ".join(info.value.diagnostics)
    assert table.flows == flows and len(table.pushes) == pushes
    assert engine.changes.empty and not (tmp_path / "ovsmgr-br0.runtime.json").exists()
    assert engine.status.update_failures == len(refused)


def test_nat_target_blocked_by_a_set_change_is_refused(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, (ROOT / "policies" / "gateway.yaml").read_text())
    with pytest.raises(ChangeError) as info:
        engine.set_members("blocklist", ["200.200.200.200"], [])
    assert info.value.status == 400 and "masquerade" in str(info.value)


def test_runtime_changes_survive_a_restart_and_are_kept_apart_from_the_files(tmp_path: Path) -> None:
    engine, table = make_engine(tmp_path)
    engine.set_members("blocklist", ["192.0.2.7"], [])
    engine.set_rule_enabled("spare", True)
    engine.add_rule({"name": "late", "from": "outside", "services": ["udp/514"], "action": "drop"}, None, "spare")
    saved = load_changes(tmp_path / "ovsmgr-br0.runtime.json")
    assert saved.describe() == ["set blocklist + 192.0.2.7", "rule late added after spare", "rule spare enabled"]
    restarted = Engine(engine.files, engine.target, table, record=False)
    restarted.load()
    assert restarted.reconcile().empty
    assert "192.0.2.7" in restarted.data["addresses"]["blocklist"]
    assert (tmp_path / "policy.yaml").read_text() == POLICY


def test_reload_refuses_a_broken_file_and_keeps_the_old_policy(tmp_path: Path) -> None:
    from ovsmgr.policy import PolicyError

    engine, table = make_engine(tmp_path)
    flows = dict(table.flows)
    (tmp_path / "policy.yaml").write_text(POLICY.replace("from: outside, services: [tcp/25]", "from: mars"))
    with pytest.raises(PolicyError):
        engine.reload()
    assert table.flows == flows and engine.status.reload_failures == 1 and engine.status.last_error
    (tmp_path / "policy.yaml").write_text(POLICY.replace("tcp/23", "tcp/24"))
    result = engine.reload()
    assert result.counts["add"] >= 1 and result.counts["delete"] >= 1
    assert_consistent(engine, table)


def test_an_update_in_a_large_policy_recompiles_only_the_changed_rule() -> None:
    text = generate_policy(2000, "mixed").replace(
        "firewall:\n  default: drop\n  rules:\n",
        "addresses:\n  blocklist: [192.0.2.1]\nfirewall:\n  default: drop\n  rules:\n"
        "    - {name: blocklist, from: inside, src: \"@blocklist\", action: drop}\n")
    policy = load_policy_text(text, "big.yaml")
    inc = IncrementalFlows(policy)
    rules = list(policy.rules)
    changed = load_policy_text(text.replace("[192.0.2.1]", "[192.0.2.1, 192.0.2.2]"), "big.yaml").rules[0]
    pending = inc.prepare([changed, *rules[1:]], {"blocklist"})
    assert pending.rules_recompiled == 1 and len(pending.changes.added) == 1
    inc.commit(pending)
    assert inc.sorted_flows() == sorted(desired_flows(compile_policy(load_policy_text(
        text.replace("[192.0.2.1]", "[192.0.2.1, 192.0.2.2]"), "big.yaml")).flows).values())


def _queued_together(engine: Engine, calls: Sequence[tuple[str, tuple[object, ...]]]) -> list[object]:
    """Submit every call while the committer waits for the engine's lock, so they form one
    group; returns each call's result or the exception it raised."""
    with engine.lock:
        tickets = [engine.queue(method.lstrip("_"), *args) for method, args in calls]
    out: list[object] = []
    for ticket in tickets:
        try:
            out.append(ticket.wait(30))
        except Exception as exc:
            out.append(exc)
    return out


def test_changes_queued_together_are_one_push_one_write_and_the_full_compile(tmp_path: Path,
                                                                             monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import ovsmgr.controller.updates as engine_module

    engine, table = make_engine(tmp_path)
    writes: list[object] = []
    real_save = engine_module.save_changes
    monkeypatch.setattr(engine_module, "save_changes", lambda path, changes: (writes.append(changes),
                                                                              real_save(path, changes)))
    pushes, generation = len(table.pushes), engine.status.generation
    results = _queued_together(engine, [
        ("_set_members", ("blocklist", ["192.0.2.7"], [])),
        ("_set_members", ("blocklist", ["10.0.0.300"], [])),  # refused alone
        ("_set_rule_enabled", ("spare", True)),
        ("_set_members", ("admins", ["10.0.0.12"], [])),
        ("_add_rule", ({"name": "late", "from": "outside", "services": ["udp/514"], "action": "drop"},
                       None, "spare")),
    ])
    assert isinstance(results[1], ChangeError) and results[1].status == 400
    good = [r for i, r in enumerate(results) if i != 1]
    assert {r.generation for r in good} == {generation + 1}  # type: ignore[attr-defined]
    assert len(table.pushes) == pushes + 1 and len(writes) == 1
    assert_consistent(engine, table)
    assert load_changes(tmp_path / "ovsmgr-br0.runtime.json").describe() == [
        "set admins + 10.0.0.12", "set blocklist + 192.0.2.7", "rule late added after spare", "rule spare enabled"]
    assert engine.status.update_failures == 1


def test_a_group_that_cancels_out_pushes_nothing_but_answers_every_change(tmp_path: Path) -> None:
    engine, table = make_engine(tmp_path)
    flows, pushes = dict(table.flows), len(table.pushes)
    results = _queued_together(engine, [("_set_members", ("blocklist", ["192.0.2.7"], [])),
                                        ("_set_members", ("blocklist", [], ["192.0.2.7"]))])
    assert all(not isinstance(r, Exception) for r in results)
    # set changes queued together are made as one: each answer says what they did together
    assert [r.counts for r in results] == [{"add": 0, "delete": 0, "change": 0}] * 2  # type: ignore[attr-defined]
    assert table.flows == flows and len(table.pushes) == pushes
    assert_consistent(engine, table)


def test_a_refused_push_refuses_the_whole_group_and_the_engine_is_what_the_switch_has(tmp_path: Path) -> None:
    engine, table = make_engine(tmp_path)
    flows, entries = dict(table.flows), dict(engine.entries)
    real_push = table.push

    def refuse(lines: Sequence[str]) -> None:
        raise RuntimeError("OFPBFC_MSG_FAILED")

    table.push = refuse  # type: ignore[method-assign]
    results = _queued_together(engine, [("_set_members", ("blocklist", ["192.0.2.7"], [])),
                                        ("_set_rule_enabled", ("spare", True))])
    assert all(isinstance(r, ChangeError) and r.status == 502 for r in results)
    assert table.flows == flows and engine.entries == entries and engine.changes.empty
    assert not (tmp_path / "ovsmgr-br0.runtime.json").exists()
    assert engine.status.update_failures == 2
    table.push = real_push  # type: ignore[method-assign]
    engine.set_members("blocklist", ["192.0.2.7"], [])  # the next change goes through as usual
    assert_consistent(engine, table)


def test_set_changes_queued_together_are_validated_and_compiled_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import ovsmgr.controller.updates as engine_module

    engine, table = make_engine(tmp_path)
    resolved: list[object] = []
    real = engine_module.policydata.resolve_part
    monkeypatch.setattr(engine_module.policydata, "resolve_part",
                        lambda *a, **k: (resolved.append(a), real(*a, **k))[1])
    calls = [("_set_members", ("blocklist", [f"192.0.2.{i}"], [])) for i in range(10, 30)]
    calls.insert(5, ("_set_members", ("blocklist", ["192.0.2.999"], [])))  # refused alone
    results = _queued_together(engine, calls)
    assert isinstance(results[5], ChangeError) and results[5].status == 400
    assert len(resolved) == 1, "twenty members: one validation"
    assert all(r.rules_recompiled == 1 for i, r in enumerate(results) if i != 5)  # type: ignore[attr-defined]
    assert_consistent(engine, table)
    assert engine.set_list("blocklist")["blocklist"]["members"][-1] == "192.0.2.29"


def test_set_changes_that_do_not_validate_together_are_made_one_by_one(tmp_path: Path) -> None:
    engine, table = make_engine(tmp_path)
    # the second leaves admin-ssh's sources IPv6 only, its destinations IPv4: refused, alone
    results = _queued_together(engine, [
        ("_set_members", ("admins", ["10.0.0.12"], [])),
        ("_set_members", ("admins", ["2001:db8::1"], ["10.0.0.10", "10.0.0.11", "10.0.0.12"])),
        ("_set_members", ("blocklist", ["192.0.2.50"], [])),
    ])
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception), results
    assert isinstance(results[1], ChangeError) and results[1].status == 400 and "IPv6" in str(results[1])
    assert engine.set_list("admins")["admins"]["members"] == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    assert "192.0.2.50" in engine.set_list("blocklist")["blocklist"]["members"]
    assert_consistent(engine, table)
