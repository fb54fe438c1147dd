"""An embedded lab switch: one OVS and one namespace per host, for machines with no OVS service.

The switch is an `ovsmgr.lab.instance.OvsInstance` in the lab's switch namespace;
this module adds the bridge, the hosts and the record of it all (``lab.json``).

Layout (``name`` is a prefix, so parallel labs do not clash)::

    netns <name>-sw      ovsdb-server + ovs-vswitchd, bridge (datapath_type=netdev),
                         one veth end per port, named after the policy's port
    netns <name>-<port>  a host: ``eth0`` (other veth end), its address, a default
                         route on-link through eth0 so all hosts share one L2 segment;
                         behind a trunk port also ``eth0.<vlan>`` per VLAN, tagged on
                         eth0 by ``dot1q.py`` (these kernels have no 802.1Q)

The kernel here has no openvswitch module, so only the userspace ``netdev``
datapath (optionally DPDK-accelerated) works, and each OVS needs a namespace
of its own (two userspace OVS in one namespace both create ``ovs-netdev``).

State lives in ``Lab.dir`` (``$OVSMGR_LAB_DIR`` or ``/run/ovsmgr/lab-<name>``):
OVS's run/db/log files and ``lab.json``, which records every namespace and
daemon as soon as it exists, so ``down``/``status``/``exec`` work from another
process and after a half-failed ``up``.

ARP: ovsmgr's pipeline learns each host's MAC from the ARP it sends (and, with
IPv6 NAT, from neighbour discovery). ``up`` has every IPv4 host send a gratuitous
ARP and every IPv6 host an unsolicited neighbour advertisement, but an empty
secure bridge drops them: call ``announce()`` again once a policy is applied.

Controllers: OVS inside ``<name>-sw`` cannot reach a controller on the host's
loopback, but the file system is shared between namespaces, so a controller on
the host should listen on a unix socket such as ``<dir>/controller.sock`` and
the bridge be given the target ``unix:<dir>/controller.sock`` (OVS connects
actively to ``unix:PATH`` targets), e.g. with ``SwitchDB.set_controllers``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ovsmgr.lab import netns
from ovsmgr.lab.instance import DAEMONS, OvsInstance
from ovsmgr.lab.spec import (
    Datapath,
    LabError,
    LabPort,
    LabSpec,
    lab_spec_from_policy,
    validate_spec,
)
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.switch.statefile import atomic_write

__all__ = [  # the spec half lives in lab.spec; these names are imported from here
    "Datapath", "Lab", "LabError", "LabPort", "LabSpec", "lab_spec_from_policy", "validate_spec",
]

STATE_FILE = "lab.json"
COMMAND_TIMEOUT = 60.0
VLAN_ROUTE_TABLE_BASE = 1000
"""A host's VLAN subinterface eth0.ID routes its address's traffic by table 1000 + ID (`Lab._add_vlan`)."""
LAB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


PROBE = Path(__file__).with_name("probe.py")
DOT1Q = Path(__file__).with_name("dot1q.py")
"""The traffic agent, run as a script (standard library only) where a process start is costly."""


def _arping_commands(ports: list[dict[str, Any]]) -> list[list[str]]:
    """A gratuitous ARP (``arping -U``) from each IPv4 host of a lab (ports as in lab.json), an
    unsolicited neighbour advertisement of its IPv6 addresses from each IPv6 host."""
    commands = []
    for port in ports:
        iface = ipaddress.ip_interface(port["address"]) if port.get("address") else None
        if iface is not None and iface.version == 4:
            commands.append(["ip", "netns", "exec", port["netns"], "arping", "-U", "-c", "1",
                             "-I", "eth0", str(iface.ip)])
        elif iface is not None:
            commands.append(["ip", "netns", "exec", port["netns"], sys.executable, "-I", "-S", str(PROBE),
                             "announce", "eth0"])
        commands += [["ip", "netns", "exec", port["netns"], "arping", "-U", "-c", "1", "-I", vlan_iface(vid),
                      str(ipaddress.ip_interface(address).ip)] for vid, address in port.get("vlans", ())]
    return commands


def vlan_iface(vid: int) -> str:
    """The host's subinterface for VLAN `vid` (`LabPort.vlans`)."""
    return f"eth0.{vid}"


