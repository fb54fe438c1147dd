"""Flow lookup the way the OVS classifier does it, conjunctive matches included.

In a table the highest-priority matching flow wins; flows of equal priority are
tried in a fixed order (by match) so a trace is deterministic. A flow whose only
actions are `conjunction(id, k/n)` is a clause: at each priority, if no ordinary
flow matches and every clause 1..n of some conjunction id matches, the table is
looked up again with `conj_id=id` (clause flows ignored), and the flow found
applies. If no conjunction completes, lookup goes on at lower priorities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ovsmgr.compiler.flows import Conjunction, Flow

Reader = Callable[[str], int]
"""Reads a field (packet header or metadata) of the packet being looked up; absent fields read 0."""


@dataclass(frozen=True)
class Hit:
    flow: Flow
    conjunction: int | None = None
    """The conjunction id that completed, when the flow is a `conj_id` flow."""


def is_clause(flow: Flow) -> bool:
    return bool(flow.actions) and all(isinstance(a, Conjunction) for a in flow.actions)


def flow_matches(flow: Flow, read: Reader) -> bool:
    return all(item.matches(read(item.field)) for item in flow.match.items)


def _order(flow: Flow) -> tuple[int, tuple[tuple[str, int, int], ...]]:
    return (-flow.priority, tuple((i.field, i.value, -1 if i.mask is None else i.mask) for i in flow.match.items))


PriorityGroups = tuple[tuple[int, tuple[Flow, ...]], ...]


def group_by_priority(flows: Iterable[Flow]) -> PriorityGroups:
    groups: dict[int, list[Flow]] = {}
    for flow in sorted(flows, key=_order):
        groups.setdefault(flow.priority, []).append(flow)
    return tuple((priority, tuple(members)) for priority, members in groups.items())


@dataclass(frozen=True)
class FlowTables:
    """The flows of a flow set, grouped by table and priority, ready for lookups."""

    tables: Mapping[int, PriorityGroups] = field(default_factory=dict)

    @staticmethod
    def of(flows: Iterable[Flow]) -> FlowTables:
        by_table: dict[int, list[Flow]] = {}
        for flow in flows:
            by_table.setdefault(int(flow.table), []).append(flow)
        return FlowTables({table: group_by_priority(members) for table, members in by_table.items()})

    def lookup(self, table: int, read: Reader, extra: Sequence[Flow] = ()) -> Hit | None:
        """The flow `table` applies to the packet, with `extra` (learned) flows added in."""
        groups = self.tables.get(table, ())
        if extra:
            groups = group_by_priority([f for _, members in groups for f in members] + list(extra))
        return lookup_groups(groups, read)


def lookup_groups(groups: PriorityGroups, read: Reader) -> Hit | None:
    for _priority, members in groups:
        matching = [f for f in members if flow_matches(f, read)]
        ordinary = [f for f in matching if not is_clause(f)]
        if ordinary:
            return Hit(ordinary[0])
        for conj_id in _completed_conjunctions(matching):
            hit = _conj_id_lookup(groups, read, conj_id)
            if hit is not None:
                return hit
    return None


def _completed_conjunctions(clauses: Sequence[Flow]) -> list[int]:
    seen: dict[int, set[int]] = {}
    needed: dict[int, int] = {}
    for flow in clauses:
        for action in flow.actions:
            assert isinstance(action, Conjunction)
            seen.setdefault(action.id, set()).add(action.clause)
            needed[action.id] = action.n_clauses
    return sorted(i for i, got in seen.items() if got >= set(range(1, needed[i] + 1)))


def _conj_id_lookup(groups: PriorityGroups, read: Reader, conj_id: int) -> Hit | None:
    def with_conj_id(name: str) -> int:
        return conj_id if name == "conj_id" else read(name)

    for _priority, members in groups:
        for flow in members:
            if not is_clause(flow) and flow_matches(flow, with_conj_id):
                return Hit(flow, conj_id if flow.match.get("conj_id") is not None else None)
    return None
