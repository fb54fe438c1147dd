"""Policy data for controller mode: the files as plain data, and validation of a part of it.

A runtime change is validated by the policy front end itself, not by a second
implementation of its rules: the effective policy data is cut down to what
the change can affect (the changed firewall rules, every NAT rule, the address
sets they use, zones, services, switch) and resolved like a file. The errors a
change can cause are all inside that part: per-rule errors of the changed
rules, NAT overlaps (all NAT rules are in), NAT targets blocked by a changed
drop rule. So the answer is the full validation's, at the cost of the part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ovsmgr.policy import Diagnostic, PolicyError, ResolvedPolicy, Severity, Span, load_policy
from ovsmgr.policy.loader import Document, SourceMap
from ovsmgr.policy.resolve import resolve_documents

PolicyData = dict[str, Any]


def load_files(files: Sequence[str | Path]) -> tuple[ResolvedPolicy, PolicyData]:
    """The files resolved (raises `PolicyError` with file:line:column diagnostics) and as data."""
    policy = load_policy(list(files))
    return policy, policy_data(policy)


def policy_data(policy: ResolvedPolicy) -> PolicyData:
    return policy.model.model_dump(by_alias=True, exclude_none=True)


def address_sets(data: PolicyData) -> dict[str, list[str]]:
    return data.get("addresses", {})


def firewall_rules(data: PolicyData) -> list[dict[str, Any]]:
    return data.get("firewall", {}).get("rules", [])


def nat_rules(data: PolicyData) -> list[dict[str, Any]]:
    return data.get("nat", [])


def resolve_data(data: PolicyData, label: str) -> ResolvedPolicy:
    """Resolve policy data that has no file; diagnostics name `label` as their source."""
    source = SourceMap()
    source.values[()] = Span(label, 1, 1)
    return resolve_documents([Document(label, data, source)])


def errors_of(exc: PolicyError) -> list[str]:
    return [d.message for d in exc.diagnostics if d.severity is Severity.ERROR]


def set_refs(value: object) -> list[str]:
    """Set names an address list (`"@x"`, a list, None) refers to directly."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [i[1:] for i in items if isinstance(i, str) and i.startswith("@")]


def sets_including(data: PolicyData, names: Iterable[str]) -> set[str]:
    """`names` and every set that includes one of them, however deeply."""
    found = set(names)
    addresses: dict[str, list[str]] = address_sets(data)
    grew = True
    while grew:
        grew = False
        for name, members in addresses.items():
            if name not in found and found.intersection(set_refs(members)):
                found.add(name)
                grew = True
    return found


def sets_used(data: PolicyData, rules: Iterable[dict[str, Any]]) -> set[str]:
    """Sets the rules refer to, with the sets those include, however deeply."""
    addresses: dict[str, list[str]] = address_sets(data)
    todo = [s for r in rules for key in ("src", "dst") for s in set_refs(r.get(key))]
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        todo += set_refs(addresses.get(name, []))
    return found


class RuleRefs:
    """Which firewall rules refer to which address sets (directly), to find what a set change touches."""

    def __init__(self, data: PolicyData) -> None:
        self.by_set: dict[str, set[str]] = {}
        for rule in firewall_rules(data):
            self.add(rule)

    def add(self, rule: dict[str, Any]) -> None:
        for key in ("src", "dst"):
            for name in set_refs(rule.get(key)):
                self.by_set.setdefault(name, set()).add(rule["name"])

    def remove(self, rule: dict[str, Any]) -> None:
        for key in ("src", "dst"):
            for name in set_refs(rule.get(key)):
                self.by_set.get(name, set()).discard(rule["name"])

    def rules_using(self, data: PolicyData, set_name: str) -> set[str]:
        return {r for s in sets_including(data, [set_name]) for r in self.by_set.get(s, ())}


def resolve_part(data: PolicyData, rules: list[dict[str, Any]], extra_sets: Iterable[str], label: str) -> ResolvedPolicy:
    """Resolve the part of `data` a change can affect: `rules` (firewall rule data, in policy
    order), every NAT rule, and the sets they use (plus `extra_sets`). Raises `PolicyError`."""
    nat = nat_rules(data)
    used = sets_used(data, [*rules, *nat]) | set(extra_sets)
    addresses = address_sets(data)
    part = dict(data)
    part["addresses"] = {k: v for k, v in addresses.items() if k in used}
    part["firewall"] = {**data.get("firewall", {}), "rules": rules}
    return resolve_data(part, label)


def diagnostics_text(diagnostics: Iterable[Diagnostic]) -> list[str]:
    return [str(d) for d in diagnostics]
