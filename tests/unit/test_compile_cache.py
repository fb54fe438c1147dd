"""The compile cache gives exactly the full compile's flows, whatever was edited between two runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsmgr.compiler import compile_policy
from ovsmgr.controller.policydata import resolve_data
from ovsmgr.policy import load_policy_text
from ovsmgr.policy.generate import generate_policy
from ovsmgr.switch import cache
from ovsmgr.switch.plan import desired_of
from tests.support.policies import two_ports
from tests.unit.test_controller_engine import POLICY

Data = dict[str, Any]


def base_data() -> Data:
    data: Data = load_policy_text(POLICY, "p.yaml").model.model_dump(by_alias=True, exclude_none=True)
    return data


def full(data: Data) -> list[object]:
    return sorted(desired_of(compile_policy(resolve_data(data, "<full>"))).values())


def rules(data: Data) -> list[dict[str, Any]]:
    return data["firewall"]["rules"]  # type: ignore[no-any-return]


def _set(name: str, add: list[str], remove: list[str]):  # type: ignore[no-untyped-def]
    def edit(data: Data) -> None:
        members = [m for m in data["addresses"][name] if m not in remove]
        data["addresses"][name] = members + [a for a in add if a not in members] or ["192.0.2.250"]
    return edit


def _add(rule: dict[str, Any], at: int):  # type: ignore[no-untyped-def]
    def edit(data: Data) -> None:
        if all(r["name"] != rule["name"] for r in rules(data)):
            rules(data).insert(min(at, len(rules(data))), dict(rule))
    return edit


def _remove(name: str):  # type: ignore[no-untyped-def]
    def edit(data: Data) -> None:
        if len(rules(data)) > 1:
            data["firewall"]["rules"] = [r for r in rules(data) if r["name"] != name]
    return edit


def _toggle(name: str, key: str, values: tuple[Any, Any]):  # type: ignore[no-untyped-def]
    def edit(data: Data) -> None:
        for r in rules(data):
            if r["name"] == name:
                r[key] = values[1] if r.get(key, values[0]) == values[0] else values[0]
                if r.get("shadow") and r.get("limit"):
                    r["limit"] = None  # a shadow rule takes no limit (an error): the edit makes none
    return edit


def _swap(data: Data) -> None:
    """Two neighbouring rules change places (their levels, and maybe everyone's after, move)."""
    if len(rules(data)) > 2:
        rules(data)[0], rules(data)[1] = rules(data)[1], rules(data)[0]


def _nat(data: Data) -> None:
    data["nat"] = [] if data.get("nat") else [{"name": "masq", "type": "snat", "from": "inside", "to": "outside",
                                               "translate_to": "198.51.100.200"}]


def _nat_limit(data: Data) -> None:
    for rule in data.get("nat", []):
        rule["limit"] = None if rule.get("limit") else "300/s"


def _default(data: Data) -> None:
    data["firewall"]["default"] = "reject" if data["firewall"]["default"] == "drop" else "drop"


EDITS = st.sampled_from([
    _set("blocklist", ["10.0.0.10"], []), _set("blocklist", [], ["203.0.113.0/24"]),
    _set("admins", ["10.0.0.12"], []), _set("admins", [], ["10.0.0.10"]),
    _set("servers", ["198.51.100.128/28"], ["198.51.100.0/28"]),
    _add({"name": "new-drop", "from": "inside", "src": "10.0.0.99", "action": "drop"}, 3),
    _add({"name": "new-allow", "from": "inside", "services": ["tcp/8080"], "action": "allow"}, 99),
    _add({"name": "first", "from": "inside", "services": ["tcp/80"], "action": "drop"}, 0),
    _add({"name": "any-servers", "from": "inside", "dst": "@servers", "action": "allow"}, 5),
    _remove("web"), _remove("blocked"), _remove("new-drop"), _remove("first"),
    _toggle("spare", "enabled", (False, True)), _toggle("admin-ssh", "enabled", (True, False)),
    _toggle("dns", "stateful", (False, True)), _toggle("no-telnet", "action", ("reject", "drop")),
    _toggle("web", "log", (False, True)), _toggle("web", "limit", (None, "100/s")),
    _toggle("dns", "limit", (None, "2mbit/s")), _swap, _nat, _nat_limit, _default,
    # r16737 and r39033 have the same rule id, so the same conjunction id base: a collision
    _add({"name": "r16737", "from": "inside", "src": ["10.0.0.70", "10.0.0.71"], "services": ["tcp/70", "tcp/71"],
          "action": "drop"}, 1),
    _add({"name": "r39033", "from": "inside", "src": ["10.0.0.72", "10.0.0.73"], "services": ["tcp/72", "tcp/73"],
          "action": "drop"}, 4),
    _remove("r16737"), _toggle("r39033", "action", ("drop", "reject")),
    _add({"name": "ftp", "from": "inside", "services": ["tcp/21"], "helper": "ftp", "action": "allow"}, 2),
    _add({"name": "tftp", "from": "inside", "services": ["udp/69"], "helper": "tftp", "action": "allow"}, 99),
    _remove("ftp"), _toggle("ftp", "enabled", (True, False)),
    _toggle("no-telnet", "shadow", (False, True)), _toggle("dns", "shadow", (True, False)),
])


@settings(max_examples=40, deadline=None)
@given(st.lists(EDITS, min_size=1, max_size=8))
def test_the_cached_compile_is_the_full_compile_after_any_edits(tmp_path_factory, edits) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("cache") / "ovsmgr-br0.cache"
    data = base_data()
    cache.save(path, policy := resolve_data(data, "<p>"), cache.compile_with_cache(policy, None))
    for edit in edits:
        edit(data)
        policy = resolve_data(copy.deepcopy(data), "<p>")
        compiled = cache.compile_with_cache(policy, path)
        assert compiled.flows.sorted_flows() == full(data)
        cache.save(path, policy, compiled)


def test_one_edited_rule_of_many_is_the_only_rule_compiled(tmp_path: Path) -> None:
    text = generate_policy(2000, "mixed")
    path = tmp_path / "ovsmgr-br0.cache"
    first = cache.compile_with_cache(policy := load_policy_text(text, "big.yaml"), path)
    assert not first.from_cache and first.rules_compiled == len(policy.rules)
    cache.save(path, policy, first)
    again = cache.compile_with_cache(load_policy_text(text, "big.yaml"), path)
    assert again.from_cache and again.rules_compiled == 0
    line = next(line for line in text.splitlines() if "services: [tcp/" in line)
    edited_text = text.replace(line, line.replace("tcp/", "udp/"), 1)
    edited = cache.compile_with_cache(policy := load_policy_text(edited_text, "big.yaml"), path)
    assert edited.from_cache and 1 <= edited.rules_compiled <= 3, edited.rules_compiled
    assert edited.flows.sorted_flows() == sorted(desired_of(compile_policy(policy)).values())


@pytest.mark.parametrize("damage", ["garbage", "context", "code"])
def test_a_cache_that_does_not_fit_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               damage: str) -> None:
    path = tmp_path / "ovsmgr-br0.cache"
    data = base_data()
    policy = resolve_data(data, "<p>")
    cache.save(path, policy, cache.compile_with_cache(policy, None))
    if damage == "garbage":
        path.write_bytes(b"\x00not a cache")
    elif damage == "context":
        data["switch"]["ports"]["inside"]["ofport"] = 7
        data["switch"]["ports"]["outside"]["ofport"] = 8
        policy = resolve_data(data, "<p>")
    else:
        monkeypatch.setattr(cache, "code_version", lambda: "another ovsmgr")
    compiled = cache.compile_with_cache(policy, path)
    assert not compiled.from_cache
    assert compiled.flows.sorted_flows() == full(data)


