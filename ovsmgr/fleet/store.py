"""The fleet's store: ovsmgr's own OVSDB database (`ovsmgr-fleet.ovsschema`), usually a Raft cluster.

Reached through the `ovs` library's IDL under ovsdbapp, as ovsmgr reaches every OVSDB: the IDL
speaks to the cluster's leader (`leader_only`), follows it when it changes, and re-sends a
transaction the leader did not commit. Every write is one ovsdbapp transaction run with
`check_error=True`; what goes wrong comes back as `StoreError` naming the store.

Tables (docs/fleet.md has the whole schema):

- `Fleet` (one row): the fleet's `generation`, the rollout in progress or last; the active one of the
  fleet's controllers (`active_controller`, the holder of `CONTROLLER_LOCK`) and its OpenFlow
  master election id (`role_generation`, one more at every take-over);
- `Policy`: a policy's files (names and File rows, in merge order) and runtime changes, by digest;
- `File`: one file's text, by its digest, once however many policies have it;
- `Switch`: per switch, what the fleet file wants (`policy`, `desired_generation`), what the rollout
  released to it (`release`, `released_generation`), and what was observed (`applied_*`,
  `connected`, `drifted`, `error`), each part written by its own writer.

A client may hold an OVSDB lock (`lock=`): then every transaction it makes asserts the lock, so a
client that lost it (a rollout or a controller that was partitioned away) can no longer write.
A client may watch one switch only (`switch=`): the server then sends it that switch's row, the
policies it names and their files, nothing else (conditional monitoring, as ovn-controller does).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from ovsmgr.fleet.state import (
    DATABASE,
    OBSERVED,
    SCHEMA_FILE,
    SCHEMA_VERSION,
    DesiredSwitch,
    PolicySource,
    StoreError,
    StoreState,
    opt,
    policy_of,
    switch_of,
)
from ovsmgr.fleet.storecmds import (
    Release,
    ReleasePolicies,
    SetColumns,
    SetFleet,
    TakeOver,
    WriteGeneration,
)
from ovsmgr.southbound.ovslib import connection, jsonrpc, ovs_command, ovs_idl, ovsdbapp_api, stream
from ovsmgr.southbound.tls import handshake_problem, needs_tls
from ovsmgr.southbound.tools import OvsToolError, transact

ROLLOUT_LOCK = "ovsmgr_rollout"
CONTROLLER_LOCK = "ovsmgr_controller"
"""Held by the active one of a fleet's controllers (`ovsmgr controller --fleet`); the others wait for it."""
DEFAULT_TIMEOUT = 30.0


class _Idl(connection.OvsdbIdl):
    """The IDL, telling the store of every change (in the IDL's thread)."""

    on_change: Callable[[], None] = staticmethod(lambda: None)

    def notify(self, event: Any, row: Any, updates: Any = None) -> None:
        self.on_change()


def probe(endpoints: Sequence[str], timeout: float, relays: bool = False) -> list[str]:
    """Why each endpoint cannot serve the fleet database (empty: at least one can); an OVSDB relay
    cannot unless `relays` (a client that talks to a cluster's leader only never connects to one)."""
    problems = []
    for endpoint in endpoints:
        error, strm = stream.Stream.open_block(stream.Stream.open(endpoint), int(timeout * 1000))
        if error:
            problems.append(f"{endpoint}: {_why(endpoint, error, timeout)}")
            continue
        rpc = jsonrpc.Connection(strm)
        try:
            deadline = time.monotonic() + timeout
            reply = transact(rpc, jsonrpc.Message.create_request("list_dbs", []), deadline, f"list_dbs at {endpoint}")
            model = ""
            if not reply.error and DATABASE in reply.result:
                # the model first: a relay that has not reached its cluster yet has no schema to give
                model = _model(rpc, deadline, endpoint)
                if model != "relay" or relays:
                    reply = transact(rpc, jsonrpc.Message.create_request("get_schema", [DATABASE]), deadline,
                                     f"get_schema at {endpoint}")
        except OvsToolError as exc:
            problems.append(f"{endpoint}: {_why(endpoint, 0, timeout) or exc}")
            continue
        finally:
            rpc.close()
        if model == "relay" and not relays:
            problems.append(f"{endpoint}: is an OVSDB relay; name the store's members (a relay's locks are "
                            "its own, not the cluster's: docs/fleet.md)")
        elif reply.error:
            problems.append(f"{endpoint}: {reply.error}")
        elif not isinstance(reply.result, dict):
            problems.append(f"{endpoint}: has no {DATABASE} database (create it: docs/fleet.md)")
        else:
            _check_version(endpoint, str(reply.result.get("version", "")))
            return []
    return problems


