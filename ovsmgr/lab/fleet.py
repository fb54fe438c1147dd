"""A whole fleet on one machine, all TLS: `ovsmgr fleet lab up FLEET.yaml` (docs/fleet.md).

From a fleet file and its policies, `FleetLab.up` makes

- a CA and identities with `ovs-pki` (`pki/`): ovsmgr's, the store's, one per switch (`sw-NAME`);
- the store: a 3-member Raft cluster on loopback (`ovsmgr.lab.cluster.StoreCluster`, `store/`), Raft
  over `ssl:`, clients on `pssl:PORT:127.0.0.1`;
- one lab switch per fleet switch (`ovsmgr.lab.ovs.Lab` named `LAB-SWITCH`, in
  `/run/ovsmgr/lab-LAB-SWITCH` where `ovsmgr lab --name` finds it, or `switches/SWITCH/` of a lab given
  a directory): its own OVS in its own namespace, a host namespace per port of the switch's policy;
- a management link per switch: a veth pair from the host (`ofmHASH-N`, the lab name's hash and the
  switch's index) to `mgmt0` in the switch's namespace, a /30 of `MGMT_RANGE` each; the switch's OVSDB
  listens on `pssl:6640` and its bridge's OpenFlow on `pssl:6653` at its end, with its own identity in
  its SSL table. A switch's namespace cannot reach the host's loopback; this link is how ovsmgr
  reaches the switch, as it would reach a switch on another host;
- `fleet.yaml`: the same switches, policies (absolute paths to the originals) and rollout, with the
  lab's store, ovsmgr's identity under `tls:`, each switch's `db:` and `openflow:` over `ssl:`, and
  `state_dir:` in the lab, so `ovsmgr fleet apply|status` run on it leave nothing outside the lab;
- for switches with `controllers:`, the controllers to run on the host (`controller_servers`): one per
  group and controller of the fleet file (`ovsmgr controller --fleet ... [--group G]`), one per agent
  switch and controller (`ovsmgr agent --switch S ...`), each on a TLS port of its own; each switch's
  `controllers:` in the lab's fleet file are these ports at the host's end of its management link.

`fleet-lab.json` records what exists as soon as it exists (the store and every lab switch keep their
own records too), so `down` works from another process and after a half-failed `up`; a failed `up`
takes down what it made and keeps only the logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

from ovsmgr.fleet.fleetfile import Fleet, SwitchSpec
from ovsmgr.lab import netns
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.ovs import LAB_NAME, Lab, LabError, lab_spec_from_policy
from ovsmgr.lab.ovs import STATE_FILE as LAB_STATE
from ovsmgr.lab.pki import Pki
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.southbound.tls import TlsFiles
from ovsmgr.switch.statefile import atomic_write

STATE_FILE = "fleet-lab.json"
FLEET_FILE = "fleet.yaml"
MGMT_RANGE = ipaddress.IPv4Network("100.127.224.0/19")
"""Management links come from the top of the shared address space (RFC 6598), one /30 each."""
MGMT_IFACE = "mgmt0"
OVSDB_PORT = 6640
OPENFLOW_PORT = 6653
IFNAMSIZ = 15
SUN_PATH = 107
"""The longest unix socket path (ovs-vswitchd's control socket is in the switch's directory)."""
LOCK_DIR = Path("/run/ovsmgr")
"""Locked (flock) while a fleet lab picks its management networks."""
IDENTITY = "ovsmgr"
STORE_IDENTITY = "store"


def default_dir(name: str) -> Path:
    return Path(f"/run/ovsmgr/fleet-lab-{name}")


@contextlib.contextmanager
def _mgmt_lock() -> Iterator[None]:
    """Held from reading the host's addresses until a lab's management links have theirs: two labs
    coming up at once do not pick the same networks."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_DIR, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- pure: names, addresses, the lab's fleet file ---------------------------------------------------
def veth_name(name: str, index: int) -> str:
    """The host end of switch `index`'s management link: unique per lab name, within IFNAMSIZ."""
    name_hash = hashlib.sha256(name.encode()).hexdigest()[:6]
    veth = f"ofm{name_hash}-{index}"
    if len(veth) > IFNAMSIZ:
        raise LabError(f"fleet lab {name}: too many switches for interface names ({veth})")
    return veth


