"""The fleet store's changes as ovsdbapp commands: each runs inside one transaction (`FleetStore._run`).

A command reads the IDL's copy of the store and changes rows in the transaction; `verify` makes the
server refuse the transaction if a column it read changed meanwhile (the IDL then runs the command
again on fresh data, and it decides again). Raising refuses the whole transaction.
"""

from __future__ import annotations

import time
from typing import Any

from ovsmgr.fleet.state import DesiredSwitch, PolicySource, StoreConflict, StoreError, file_digest
from ovsmgr.southbound.ovslib import idlutils, ovs_command


def _fleet_row(api: Any, txn: Any) -> Any:
    """The one Fleet row, made when the store is new."""
    rows = list(api.tables["Fleet"].rows.values())
    if rows:
        return rows[0]
    row = txn.insert(api.tables["Fleet"])
    row.generation = 0
    row.role_generation = 0
    return row


class _PolicyRows:
    """Policy rows by digest, made in the transaction when missing; each file's text is one File row,
    by its digest, shared by every policy that has it (a policy names its files by position)."""

    def __init__(self, api: Any, txn: Any) -> None:
        self.api = api
        self.txn = txn
        self.policies = {str(row.digest): row for row in api.tables["Policy"].rows.values()}
        self.files = {str(row.digest): row for row in api.tables["File"].rows.values()}

    def get(self, source: PolicySource) -> Any:
        policy = self.policies.get(source.digest)
        if policy is not None:
            return policy
        digests = {i: file_digest(text) for i, (_name, text) in enumerate(source.files)}
        for i, digest in digests.items():
            if digest not in self.files:
                file = self.files[digest] = self.txn.insert(self.api.tables["File"])
                file.digest = digest
                file.text = source.files[i][1]
        policy = self.policies[source.digest] = self.txn.insert(self.api.tables["Policy"])
        policy.digest = source.digest
        policy.names = {i: name for i, (name, _text) in enumerate(source.files)}
        policy.files = {i: self.files[digest] for i, digest in digests.items()}
        policy.file_digests = digests
        policy.runtime = source.runtime
        return policy


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class WriteGeneration(ovs_command.BaseCommand):
    """A new generation: every switch's desired policy, switches gone from the fleet removed."""

    def __init__(self, api: Any, expected: int, switches: dict[str, DesiredSwitch], rollout: dict[str, str]) -> None:
        super().__init__(api)
        self.expected = expected
        self.switches = switches
        self.rollout = rollout

    def run_idl(self, txn: Any) -> None:
        fleet = _fleet_row(self.api, txn)
        fleet.verify("generation")
        if int(fleet.generation) != self.expected:
            raise StoreConflict(f"the fleet is at generation {fleet.generation} now, not {self.expected}: "
                                "someone else applied meanwhile; plan again")
        generation = self.expected + 1
        rows = _PolicyRows(self.api, txn)
        existing = {str(row.name): row for row in self.api.tables["Switch"].rows.values()}
        for name, want in self.switches.items():
            policy = rows.get(want.policy)
            row = existing.get(name)
            if row is None:
                row = txn.insert(self.api.tables["Switch"])
                row.name = name
            row.bridge = want.bridge
            row.datapath_id = [f"{want.datapath_id:#018x}"] if want.datapath_id is not None else []
            row.policy = policy
            row.policy_digest = want.policy.digest
            row.desired_generation = generation
        for name, row in existing.items():
            if name not in self.switches:
                row.delete()
        fleet.generation = generation
        fleet.rollout = {**self.rollout, "generation": str(generation)}
        self.result = generation


class Release(ovs_command.BaseCommand):
    """The rollout reached these switches: each gets the policy the fleet wants for it now."""

    def __init__(self, api: Any, names: list[str], generation: int) -> None:
        super().__init__(api)
        self.names = names
        self.generation = generation

    def run_idl(self, txn: Any) -> None:
        fleet = _fleet_row(self.api, txn)
        fleet.verify("generation")
        if int(fleet.generation) != self.generation:
            raise StoreConflict(f"the fleet moved on to generation {fleet.generation}: this rollout of "
                                f"generation {self.generation} stops")
        for name in self.names:
            row = idlutils.row_by_value(self.api.idl, "Switch", "name", name, None)
            if row is None:
                raise StoreError(f"switch {name} is not in the store")
            row.verify("policy")
            row.release = row.policy
            row.release_digest = row.policy_digest
            row.released_generation = self.generation


class SetColumns(ovs_command.BaseCommand):
    """Columns of one row, found by an indexed column (nothing if the row is gone)."""

    def __init__(self, api: Any, table: str, key: tuple[str, str], columns: dict[str, Any]) -> None:
        super().__init__(api)
        self.table = table
        self.key = key
        self.columns = columns

    def run_idl(self, txn: Any) -> None:
        row = idlutils.row_by_value(self.api.idl, self.table, self.key[0], self.key[1], None)
        if row is None:
            return
        for column, value in self.columns.items():
            if value is None:
                value = []
            current = getattr(row, column)
            if current != value and current != [value]:
                setattr(row, column, value)


class SetFleet(ovs_command.BaseCommand):
    def __init__(self, api: Any, columns: dict[str, Any]) -> None:
        super().__init__(api)
        self.columns = columns

    def run_idl(self, txn: Any) -> None:
        fleet = _fleet_row(self.api, txn)
        for column, value in self.columns.items():
            setattr(fleet, column, value)


class TakeOver(ovs_command.BaseCommand):
    """A controller that got the controller lock becomes the active one: the next role generation
    (its OpenFlow master election id) and its name. Run under the lock, so only the holder can."""

    def __init__(self, api: Any, name: str, fleet_wide: bool) -> None:
        super().__init__(api)
        self.name = name
        self.fleet_wide = fleet_wide

    def run_idl(self, txn: Any) -> None:
        fleet = _fleet_row(self.api, txn)
        fleet.verify("role_generation")
        fleet.role_generation = int(fleet.role_generation) + 1
        if self.fleet_wide:  # an agent is active for its switch only: its row's served_by says so
            fleet.active_controller = [self.name]
        self.result = int(fleet.role_generation)


class ReleasePolicies(ovs_command.BaseCommand):
    """New policies for some switches (runtime changes), wanted and released at once, as the next
    fleet generation; the other switches keep theirs."""

    def __init__(self, api: Any, expected: int, policies: dict[str, PolicySource]) -> None:
        super().__init__(api)
        self.expected = expected
        self.policies = policies

    def run_idl(self, txn: Any) -> None:
        fleet = _fleet_row(self.api, txn)
        fleet.verify("generation")
        if int(fleet.generation) != self.expected:
            raise StoreConflict(f"the fleet is at generation {fleet.generation} now, not {self.expected}: "
                                "someone else changed it meanwhile; try again")
        generation = self.expected + 1
        rows = _PolicyRows(self.api, txn)
        for name, source in self.policies.items():
            row = idlutils.row_by_value(self.api.idl, "Switch", "name", name, None)
            if row is None:
                raise StoreError(f"switch {name} is not in the store")
            policy = rows.get(source)
            row.policy = row.release = policy
            row.policy_digest = row.release_digest = source.digest
            row.desired_generation = generation
            row.released_generation = generation
        fleet.generation = generation
        self.result = generation