def test_a_conjunction_id_collision_recompiles_all_only_when_a_change_touches_it(tmp_path: Path) -> None:
    """At 100,000 rules a policy has about two collisions: edits elsewhere must stay incremental."""
    def drop(name: str, n: int) -> str:
        return (f"    - {{name: {name}, from: inside, src: [10.1.{n}.1, 10.1.{n}.2], "
                f"services: [tcp/{1000 + n}, tcp/{2000 + n}], action: drop}}\n")
    names = ["r16737", *(f"other-{i}" for i in range(20)), "r39033"]  # r16737 and r39033: one rule id
    text = two_ports("firewall:\n  rules:\n" + "".join(drop(name, i) for i, name in enumerate(names)))
    path = tmp_path / "ovsmgr-br0.cache"
    first = cache.compile_with_cache(policy := load_policy_text(text, "p.yaml"), path)
    held = first.flows.conj["r16737"]
    assert first.flows.passed_over == set(held) and first.flows.conj["r39033"] != held
    cache.save(path, policy, first)
    other, holder, mover = drop("other-5", 6), drop("r16737", 0), drop("r39033", 21)
    for old, new, incremental in (
        (other, other.replace("tcp/2006]", "tcp/3006]"), True),      # no part in the collision
        (holder, holder.replace("tcp/2000]", "tcp/3000]"), True),     # keeps the id r39033 moved past
        (mover, mover.replace("tcp/2021]", "tcp/3021]"), False),   # recompiled alone it would take it
        (holder, holder.replace("10.1.0.1, 10.1.0.2", "2001:db8::1, 2001:db8::2"), False),  # frees it (IPv6)
        (holder, "", False),                                         # frees it: removed
    ):
        edited = text.replace(old, new)
        compiled = cache.compile_with_cache(policy := load_policy_text(edited, "p.yaml"), path)
        assert edited != text and compiled.from_cache is incremental, new
        assert compiled.rules_compiled == (1 if incremental else len(policy.rules)), new
        assert compiled.flows.sorted_flows() == sorted(desired_of(compile_policy(policy)).values())