def _model(rpc: Any, deadline: float, endpoint: str) -> str:
    """How the server holds the fleet database, as its `_Server` database says: clustered, relay, ..."""
    select = {"op": "select", "table": "Database", "where": [["name", "==", DATABASE]], "columns": ["model"]}
    reply = transact(rpc, jsonrpc.Message.create_request("transact", ["_Server", select]), deadline,
                     f"_Server at {endpoint}")
    rows = reply.result[0].get("rows", []) if not reply.error and reply.result else []
    return str(rows[0]["model"]) if rows else ""


def _check_version(endpoint: str, version: str) -> None:
    """StoreError unless the store's schema has this ovsmgr's major version, saying what to do."""
    def major(v: str) -> int:
        return int(v.split(".")[0]) if v.split(".")[0].isdigit() else 0

    if major(version) < major(SCHEMA_VERSION):
        raise StoreError(f"the fleet store at {endpoint} has schema version {version}, this ovsmgr needs "
                         f"{SCHEMA_VERSION}: convert it in place (every row is kept) with `ovsdb-client convert "
                         f"{endpoint} {SCHEMA_FILE}` (docs/fleet.md, \"Upgrading the store\")")
    if major(version) > major(SCHEMA_VERSION):
        raise StoreError(f"the fleet store at {endpoint} has schema version {version}, newer than this "
                         f"ovsmgr's {SCHEMA_VERSION}: upgrade ovsmgr")


def _why(endpoint: str, error: int, timeout: float) -> str:
    """The reason a connection failed; for TLS, the handshake's own words (an unknown certificate)."""
    if needs_tls(endpoint):
        reason = handshake_problem(endpoint, timeout)
        if reason:
            return reason
    return os.strerror(error) if error > 0 else "connection closed"