def allocate_mgmt(count: int, in_use: Iterable[ipaddress.IPv4Network],
                  pool: ipaddress.IPv4Network = MGMT_RANGE) -> list[ipaddress.IPv4Network]:
    """`count` /30 networks of `pool` that overlap none of `in_use` (the host's addresses), in order."""
    taken = list(in_use)
    out = []
    for net in pool.subnets(new_prefix=30):
        if not any(net.overlaps(t) for t in taken):
            out.append(net)
            if len(out) == count:
                return out
    raise LabError(f"no {count} free /30 networks left in {pool} for management links")


def host_networks(text: str) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of `ip -4 -o addr show` output."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if "inet" in fields:
            out.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return out


def _q(value: object) -> str:
    return json.dumps(str(value))


def server_key(spec: SwitchSpec, index: int) -> str:
    """Which controller process serves a switch's `index`-th controller in the lab: its group's (or
    the fleet's, of no group) fleet controller number `index`, or its own agent number `index`."""
    return f"agent:{spec.name}:{index}" if spec.agent else f"group:{spec.group or ''}:{index}"


def controller_servers(fleet: Fleet, ports: Iterator[int]) -> list[dict[str, Any]]:
    """The controller processes the lab's switches with `controllers:` need, each with a port of
    its own (from `ports`) and the switches it serves, in the fleet file's order."""
    servers: dict[str, dict[str, Any]] = {}
    for spec in fleet.switches.values():
        for index in range(len(spec.controllers)):
            key = server_key(spec, index)
            server = servers.setdefault(key, {"key": key, "index": index, "port": next(ports), "switches": [],
                                              "agent": spec.name if spec.agent else None, "group": spec.group})
            server["switches"].append(spec.name)
    return list(servers.values())


def server_command(lab_name: str, fleet_file: Path, server: dict[str, Any], host_address: str) -> list[str]:
    """How to run one of the lab's controllers: an agent listens at its switch's end of the host, a
    fleet controller (several switches, several management links) on every address of the host."""
    index = server["index"]
    if server["agent"] is not None:
        return ["ovsmgr", "agent", "--fleet", str(fleet_file), "--switch", server["agent"],
                "--listen", f"ssl:{host_address}:{server['port']}", "--name", f"{lab_name}-{server['agent']}-{index}"]
    group = ["--group", server["group"]] if server["group"] else []
    name = f"{lab_name}-{server['group'] or 'ctl'}-{index}"
    return ["ovsmgr", "controller", "--fleet", str(fleet_file), *group,
            "--listen", f"ssl:0.0.0.0:{server['port']}", "--name", name]


def lab_fleet_text(fleet: Fleet, store: Sequence[str], tls: TlsFiles, addresses: dict[str, str],
                   state_dir: Path, controllers: dict[str, list[str]] | None = None) -> str:
    """The fleet file of the lab: `fleet`'s switches, policies and rollout; the lab's store, identity,
    endpoints (`addresses`: switch name -> management address), controllers (switch name -> its
    controllers' endpoints in the lab) and state directory."""
    r = fleet.rollout
    rollout = [f"canary: [{', '.join(_q(c) for c in r.canary)}]", f"batch: {r.batch}",
               f"stop_on_failure: {str(r.stop_on_failure).lower()}", f"timeout: {r.timeout}"]
    if r.confirm is not None:
        rollout.append(f"confirm: {r.confirm}")
    lines = [f"# The fleet lab's own fleet file, made by `ovsmgr fleet lab up` from {os.path.abspath(fleet.path)}",
             "version: 1",
             f"store: [{', '.join(_q(s) for s in store)}]",
             f"tls: {{private_key: {_q(tls.private_key)}, certificate: {_q(tls.certificate)}, "
             f"ca_cert: {_q(tls.ca_cert)}}}",
             f"state_dir: {_q(state_dir)}",
             f"rollout: {{{', '.join(rollout)}}}",
             "switches:"]
    for name, spec in fleet.switches.items():
        address = addresses[name]
        served = ""
        if spec.controllers:
            served = f", controllers: [{', '.join(_q(c) for c in (controllers or {})[name])}]"
            served += ", agent: true" if spec.agent else f", group: {_q(spec.group)}" if spec.group else ""
        lines.append(f"  {_q(name)}: {{policy: [{', '.join(_q(os.path.abspath(p)) for p in spec.policy)}], "
                     f"db: {_q(f'ssl:{address}:{OVSDB_PORT}')}, openflow: {_q(f'ssl:{address}:{OPENFLOW_PORT}')}"
                     f"{served}}}")
    return "\n".join(lines) + "\n"


