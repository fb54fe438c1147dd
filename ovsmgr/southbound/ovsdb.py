"""OVSDB access for ovsmgr, through ovsdbapp.

Every public method of :class:`SwitchDB` is one ovsdbapp transaction run with
``check_error=True``; whatever goes wrong comes back as :class:`OvsdbError`
naming the endpoint and the operation, never as a log line.

Two ovsdbapp traits shape this module:

* ``ovsdbapp.backend.ovs_idl.Backend`` keeps its connection on the *class*, so
  a second ``OvsdbIdl(...)`` to another endpoint silently reuses the first
  connection. Each :class:`SwitchDB` therefore builds a private subclass.
* ``OvsVsctlTransaction`` (the default transaction of the Open_vSwitch schema)
  waits for ovs-vswitchd to apply the change, but only *logs* an interface that
  failed to come up. :meth:`SwitchDB.ensure_port` checks the ofport itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from ovsmgr.southbound.ctzones import (
    OWNER_KEY,
    SCHEMA,
    DatapathCapabilities,
    EnsureDatapath,
    SetZoneTimeouts,
    ZoneTimeouts,
)
from ovsmgr.southbound.ovslib import (
    connection,
    idlutils,
    impl_idl,
    jsonrpc,
    ovs_command,
    stream,
    transaction,
    vs_commands,
)

DEFAULT_PROTOCOLS: tuple[str, ...] = ("OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15")
TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface", "Controller", "Manager", "SSL", "Datapath", "CT_Zone",
          "CT_Timeout_Policy")
"""What ovsmgr reads and writes; only these are fetched at connect (a switch's whole database can be
large: QoS, mirrors, flow tables' settings, every interface's statistics)."""


class OvsdbError(Exception):
    """An OVSDB operation failed; the message names the endpoint and operation."""


class _EnsureSystemRow(ovs_command.BaseCommand):
    """Create the single Open_vSwitch row if missing and merge other_config keys.

    This is what ``ovs-vsctl --no-wait init`` does; ovs-vswitchd reads some keys
    (``dpdk-init``) only when it starts, so they must be written before that.
    """

    def __init__(self, api: Any, other_config: dict[str, str]) -> None:
        super().__init__(api)
        self.other_config = other_config

    def run_idl(self, txn: Any) -> None:
        table = self.api.tables[SCHEMA]
        rows = list(table.rows.values())
        row = rows[0] if rows else txn.insert(table)
        for key, value in self.other_config.items():
            row.setkey("other_config", key, value)


class _EnsureBridge(ovs_command.BaseCommand):
    """Create or update a bridge, writing fail_mode only when it changes.

    Rewriting fail_mode while no controller is configured makes ovs-vswitchd
    wipe the bridge's flow table, so an unchanged value must not be written.
    """

    def __init__(
        self, api: Any, name: str, datapath_type: str, fail_mode: str, protocols: list[str]
    ) -> None:
        super().__init__(api)
        self.name = name
        self.datapath_type = datapath_type
        self.fail_mode = fail_mode
        self.protocols = protocols

    def run_idl(self, txn: Any) -> None:
        bridge = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name, None)
        if bridge is None:
            add = vs_commands.AddBridgeCommand(self.api, self.name, True, self.datapath_type)
            add.run_idl(txn)
            bridge = self.api.tables["Bridge"].rows[add.result]
            bridge.protocols = self.protocols
            bridge.fail_mode = self.fail_mode
            return
        if bridge.datapath_type != self.datapath_type:
            bridge.datapath_type = self.datapath_type
        if sorted(bridge.protocols) != sorted(self.protocols):
            bridge.protocols = self.protocols
        if list(bridge.fail_mode) != [self.fail_mode]:
            bridge.verify("fail_mode")
            bridge.fail_mode = self.fail_mode


class _EnsurePort(ovs_command.BaseCommand):
    """Create a one-interface port on a bridge or bring its interface up to date."""

    def __init__(
        self, api: Any, bridge: str, name: str, iface_columns: dict[str, Any]
    ) -> None:
        super().__init__(api)
        self.bridge = bridge
        self.name = name
        self.iface_columns = iface_columns

    def run_idl(self, txn: Any) -> None:
        port = idlutils.row_by_value(self.api.idl, "Port", "name", self.name, None)
        if port is None:
            add = vs_commands.AddPortCommand(
                self.api, self.bridge, self.name, False, **self.iface_columns
            )
            add.run_idl(txn)
            return
        owner = _bridge_of_port(self.api, port)
        if owner != self.bridge:
            raise OvsdbError(f"port {self.name} already exists on bridge {owner}")
        iface = idlutils.row_by_value(self.api.idl, "Interface", "name", self.name)
        for column, value in self.iface_columns.items():
            if _scalar(getattr(iface, column), None) != value:
                setattr(iface, column, value)


class _SetSsl(ovs_command.BaseCommand):
    """`ovs-vsctl set-ssl KEY CERT CA`: one SSL row, referred to by the Open_vSwitch row."""

    def __init__(self, api: Any, private_key: str, certificate: str, ca_cert: str) -> None:
        super().__init__(api)
        self.files = {"private_key": private_key, "certificate": certificate, "ca_cert": ca_cert}

    def run_idl(self, txn: Any) -> None:
        system = next(iter(self.api.tables[SCHEMA].rows.values()))
        ssl = txn.insert(self.api.tables["SSL"])
        for column, path in self.files.items():
            setattr(ssl, column, path)
        system.ssl = ssl


def _bridge_of_port(api: Any, port: Any) -> str | None:
    for bridge in api.tables["Bridge"].rows.values():
        if any(p.uuid == port.uuid for p in bridge.ports):
            return str(bridge.name)
    return None


def _schema_helper(endpoint: str, timeout: float) -> Any:
    """``idlutils.get_schema_helper`` with the connect bounded by ``timeout``.

    ovsdbapp's version connects with no deadline, so a silent ``tcp:`` peer hangs it.
    """
    err, strm = stream.Stream.open_block(stream.Stream.open(endpoint), int(timeout * 1000))
    if err:
        raise OvsdbError(f"cannot connect to OVSDB at {endpoint}: {os.strerror(err)}")
    rpc = jsonrpc.Connection(strm)
    try:
        err, reply = rpc.transact_block(jsonrpc.Message.create_request("get_schema", [SCHEMA]))
    finally:
        rpc.close()
    if err or reply.error:
        problem = os.strerror(err) if err else reply.error
        raise OvsdbError(f"cannot read the {SCHEMA} schema from {endpoint}: {problem}")
    return idlutils.create_schema_helper(reply.result)


def _connect(endpoint: str, timeout: float) -> Any:
    """Open an ovsdbapp API object bound to one endpoint (see module docstring)."""
    helper = _schema_helper(endpoint, timeout)
    for table in TABLES:
        helper.register_table(table)
    idl = connection.OvsdbIdl(endpoint, helper)
    conn = connection.Connection(idl, timeout)
    api_class = type("SwitchDBIdl", (impl_idl.OvsdbIdl,), {})
    try:
        return api_class(conn)
    except Exception as exc:
        conn.stop(timeout)
        raise OvsdbError(f"cannot connect to OVSDB at {endpoint}: {exc}") from exc


class SwitchDB:
    """The Open_vSwitch database of one switch, reached at ``unix:PATH`` or ``tcp:H:P``."""

    def __init__(self, endpoint: str, timeout: float = 10) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._api = _connect(endpoint, timeout)

    def __enter__(self) -> SwitchDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the IDL thread; the object is unusable afterwards."""
        self._api.ovsdb_connection.stop(self.timeout)

    def _run(self, what: str, commands: Iterable[Any], wait_vswitchd: bool = True) -> list[Any]:
        """Run commands as one transaction and return their results.

        ``wait_vswitchd=False`` uses a plain transaction that does not wait for
        ovs-vswitchd to pick the change up: needed before the daemon runs.
        """
        api = self._api
        try:
            if wait_vswitchd:
                txn = api.create_transaction(check_error=True, log_errors=False)
            else:
                txn = transaction.Transaction(
                    api, api.ovsdb_connection, self.timeout, check_error=True, log_errors=False
                )
            cmds = [txn.add(c) for c in commands]
            txn.commit()
        except OvsdbError:
            raise
        except Exception as exc:
            raise OvsdbError(f"{self.endpoint}: {what} failed: {exc}") from exc
        return [c.result for c in cmds]

    def _read(self, what: str, cmd: Any) -> Any:
        """Run one read-only command against the IDL cache."""
        try:
            return cmd.execute(check_error=True, log_errors=False)
        except Exception as exc:
            raise OvsdbError(f"{self.endpoint}: {what} failed: {exc}") from exc

    def init_system(self, other_config: dict[str, str] | None = None) -> None:
        """Initialise the database (like ``ovs-vsctl --no-wait init``) before vswitchd runs."""
        self._run("init", [_EnsureSystemRow(self._api, other_config or {})], wait_vswitchd=False)

    def ensure_bridge(
        self,
        name: str,
        datapath_type: str,
        fail_mode: str = "secure",
        protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    ) -> None:
        """Create the bridge or update it in place; fail_mode is written only if it differs."""
        cmd = _EnsureBridge(self._api, name, datapath_type, fail_mode, list(protocols))
        self._run(f"ensure bridge {name}", [cmd])

    def ensure_openflow14(self, bridge: str) -> None:
        """Let the bridge speak OpenFlow 1.4 (ovsmgr's bundles need it) if its protocols are set
        without it; an unset list is Open vSwitch's default, which includes it."""
        protocols = self._read(f"get protocols of {bridge}", self._api.db_get("Bridge", bridge, "protocols"))
        if protocols and "OpenFlow14" not in protocols:
            cmd = self._api.db_set("Bridge", bridge, ("protocols", [*protocols, "OpenFlow14"]))
            self._run(f"allow OpenFlow14 on {bridge}", [cmd])

    def ensure_port(
        self,
        bridge: str,
        name: str,
        ofport_request: int,
        iface_type: str = "",
        options: dict[str, str] | None = None,
    ) -> int:
        """Create or update a port and return the ofport vswitchd gave it.

        Raises when the interface did not come up (ofport -1) or did not get the
        requested number, with the Interface ``error`` column in the message.
        """
        columns = {"type": iface_type, "ofport_request": ofport_request, "options": options or {}}
        self._run(f"ensure port {name}", [_EnsurePort(self._api, bridge, name, columns)])
        row = self._read(f"read interface {name}", self._api.db_list(
            "Interface", [name], columns=["ofport", "error"]))[0]
        ofport = _scalar(row["ofport"], -1)
        if ofport != ofport_request:
            raise OvsdbError(
                f"{self.endpoint}: port {name} got ofport {ofport}, not {ofport_request}: "
                f"{row['error'] or 'no error reported by ovs-vswitchd'}"
            )
        return int(ofport)

    def set_controllers(self, bridge: str, targets: list[str]) -> None:
        """Replace the bridge's controller list (``[]`` removes all)."""
        cmd = self._api.set_controller(bridge, targets) if targets else self._api.del_controller(bridge)
        self._run(f"set controllers of {bridge}", [cmd])

    def add_manager(self, target: str) -> None:
        """An OVSDB listener (`pssl:PORT[:ADDR]`) or manager connection, served by an ovsdb-server
        started with `--remote=db:Open_vSwitch,Open_vSwitch,manager_options` (as OVS's scripts do)."""
        self._run(f"add manager {target}", [self._api.add_manager(target)], wait_vswitchd=False)

    def set_ssl(self, private_key: str, certificate: str, ca_cert: str) -> None:
        """The switch's TLS files (the SSL table), for its OpenFlow and OVSDB listeners and connections."""
        self._run("set the switch's TLS files", [_SetSsl(self._api, private_key, certificate, ca_cert)],
                  wait_vswitchd=False)

    def get_controllers(self, bridge: str) -> list[str]:
        return sorted(self._read(f"get controllers of {bridge}", self._api.get_controller(bridge)))

    def get_external_ids(self, bridge: str) -> dict[str, str]:
        ids = self._read(
            f"get external_ids of {bridge}", self._api.db_get("Bridge", bridge, "external_ids")
        )
        return dict(ids)

    def set_external_ids(self, bridge: str, ids: dict[str, str]) -> None:
        """Merge keys into the Bridge row's external_ids; other keys are kept. ovs-vswitchd does not
        read them, so the transaction does not wait for it to reconfigure."""
        cmd = self._api.db_set("Bridge", bridge, ("external_ids", dict(ids)))
        self._run(f"set external_ids of {bridge}", [cmd], wait_vswitchd=False)

    def ofports(self, bridge: str) -> dict[str, int]:
        """Interface name to ofport for every interface of the bridge (-1 if down)."""
        names = self._read(f"list interfaces of {bridge}", self._api.list_ifaces(bridge))
        rows = self._read(
            f"read interfaces of {bridge}",
            self._api.db_list("Interface", names, columns=["name", "ofport"]),
        )
        return {r["name"]: _scalar(r["ofport"], -1) for r in rows}

    def bridge_info(self, bridge: str) -> dict[str, Any]:
        """A plain-data summary of a bridge, for status output and tests."""
        row = self._read(
            f"read bridge {bridge}",
            self._api.db_list(
                "Bridge", [bridge],
                columns=["datapath_type", "fail_mode", "protocols", "external_ids"],
            ),
        )[0]
        return {
            "name": bridge,
            "datapath_type": row["datapath_type"],
            "fail_mode": _scalar(row["fail_mode"], None),
            "protocols": sorted(row["protocols"]),
            "external_ids": dict(row["external_ids"]),
            "ports": self.ofports(bridge),
            "controllers": self.get_controllers(bridge),
        }

    def datapath_capabilities(self, dp_type: str, owner: str) -> dict[str, str]:
        """The capabilities ovs-vswitchd reports for a datapath type (`system`, `netdev`), from its
        Datapath row; the row is created (owned by `owner`) if there is none, and then read until
        ovs-vswitchd has filled it in (empty if it never does)."""
        self._run(f"ensure the {dp_type} Datapath row", [EnsureDatapath(self._api, dp_type, owner)])
        deadline = time.monotonic() + self.timeout
        while True:
            caps = self._read(f"read the {dp_type} datapath's capabilities", DatapathCapabilities(self._api, dp_type))
            if caps or time.monotonic() > deadline:
                return caps or {}
            time.sleep(0.05)

    def set_zone_timeouts(self, dp_type: str, zone: int | None, timeouts: dict[str, int], owner: str) -> None:
        """Set the timeout policy of conntrack zone `zone` (CT_Zone in the datapath's Datapath row),
        owned by `owner`; remove every other one `owner` set. `zone=None` removes them all."""
        have = {key: value for key, value in self.zone_timeouts().items() if value[1].get(OWNER_KEY) == owner}
        if zone is None and not have and not self._owned_datapaths(owner):
            return
        if zone is not None and list(have) == [(dp_type, zone)] and have[(dp_type, zone)][0] == dict(timeouts):
            return
        what = f"set the timeout policy of conntrack zone {zone}" if zone is not None else "remove timeout policies"
        self._run(what, [SetZoneTimeouts(self._api, dp_type, zone, dict(timeouts), owner)])

    def _owned_datapaths(self, owner: str) -> list[str]:
        rows = self._read("read the Datapath rows", self._api.db_find("Datapath", ("external_ids", "=",
                                                                                  {OWNER_KEY: owner})))
        return [str(r["_uuid"]) for r in rows]

    def zone_timeouts(self) -> dict[tuple[str, int], tuple[dict[str, int], dict[str, str]]]:
        """Every CT_Zone with a timeout policy: (datapath type, zone) -> (timeouts, external_ids)."""
        return dict(self._read("read the Datapath rows", ZoneTimeouts(self._api)))

    def bridges(self) -> list[str]:
        """Names of every bridge in the database."""
        return sorted(self._read("list bridges", self._api.list_br()))

    def delete_bridge(self, name: str) -> None:
        """Remove a bridge (used only to undo a bridge ovsmgr itself created in a failed apply)."""
        self._run(f"delete bridge {name}", [self._api.del_br(name)])


def _scalar(value: Any, default: Any) -> Any:
    """OVSDB optional columns come back as ``[]`` or ``[x]``; return x or default."""
    if isinstance(value, list):
        return value[0] if value else default
    return value