class FleetStore:
    """A connection to the store; use it as a context manager."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, lock: str | None = None,
                 switch: str | None = None, on_change: Callable[[], None] | None = None,
                 leader_only: bool = True) -> None:
        self.endpoints = list(endpoints)
        self.where = ",".join(self.endpoints)
        self.timeout = timeout
        self.switch = switch
        problems = probe(self.endpoints, min(timeout, 10.0), relays=not leader_only)
        if problems:
            raise StoreError("cannot reach the fleet store: " + "; ".join(problems))
        helper = connection.idlutils.create_schema_helper(json.loads(SCHEMA_FILE.read_text()))
        helper.register_all()
        idl = _Idl(self.where, helper, leader_only=leader_only)
        self.idl = idl
        self.changed = threading.Condition()
        self._changes = 0  # how many changes `changed` was notified of
        self._conditions: dict[str, list[Any]] = {}  # watching one switch: the Policy and File rows asked for
        self._user_on_change = on_change or (lambda: None)
        idl.on_change = self._changed
        if lock is not None:
            idl.set_lock(lock)
        if switch is not None:
            idl.cond_change("Switch", [["name", "==", switch]])
            idl.cond_change("Policy", [False])
            idl.cond_change("File", [False])
        conn = connection.Connection(idl, timeout)
        api_class = type("FleetStoreIdl", (_Backend,), {})  # ovsdbapp keeps the connection on the class
        try:
            self._api = api_class(conn)
        except Exception as exc:
            conn.stop(timeout)
            raise StoreError(f"cannot connect to the fleet store at {self.where}: {exc}") from exc

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._api.ovsdb_connection.stop(self.timeout)

    # --- watching -------------------------------------------------------------------------------
    def _changed(self) -> None:
        if self.switch is not None:
            self._follow_policies()
        with self.changed:
            self._changes += 1
            self.changed.notify_all()
        self._user_on_change()

    def _follow_policies(self) -> None:
        """Watching one switch: ask for the policies its row names and the files those name, and only
        those (a policy is in `state` once all its files arrived). Rows are asked for by digest, not
        by `_uuid`: an ovsdb-server 3.1.0 leader crashed (SIGSEGV) on the next transaction after a
        client asked for Policy rows by `_uuid`."""
        policies = {str(digest) for row in self.idl.tables["Switch"].rows.values()
                    for digest in (row.policy_digest, row.release_digest) if digest}
        files = {str(digest) for row in self.idl.tables["Policy"].rows.values() for digest in row.file_digests.values()}
        for table, digests in (("Policy", policies), ("File", files)):
            wanted: list[Any] = [["digest", "==", digest] for digest in sorted(digests)] or [False]
            if wanted != self._conditions.get(table):
                self._conditions[table] = wanted
                self.idl.cond_change(table, wanted)

    def wait(self, until: Callable[[StoreState], bool], timeout: float) -> StoreState:
        """The store's state once `until` holds; StoreError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            # Never read the state holding `changed`: the IDL's thread calls `_changed` (which takes it)
            # while it holds the connection's lock, which `state` takes: the other order would deadlock.
            with self.changed:
                seen = self._changes
            state = self.state()
            if until(state):
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(f"the fleet store did not reach the expected state in {timeout:g} s")
            with self.changed:
                if self._changes == seen:
                    self.changed.wait(min(remaining, 1.0))

    @property
    def has_lock(self) -> bool:
        return bool(self.idl.has_lock)

    def wait_lock(self, timeout: float) -> None:
        """Wait until this client holds its lock; StoreError naming the lock if another client keeps it."""
        try:
            self.wait(lambda _state: self.has_lock, timeout)
        except StoreError:
            raise StoreError(f"the fleet store's lock {self.idl.lock_name} is held by another client "
                             f"(another rollout or controller) for more than {timeout:g} s") from None

    # --- reading --------------------------------------------------------------------------------
    def state(self) -> StoreState:
        """Everything this client sees, as plain data."""
        with self._api.ovsdb_connection.lock:
            tables = self._api.tables
            texts = {str(row.digest): str(row.text) for row in tables["File"].rows.values()}
            policies = {row.uuid: policy for row in tables["Policy"].rows.values()
                        if (policy := policy_of(row, texts)) is not None}
            switches = {row.name: switch_of(row, policies) for row in tables["Switch"].rows.values()}
            fleet = next(iter(tables["Fleet"].rows.values()), None)
            by_digest = {p.digest: p for p in policies.values()}
            if fleet is None:
                return StoreState(switches=switches, policies=by_digest)
            return StoreState(int(fleet.generation), int(fleet.role_generation), opt(fleet.active_controller),
                              dict(fleet.rollout), switches, by_digest)

    # --- writing --------------------------------------------------------------------------------
    def _run(self, what: str, command: ovs_command.BaseCommand) -> Any:
        """One transaction. A lock holder whose connection moved to a new leader holds no lock until
        that leader grants it again: it waits for it (once), and if another client got it meanwhile
        the write is refused."""
        for attempt in (1, 2):
            try:
                with self._api.transaction(check_error=True, log_errors=False) as txn:
                    txn.add(command)
                break
            except StoreError:
                raise
            except Exception as exc:
                if attempt == 1 and self.idl.lock_name and not self.has_lock:
                    self.wait_lock(self.timeout)
                    continue
                raise StoreError(f"fleet store {self.where}: {what} failed: {exc}") from exc
        return command.result

    def write_generation(self, expected: int, switches: dict[str, DesiredSwitch],
                         rollout: dict[str, str]) -> int:
        """Record what every switch should run as generation `expected + 1`, in one transaction;
        switches not named leave the fleet. StoreConflict if the generation is no longer `expected`."""
        return int(self._run("writing a new generation", WriteGeneration(self._api, expected, switches, rollout)))

    def release_policies(self, expected: int, policies: dict[str, PolicySource]) -> int:
        """Give these switches these policies (runtime changes) at once, as generation `expected + 1`."""
        return int(self._run("writing runtime changes", ReleasePolicies(self._api, expected, policies)))

    def release(self, names: Iterable[str], generation: int) -> None:
        """Let the rollout through to these switches: each gets the policy the fleet wants now."""
        self._run(f"releasing generation {generation}", Release(self._api, list(names), generation))

    def observe(self, name: str, **columns: Any) -> None:
        """Write what was observed of one switch (`OBSERVED` columns)."""
        unknown = set(columns) - set(OBSERVED)
        if unknown:
            raise ValueError(f"not observed columns: {sorted(unknown)}")
        self._run(f"recording the state of {name}", SetColumns(self._api, "Switch", ("name", name), columns))

    def take_over(self, name: str, fleet_wide: bool = True) -> int:
        """This client (holding `CONTROLLER_LOCK`, or an agent its switch's lock) is the active controller
        now: the new role generation (the fleet's, so a switch never sees it go back)."""
        return int(self._run("taking over as the active controller", TakeOver(self._api, name, fleet_wide)))

    def set_rollout(self, rollout: dict[str, str]) -> None:
        self._run("recording the rollout", SetFleet(self._api, {"rollout": rollout}))


class _Backend(ovs_idl.Backend, ovsdbapp_api.API):
    """ovsdbapp's generic commands (db_*) and transactions, for the fleet schema."""

    schema = DATABASE