# -- the lab ---------------------------------------------------------------------------------------
class FleetLab:
    """A fleet lab, addressed by name; see the module docstring."""

    def __init__(self, name: str = "fleet", directory: str | os.PathLike[str] | None = None) -> None:
        if not LAB_NAME.fullmatch(name):
            raise LabError(f"fleet lab name {name!r} must match {LAB_NAME.pattern} (it names namespaces)")
        self.name = name
        self._own_dir = directory is not None
        self.dir = Path(directory) if directory else default_dir(name)

    # -- where things are ------------------------------------------------------------------------
    @property
    def fleet_file(self) -> Path:
        return self.dir / FLEET_FILE

    @property
    def store(self) -> StoreCluster:
        return StoreCluster(self.dir / "store")

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def tls(self) -> TlsFiles:
        """ovsmgr's identity in the lab (what `fleet.yaml` names under tls:)."""
        return Pki.files_in(self.pki, IDENTITY)

    def labs(self) -> dict[str, Lab]:
        """Each fleet switch's lab switch, by switch name."""
        return {s["name"]: Lab(s["lab"], s["dir"]) for s in self._load().get("switches", [])}

    def _lab_name(self, switch: str) -> str:
        return f"{self.name}-{switch}"

    def _lab_dir(self, switch: str) -> Path:
        """Where a switch's lab keeps its files: where `ovsmgr lab --name LAB-SWITCH` finds them, or
        under the fleet lab's own directory when it was given one."""
        if self._own_dir:
            return self.dir / "switches" / switch
        return Path(f"/run/ovsmgr/lab-{self._lab_name(switch)}")

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / STATE_FILE).read_text()))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise LabError(f"fleet lab {self.name}: unreadable {self.dir / STATE_FILE}: {exc}") from exc

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write(self.dir / STATE_FILE, json.dumps(state, indent=2))

    # -- up --------------------------------------------------------------------------------------
    def check(self, fleet: Fleet, policies: dict[str, ResolvedPolicy]) -> None:
        """What the lab cannot run, before anything is made (LabError naming it)."""
        problems = []
        for index, name in enumerate(fleet.switches, 1):
            lab = self._lab_name(name)
            if not LAB_NAME.fullmatch(lab):
                problems.append(f"switch {name}: its lab name {lab} is longer than 32 characters: "
                                "choose a shorter --name")
            if len(str(self._lab_dir(name) / "ovs-vswitchd.4194304.ctl")) > SUN_PATH:
                problems.append(f"switch {name}: its sockets in {self._lab_dir(name)} would be longer than "
                                "unix sockets allow: choose a shorter directory")
            if (self._lab_dir(name) / LAB_STATE).exists():
                problems.append(f"switch {name}: a lab named {lab} is up already ({self._lab_dir(name)}): "
                                "choose another --name")
            if policies[name].datapath not in ("netdev", "dpdk"):
                problems.append(f"switch {name}: its policy asks for the {policies[name].datapath} datapath; "
                                "lab switches are userspace (datapath: netdev)")
            veth_name(self.name, index)
        if shutil.which("ovs-pki") is None:
            problems.append("ovs-pki is not installed (apt-get install -y openvswitch-common)")
        if problems:
            raise LabError(f"fleet lab {self.name}: " + "; ".join(problems))

    def up(self, fleet: Fleet, policies: dict[str, ResolvedPolicy]) -> dict[str, Any]:
        """Build the lab for `fleet` (validated, with its policies); on failure take down what was
        made (logs kept) and raise LabError."""
        self.check(fleet, policies)
        if self._load():
            raise LabError(f"fleet lab {self.name} is already up (or half down) in {self.dir}: "
                           f"run `ovsmgr fleet lab down --name {self.name}` first")
        self.dir.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"name": self.name, "source": str(Path(fleet.path).resolve()), "status": "starting",
                                 "switches": [], "fleet_file": str(self.fleet_file)}
        self._save(state)
        try:
            self._build(fleet, policies, state)
        except Exception as exc:
            self._undo_failed_up(exc)
        except BaseException:
            self.down()
            raise
        state["status"] = "up"
        self._save(state)
        return self.status()

    def _build(self, fleet: Fleet, policies: dict[str, ResolvedPolicy], state: dict[str, Any]) -> None:
        names = list(fleet.switches)
        state["switches"] = [{"name": name, "lab": self._lab_name(name), "dir": str(self._lab_dir(name)),
                              "veth": veth_name(self.name, index), "bridge": policies[name].bridge}
                             for index, name in enumerate(names, 1)]
        self._save(state)
        with ThreadPoolExecutor(1) as pool:  # the keys take CPU, the switches mostly wait: side by side
            pki = pool.submit(lambda: Pki(self.pki).identities([IDENTITY, STORE_IDENTITY,
                                                                 *(f"sw-{n}" for n in names)]))
            for entry in state["switches"]:
                lab = Lab(entry["lab"], entry["dir"])
                if (Path(entry["dir"]) / LAB_STATE).exists():
                    raise LabError(f"lab {entry['lab']} is up already, and not this fleet lab's")
                entry["lab_made"] = True  # Lab.up records what it makes, and undoes it if it fails
                self._save(state)
                lab.up(lab_spec_from_policy(policies[entry["name"]], "netdev", {}, entry["lab"]))
            identities = pki.result()
        with _mgmt_lock():  # another lab up at the same time must see these networks taken
            networks = allocate_mgmt(len(names), host_networks(netns.run(["ip", "-4", "-o", "addr", "show"])))
            for entry, net in zip(state["switches"], networks, strict=True):
                host, switch = list(net.hosts())
                entry.update({"host_address": f"{host}/{net.prefixlen}", "address": str(switch),
                              "prefixlen": net.prefixlen})
                self._link(entry, state)
        state["controllers"] = controller_servers(fleet, iter(netns.free_port, None))
        self._save(state)
        StoreCluster(self.dir / "store", tls=identities[STORE_IDENTITY]).start()
        for entry in state["switches"]:
            self._serve(entry, identities[f"sw-{entry['name']}"])
        self.write_fleet(fleet)

    def _link(self, entry: dict[str, Any], state: dict[str, Any]) -> None:
        """The switch's management link: the host's end and the switch's `mgmt0`, addressed."""
        veth, ns = entry["veth"], Lab(entry["lab"], entry["dir"]).switch_netns
        self._save(state)
        netns.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", MGMT_IFACE, "netns", ns])
        entry["veth_made"] = True  # recorded at once: one that already existed is not ours to delete
        self._save(state)
        netns.run(["ip", "addr", "add", entry["host_address"], "dev", veth])
        netns.run(["ip", "link", "set", "dev", veth, "up"])
        netns.run(["ip", "-n", ns, "addr", "add", f"{entry['address']}/{entry['prefixlen']}", "dev", MGMT_IFACE])
        netns.run(["ip", "-n", ns, "link", "set", "dev", MGMT_IFACE, "up"])

    def _serve(self, entry: dict[str, Any], identity: TlsFiles) -> None:
        """The switch's OVSDB and its bridge's OpenFlow over TLS on its management address."""
        from ovsmgr.southbound.ovsdb import SwitchDB

        lab = Lab(entry["lab"], entry["dir"])
        with SwitchDB(lab.db_endpoint) as db:
            db.set_ssl(str(identity.private_key), str(identity.certificate), str(identity.ca_cert))
            db.add_manager(f"pssl:{OVSDB_PORT}:{entry['address']}")
            db.set_controllers(entry["bridge"], [f"pssl:{OPENFLOW_PORT}:{entry['address']}"])

    def write_fleet(self, fleet: Fleet, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the lab's version of `fleet` (a fleet file of the lab's switches: other policies,
        another rollout) to `path` (default: the lab's `fleet.yaml`); its path."""
        state = self._load()
        addresses = {s["name"]: s["address"] for s in state.get("switches", [])}
        unknown = sorted(set(fleet.switches) - set(addresses))
        if unknown:
            raise LabError(f"fleet lab {self.name} has no switch {', '.join(unknown)} (it has: "
                           f"{', '.join(addresses) or 'none'})")
        hosts = {s["name"]: s["host_address"].split("/")[0] for s in state.get("switches", [])}
        ports = {s["key"]: s["port"] for s in state.get("controllers", [])}
        controllers: dict[str, list[str]] = {}
        for name, spec in fleet.switches.items():
            keys = [server_key(spec, i) for i in range(len(spec.controllers))]
            missing = [k for k in keys if k not in ports]
            if missing:
                raise LabError(f"fleet lab {self.name} runs no controller for switch {name}'s controllers: "
                               f"({', '.join(missing)}): bring the lab up with a fleet file that has them")
            controllers[name] = [f"ssl:{hosts[name]}:{ports[k]}" for k in keys]
        target = Path(path) if path else self.fleet_file
        atomic_write(target, lab_fleet_text(fleet, self.store.endpoints, self.tls, addresses, self.dir / "records",
                                            controllers))
        return target

    def _undo_failed_up(self, exc: Exception) -> NoReturn:
        try:
            self.down(keep_logs=True)
        except LabError as cleanup:
            raise LabError(f"fleet lab {self.name}: up failed: {exc}; cleaning up also failed: {cleanup}") from exc
        raise LabError(f"fleet lab {self.name}: up failed: {exc} (nothing runs; its logs are kept until "
                       f"`ovsmgr fleet lab down --name {self.name}`)") from exc

    # -- down ------------------------------------------------------------------------------------
    def down(self, keep_logs: bool = False) -> None:
        """Stop and delete everything the lab made: lab switches (their namespaces and with them the
        management links), the store, the files (with `keep_logs`, the logs and the record of where they
        are). Idempotent; every step is tried, the failures are raised together."""
        state = self._load()
        errors = []
        for entry in reversed(state.get("switches", [])):
            try:  # the link first: deleting the namespace takes its end along, the host's a moment later
                if entry.get("veth_made") and Path(f"/sys/class/net/{entry['veth']}").exists():
                    netns.run(["ip", "link", "del", entry["veth"]])
                if entry.get("lab_made"):
                    Lab(entry["lab"], entry["dir"]).down()
                    if not keep_logs:
                        shutil.rmtree(entry["dir"], ignore_errors=True)
            except LabError as exc:
                errors.append(str(exc))
        if (self.dir / "store").exists():
            errors += self.store.stop()
        if errors:
            raise LabError(f"fleet lab {self.name}: down incomplete: " + "; ".join(errors))
        if not keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for path in sorted(self.dir.rglob("*"), reverse=True):  # a directory after what it holds
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            elif not path.is_dir() and path.suffix != ".log" and path.name != STATE_FILE:
                path.unlink(missing_ok=True)
        self._save({**state, "status": "failed"})

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The store's members (running, role), the switches (namespace, management address, whether
        their OVSDB answers over TLS), the fleet file."""
        state = self._load()
        if not state:
            return {"name": self.name, "dir": str(self.dir), "status": "down", "store": [], "switches": [],
                    "fleet_file": None}
        store = self.store
        members = []
        for member in store.members if (self.dir / "store" / "cluster.json").exists() else []:
            text = store.member_status(member.index) if member.pid is not None else ""
            role = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                         if line.startswith("Role:")), None)
            members.append({"member": member.index, "pid": member.pid, "running": bool(text),
                            "endpoint": store.endpoints[member.index - 1], "role": role,
                            "leader": role == "leader"})
        switches = [self._switch_status(s) for s in state.get("switches", [])]
        hosts = {s["name"]: s.get("host_address", "").split("/")[0] for s in state.get("switches", [])}
        controllers = [{"serves": server["switches"], "port": server["port"],
                        "command": server_command(self.name, self.fleet_file, server, hosts[server["switches"][0]])}
                       for server in state.get("controllers", [])]
        return {"name": self.name, "dir": str(self.dir), "status": state.get("status"), "store": members,
                "switches": switches, "controllers": controllers,
                "fleet_file": state.get("fleet_file") if self.fleet_file.exists() else None}

    def _switch_status(self, entry: dict[str, Any]) -> dict[str, Any]:
        address = entry.get("address")  # none yet: up failed before the management links
        return {"switch": entry["name"], "lab": entry["lab"], "lab_dir": entry["dir"],
                "namespace": Lab(entry["lab"], entry["dir"]).switch_netns, "management": address,
                "veth": entry["veth"], "db": f"ssl:{address}:{OVSDB_PORT}" if address else None,
                "openflow": f"ssl:{address}:{OPENFLOW_PORT}" if address else None,
                "connected": address is not None and self._answers(entry)}

    def _answers(self, entry: dict[str, Any]) -> bool:
        """Whether the switch's OVSDB answers over TLS on its management address."""
        from ovsmgr.southbound.ovsdb import OvsdbError, SwitchDB
        from ovsmgr.southbound.tls import TlsError, configure

        try:
            configure(self.tls)
            with SwitchDB(f"ssl:{entry['address']}:{OVSDB_PORT}", timeout=5) as db:
                return entry["bridge"] in db.bridges()
        except (OvsdbError, TlsError, OSError):
            return False