class Lab:
    """A lab switch and its hosts, addressed by name; see the module docstring."""

    def __init__(self, name: str = "ovsmgr", directory: str | os.PathLike[str] | None = None):
        if not LAB_NAME.fullmatch(name):
            raise LabError(f"lab name {name!r} must match {LAB_NAME.pattern} (it names namespaces)")
        self.name = name
        default = os.environ.get("OVSMGR_LAB_DIR") or f"/run/ovsmgr/lab-{name}"
        self.dir = Path(directory or default)

    # -- paths and state ---------------------------------------------------------------------
    @property
    def switch_netns(self) -> str:
        return f"{self.name}-sw"

    @property
    def db_endpoint(self) -> str:
        return self._switch({}).db_endpoint

    def mgmt_socket(self, bridge: str) -> str:
        return self._switch({}).mgmt_socket(bridge)

    def _state_path(self) -> Path:
        return self.dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_path().read_text()))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise LabError(f"lab {self.name}: unreadable {self._state_path()}: {exc}") from exc

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write(self._state_path(), json.dumps(state, indent=2))

    def _switch(self, state: dict[str, Any]) -> OvsInstance:
        """The lab's OVS as ``state`` records it; every change it makes is recorded at once."""
        ovs = OvsInstance(self.dir, self.switch_netns, state.get("datapath") or "netdev",
                          dpdk_prefix=f"ovsmgr-{self.name}")
        ovs.pids = {d: int(p) for d, p in state.get("pids", {}).items()}
        ovs.netns_created = self.switch_netns in state.get("namespaces", [])

        def record() -> None:
            state["pids"] = dict(ovs.pids)
            namespaces = [n for n in state.get("namespaces", []) if n != self.switch_netns]
            state["namespaces"] = [self.switch_netns, *namespaces] if ovs.netns_created else namespaces
            self._save(state)

        ovs.on_change = record
        return ovs

    # -- running commands --------------------------------------------------------------------
    def exec(self, port: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in a port's host namespace; kwargs go to subprocess.run."""
        return subprocess.run(["ip", "netns", "exec", self._host_netns(port), *argv], **kwargs)

    def popen(self, port: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a background command (a server, a capture) in a port's host namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self._host_netns(port), *argv], **kwargs)

    def switch_exec(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in the switch namespace with OVS_RUNDIR etc. set (ovs-ofctl, -appctl)."""
        kwargs.setdefault("env", self._switch({}).env())
        return subprocess.run(["ip", "netns", "exec", self.switch_netns, *argv], **kwargs)

    def ofctl(self, args: Sequence[str], input: str | None = None) -> str:
        """``ovs-ofctl -O OpenFlow15 CMD unix:<mgmt> ARGS...`` for ``args = [CMD, *ARGS]``.

        Example: ``lab.ofctl(["add-flows", "-"], input=flows_text)``.
        """
        if not args:
            raise LabError("ofctl needs a command, e.g. ['dump-flows']")
        state = self._require_state()
        argv = ["ovs-ofctl", "-O", "OpenFlow15", args[0], f"unix:{self.mgmt_socket(state['bridge'])}",
                *args[1:]]
        return netns.run(argv, netns=self.switch_netns, env=self._switch(state).env(), input=input)

    def appctl(self, args: Sequence[str]) -> str:
        """What ``ovs-appctl -t <ovs-vswitchd ctl socket> ARGS...`` prints (without forking it)."""
        from ovsmgr.southbound.tools import OvsToolError, appctl

        target = self._switch(self._load()).appctl_target()
        if target is None:
            raise LabError(f"lab {self.name}: ovs-vswitchd is not running")
        try:
            return appctl(target, args[0], *args[1:], timeout=COMMAND_TIMEOUT)
        except OvsToolError as exc:
            raise LabError(str(exc)) from exc

    def restart_vswitchd(self) -> None:
        """Stop ovs-vswitchd and start a new one: its flows are gone, the database stays."""
        ovs = self._switch(self._require_state())
        errors = ovs.stop_daemon("ovs-vswitchd")
        if errors:
            raise LabError(f"lab {self.name}: " + "; ".join(errors))
        ovs.start_vswitchd()

    def _host_netns(self, port: str) -> str:
        for p in self._require_state()["ports"]:
            if p["name"] == port:
                return str(p["netns"])
        raise LabError(f"lab {self.name} has no port {port!r}")

    def _require_state(self) -> dict[str, Any]:
        state = self._load()
        if not state:
            raise LabError(f"lab {self.name} is not up (no {self._state_path()})")
        return state

    # -- up ----------------------------------------------------------------------------------
    def up(self, spec: LabSpec) -> dict[str, Any]:
        """Build the lab; on any failure undo everything done so far and raise LabError."""
        if spec.name != self.name:
            raise LabError(f"spec is for lab {spec.name!r}, this is lab {self.name!r}")
        validate_spec(spec)
        self._check_tools(spec.datapath)
        if self._load():
            raise LabError(f"lab {self.name} is already up (or half down): run down first")
        state: dict[str, Any] = {"name": self.name, "bridge": spec.bridge,
                                 "datapath": spec.datapath, "status": "starting",
                                 "namespaces": [], "pids": {}, "ports": []}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._save(state)
            self._switch(state).start()
            with SwitchDB(self.db_endpoint) as db:
                db.ensure_bridge(spec.bridge, datapath_type="netdev", fail_mode="secure")
                for port in spec.ports:
                    self._add_port(db, spec, port, state)
            self._announce_in_background(state["ports"])
        except Exception as exc:
            self._undo_failed_up(exc)
        except BaseException:
            self.down()  # interrupted: leave nothing behind, then let the interrupt through
            raise
        state["status"] = "up"
        self._save(state)
        return self.status()

    def _undo_failed_up(self, exc: Exception) -> NoReturn:
        try:
            self.down()
        except LabError as cleanup:
            raise LabError(f"lab {self.name}: up failed: {exc}; cleaning up also failed: "
                           f"{cleanup}") from exc
        raise LabError(f"lab {self.name}: up failed: {exc}") from exc

    def _check_tools(self, datapath: Datapath) -> None:
        missing = OvsInstance(self.dir, self.switch_netns, datapath).missing_tools()
        missing += [t for t in ("ethtool", "sysctl") if shutil.which(t) is None]
        if shutil.which("arping") is None:
            missing.append("arping (apt-get install -y iputils-arping)")
        if missing:
            raise LabError(f"lab {self.name}: missing tools: {', '.join(missing)}")

    def _add_port(self, db: SwitchDB, spec: LabSpec, port: LabPort,
                  state: dict[str, Any]) -> None:
        host_ns = f"{self.name}-{port.name}"
        sw_if = f"v-{port.name}" if spec.datapath == "dpdk" else port.name

        def created() -> None:  # recorded at once: one that already existed is not ours to delete
            state["namespaces"].append(host_ns)
            self._save(state)

        netns.add(host_ns, created)
        for key in ("all", "default"):
            netns.run(["sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"], netns=host_ns)
        netns.run(["ip", "-n", host_ns, "link", "add", "eth0", "address", port.mac,
                   "type", "veth", "peer", "name", sw_if, "netns", self.switch_netns])
        netns.run(["sysctl", "-qw", f"net/ipv6/conf/{sw_if}/disable_ipv6=1"], netns=self.switch_netns)
        for ns, dev in ((host_ns, "eth0"), (self.switch_netns, sw_if)):
            netns.run(["ethtool", "-K", dev, "tx", "off"], netns=ns)
            netns.run(["ip", "-n", ns, "link", "set", "dev", dev, "up"])
        if spec.datapath == "dpdk":
            options = {"dpdk-devargs": f"net_af_packet{port.ofport},iface={sw_if}"}
            iface_type = "dpdk"
        else:
            options, iface_type = {}, ""
        db.ensure_port(spec.bridge, port.name, port.ofport, iface_type, options)
        if port.address:
            self._address_host(host_ns, port.address)
        if port.vlans:
            self._add_vlans(host_ns, port)
        state["ports"].append({"name": port.name, "ofport": port.ofport, "netns": host_ns,
                               "address": port.address, "mac": port.mac,
                               "switch_iface": sw_if, "vlans": [list(v) for v in port.vlans]})
        self._save(state)

    def _address_host(self, host_ns: str, address: str) -> None:
        """Address eth0 and route everything else on-link, so hosts in different
        subnets reach each other through the bridge (NAT/firewall labs are one L2).
        An IPv4-only host has IPv6 off, so it sends nothing the test did not ask for."""
        iface = ipaddress.ip_interface(address)
        family = "-6" if iface.version == 6 else "-4"
        extra = ["nodad"] if iface.version == 6 else []
        if iface.version == 4:  # no IPv6 router/neighbour chatter in flow counters
            netns.run(["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"], netns=host_ns)
        netns.run(["ip", "-n", host_ns, family, "addr", "add", address, "dev", "eth0", *extra])
        netns.run(["ip", "-n", host_ns, family, "route", "add", "default", "dev", "eth0"])

    def _add_vlans(self, host_ns: str, port: LabPort) -> None:
        """A VLAN subinterface eth0.ID per VLAN of the host (`LabPort.vlans`): what the host sends from
        its address there leaves tagged (a source rule routes it by eth0.ID, on-link like eth0), what
        comes tagged ID is its. The kernels here have no 802.1Q, so each is a TAP device that
        `dot1q.py`, started here in the host's namespace, joins to eth0 (see there)."""
        for vid, address in port.vlans:
            dev, table = vlan_iface(vid), str(VLAN_ROUTE_TABLE_BASE + vid)
            ip = str(ipaddress.ip_interface(address).ip)
            netns.run(["ip", "-n", host_ns, "tuntap", "add", "dev", dev, "mode", "tap"])
            netns.run(["ip", "-n", host_ns, "link", "set", "dev", dev, "address", port.mac])
            netns.run(["sysctl", "-qw", f"net/ipv6/conf/{dev}/disable_ipv6=1"], netns=host_ns)
            netns.run(["ip", "-n", host_ns, "link", "set", "dev", dev, "up"])
            netns.run(["ip", "-n", host_ns, "-4", "addr", "add", address, "dev", dev])
            netns.run(["ip", "-n", host_ns, "-4", "rule", "add", "from", ip, "lookup", table])
            netns.run(["ip", "-n", host_ns, "-4", "route", "add", "default", "dev", dev, "table", table])
        argv = [sys.executable, "-I", "-S", str(DOT1Q), "eth0", *(f"{vid}={vlan_iface(vid)}" for vid, _ in port.vlans)]
        log = self.dir / f"dot1q-{port.name}.log"
        netns.run(["sh", "-c", f"{shlex.join(['ip', 'netns', 'exec', host_ns, *argv])} </dev/null >{shlex.quote(str(log))} 2>&1 &"])
        deadline = time.monotonic() + COMMAND_TIMEOUT / 4
        while not all(self._carrier(host_ns, vlan_iface(vid)) for vid, _ in port.vlans):
            if time.monotonic() > deadline:  # a TAP has carrier once the relay holds it
                raise LabError(f"host {port.name}: the VLAN relay did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)

    @staticmethod
    def _carrier(host_ns: str, dev: str) -> bool:
        return "NO-CARRIER" not in netns.run(["ip", "-n", host_ns, "-o", "link", "show", "dev", dev])

    # -- gratuitous ARP ----------------------------------------------------------------------
    def announce(self) -> None:
        """Make every IPv4 host send one gratuitous ARP, every IPv6 host an unsolicited neighbour
        advertisement of each of its addresses; returns once they are sent.

        The compiled pipeline learns address -> MAC bindings from ARP and, with IPv6 NAT,
        neighbour discovery (table MAC_BINDING) to set the destination MAC of DNAT'd and
        un-SNAT'd packets: a host that has said nothing yet (a DNAT target nobody talked to)
        would get frames addressed to the switch's MAC and ignore them. ``up`` announces too,
        but an empty secure bridge drops those frames, so run this after applying a policy.
        Takes about a second (arping's fixed interval); all hosts announce at once.
        """
        running = [(argv, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True))
                   for argv in _arping_commands(self._require_state()["ports"])]
        errors = []
        for argv, proc in running:
            try:
                out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            sent = "Sent 1 probe" in out or '"announced": ["' in out  # a down link sends 0, exits 0
            if proc.returncode != 0 or not sent:
                errors.append(f"{shlex.join(argv)} ({proc.returncode}): {' '.join(out.split())}")
        if errors:
            raise LabError(f"lab {self.name}: announcing the hosts failed: " + "; ".join(errors))

    def _announce_in_background(self, ports: list[dict[str, Any]]) -> None:
        """``announce`` without the wait, for ``up``: arping is detached (sh -c '... &')
        so no child is left to reap, and ``down`` kills it if it still runs."""
        for argv in _arping_commands(ports):
            netns.run(["sh", "-c", f"{shlex.join(argv)} </dev/null >/dev/null 2>&1 &"])

    # -- down / status -----------------------------------------------------------------------
    def down(self) -> None:
        """Stop the daemons, delete the namespaces (and with them the veths), drop the state.

        Idempotent; works after a half-failed ``up``. Every step is attempted and
        the failures are raised together at the end. Logs are kept in ``dir``.
        """
        state = self._load()
        switch = self._switch(state)
        errors = [e for daemon in DAEMONS for e in switch.stop_daemon(daemon)]
        for host_ns in reversed([n for n in state.get("namespaces", []) if n != self.switch_netns]):
            try:
                netns.delete(host_ns)
            except LabError as exc:
                errors.append(str(exc))
        errors += switch.stop()
        if errors:
            raise LabError(f"lab {self.name}: down incomplete: " + "; ".join(errors))
        for pattern in (STATE_FILE, "conf.db", ".conf.db.~lock~", "*.pid", "*.ctl", "*.sock",
                        "*.mgmt", "*.snoop", "ovsmgr-*.json"):
            for path in self.dir.glob(pattern):
                path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """What ``lab.json`` records, plus whether the daemons are alive right now."""
        state = self._load()
        pids: dict[str, int] = state.get("pids", {})
        daemons = {d: {"pid": pids.get(d), "alive": pids.get(d) is not None
                       and netns.pid_alive(int(pids[d]))} for d in DAEMONS}
        bridge = state.get("bridge")
        return {
            "name": self.name,
            "dir": str(self.dir),
            "up": state.get("status") == "up" and all(d["alive"] for d in daemons.values()),
            "status": state.get("status", "down"),
            "bridge": bridge,
            "datapath": state.get("datapath"),
            "switch_netns": self.switch_netns if state else None,
            "db": self.db_endpoint if state else None,
            "mgmt": self.mgmt_socket(bridge) if bridge else None,
            "appctl": self._switch(state).appctl_target(),
            "daemons": daemons,
            "ports": state.get("ports", []),
        }
