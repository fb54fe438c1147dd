"""Fleets: `ovsmgr fleet lab` (a 3-member Raft store on loopback and three lab switches, each its own
OVS in its own namespace, TLS on every connection), rolled out to with `ovsmgr fleet apply` and
checked with real traffic on every switch."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ovsmgr.cli import main
from ovsmgr.fleet.fleetfile import load_fleet, load_policies
from ovsmgr.fleet.rollout import Outcome, run_rollout
from ovsmgr.fleet.store import ROLLOUT_LOCK, FleetStore
from ovsmgr.lab import netns
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.fleet import FleetLab as ProductFleetLab
from ovsmgr.lab.ovs import Lab, LabPort
from ovsmgr.southbound.tls import configure
from tests.support.policies import two_ports

from .conftest import _skip_reason
from .traffic import converse, server

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
NAMES = ("edge-1", "edge-2", "edge-3")


def policy(*ports: int) -> str:
    """Connections from inside to these TCP ports pass (and their replies); nothing from outside."""
    rules = "".join(f"    - {{name: tcp{p}, from: inside, services: [tcp/{p}], action: allow}}\n" for p in ports)
    return two_ports(f"firewall:\n  default: drop\n  rules:\n{rules}")


def passes(lab: Lab, port: int, source: str = "inside") -> bool:
    """Whether a TCP connection to `port` gets an answer: from inside to outside, or the other way."""
    far = "outside" if source == "inside" else "inside"
    address = next(p["address"] for p in lab.status()["ports"] if p["name"] == far).split("/")[0]
    with server(lab, far, "tcp", port):
        return bool(converse(lab, source, "tcp", address, port)["ok"])


def cut_management(lab: Lab) -> None:
    """The switch cannot be managed any more (its OVSDB and OpenFlow TLS listeners on its management
    address are removed: new connections are refused) but keeps forwarding: ovs-vswitchd keeps its own
    connection to its database. (Stopping ovsdb-server would stop a userspace datapath's forwarding
    too: ovs-vswitchd runs its bridges only while it holds its database lock.)"""
    for command in (["del-manager"], ["del-controller", "br0"]):
        lab.switch_exec(["ovs-vsctl", f"--db={lab.db_endpoint}", *command], check=True, capture_output=True)


def write_source(directory: Path, policies: dict[str, str], rollout: str) -> Path:
    """A fleet file as an operator writes one for the lab (no store, no endpoints), each switch's
    policy in a file of its own."""
    switches = []
    for name, text in policies.items():
        (directory / f"{name}.yaml").write_text(text)
        switches.append(f"  {name}: {{policy: {name}.yaml}}")
    path = directory / "source.yaml"
    path.write_text(f"version: 1\nrollout: {rollout}\nswitches:\n" + "\n".join(switches) + "\n")
    return path


@dataclass
class FleetLab:
    dir: Path
    lab: ProductFleetLab
    store: StoreCluster
    labs: dict[str, Lab]

    def write(self, policies: dict[str, str], rollout: str = "{canary: [edge-1], batch: 2}") -> str:
        """The lab's fleet file for these policies and this rollout (its store, TLS, switch endpoints)."""
        return str(self.lab.write_fleet(load_fleet(write_source(self.dir, policies, rollout))))

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["fleet", *args])

    def status(self, path: str) -> dict[str, dict[str, object]]:
        result = self.run("status", path, "-o", "json")
        assert result.exit_code == 0, result.output
        return {e["switch"]: e for e in json.loads(result.output)}

    def flows(self) -> dict[str, str]:
        return {name: lab.ofctl(["dump-flows", "--no-stats"]) for name, lab in self.labs.items()}


def _no_root_skip() -> None:
    reason = _skip_reason() or (None if shutil.which("ovs-pki") else "no ovs-pki (apt-get install -y openvswitch-common)")
    if reason:
        pytest.skip(reason)


@pytest.fixture
def fleet_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetLab]:
    """`ovsmgr fleet lab` for three switches with `policy(8080)`, in a short directory of its own under /tmp."""
    _no_root_skip()
    directory = tmp_path_factory.mktemp("fleet")
    name = f"f{secrets.token_hex(3)}"
    lab = ProductFleetLab(name, Path("/tmp") / f"ovsmgr-{name}")
    fleet = load_fleet(write_source(directory, {n: policy(8080) for n in NAMES}, "{canary: [edge-1]}"))
    try:
        lab.up(fleet, load_policies(fleet))
        configure(lab.tls)  # this process's own FleetStore connections (the CLI sets it from the fleet file)
        labs = lab.labs()
        assert set(labs) == set(NAMES) and all(sw.status()["up"] for sw in labs.values())
        yield FleetLab(directory, lab, lab.store, labs)
    finally:
        lab.down()


def test_rollout_to_three_switches_each_passes_real_traffic(fleet_lab: FleetLab) -> None:
    path = fleet_lab.write({name: policy(8080) for name in NAMES})
    assert fleet_lab.run("plan", path).exit_code == 2
    result = fleet_lab.run("apply", path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("edge-1: applied"), "the canary goes first"
    for name, lab in fleet_lab.labs.items():
        assert passes(lab, 8080), f"{name}: inside -> outside tcp/8080 must pass"
        assert not passes(lab, 9090), f"{name}: tcp/9090 is not allowed"
        assert not passes(lab, 8080, source="outside"), f"{name}: nothing new from outside"
    status = fleet_lab.status(path)
    assert all(s["desired_generation"] == s["applied_generation"] == 1 and s["connected"] and not s["drifted"]
               and s["error"] is None for s in status.values()), status
    assert fleet_lab.run("plan", path).exit_code == 0
    with FleetStore(fleet_lab.store.endpoints) as store:
        assert store.state().rollout["state"] == "done"
    with FleetStore(fleet_lab.store.endpoints, switch="edge-2") as store:  # conditional monitoring
        state = store.wait(lambda s: bool(s.policies), 10)
        assert list(state.switches) == ["edge-2"] and list(state.policies) == [state.switches["edge-2"].policy]


def test_a_bad_policy_for_one_switch_changes_no_switch(fleet_lab: FleetLab) -> None:
    path = fleet_lab.write({name: policy(8080) for name in NAMES})
    assert fleet_lab.run("apply", path).exit_code == 0
    before = fleet_lab.flows()
    broken = policy(8080, 9090).replace("from: inside, services: [tcp/9090]", "from: nowhere, services: [tcp/9090]")
    path = fleet_lab.write({"edge-1": policy(8080, 9090), "edge-2": policy(8080, 9090), "edge-3": broken})
    result = fleet_lab.run("apply", path)
    assert result.exit_code == 1
    assert f"{fleet_lab.dir / 'edge-3.yaml'}:" in result.output and "(switch edge-3)" in result.output
    assert fleet_lab.flows() == before, "a switch changed although one policy of the fleet was bad"
    assert not passes(fleet_lab.labs["edge-1"], 9090)
    status = fleet_lab.status(path)
    assert {s["desired_generation"] for s in status.values()} == {1}, "nothing may be written to the store"


def test_an_unreachable_switch_stops_the_rollout_or_is_skipped(fleet_lab: FleetLab) -> None:
    path = fleet_lab.write({name: policy(8080) for name in NAMES})
    assert fleet_lab.run("apply", path).exit_code == 0
    cut_management(fleet_lab.labs["edge-2"])
    wider = {name: policy(8080, 9090) for name in NAMES}

    path = fleet_lab.write(wider, rollout="{canary: [edge-1], batch: 1, stop_on_failure: true}")
    result = fleet_lab.run("apply", path)
    assert result.exit_code == 1
    assert "edge-2: FAILED" in result.output and "not reached: edge-3" in result.output
    status = fleet_lab.status(path)
    assert status["edge-1"]["applied_generation"] == 2 and passes(fleet_lab.labs["edge-1"], 9090)
    assert status["edge-2"]["applied_generation"] == 1 and not status["edge-2"]["connected"]
    assert "unreachable" in str(status["edge-2"]["error"]), status["edge-2"]
    assert passes(fleet_lab.labs["edge-2"], 8080) and not passes(fleet_lab.labs["edge-2"], 9090), \
        "an unmanageable switch keeps enforcing its generation"
    assert status["edge-3"]["applied_generation"] == 1 and not passes(fleet_lab.labs["edge-3"], 9090)
    assert "stopped before this switch: switch edge-2 failed" in str(status["edge-3"]["error"])

    path = fleet_lab.write(wider, rollout="{canary: [edge-1], batch: 1, stop_on_failure: false}")
    result = fleet_lab.run("apply", path)
    assert result.exit_code == 1 and "edge-2: FAILED" in result.output
    status = fleet_lab.status(path)
    assert status["edge-3"]["applied_generation"] == 3 and status["edge-3"]["error"] is None
    assert passes(fleet_lab.labs["edge-3"], 9090), "skipped past edge-2, edge-3 got the new policy"
    assert status["edge-2"]["applied_generation"] == 1 and "unreachable" in str(status["edge-2"]["error"])


def test_the_store_leader_killed_mid_rollout(fleet_lab: FleetLab) -> None:
    """The leader dies right after the canary applied: the rollout carries on with the new leader
    (its lock taken again there), every switch applied, the store's record complete."""
    path = fleet_lab.write({name: policy(8080) for name in NAMES})
    fleet = load_fleet(path)
    policies = load_policies(fleet)
    killed: list[int] = []

    def kill_leader(outcome: Outcome) -> None:
        if not killed:
            leader = fleet_lab.store.leader()
            assert leader is not None and outcome.error is None
            killed.append(leader)
            assert not fleet_lab.store.stop_member(leader)

    with FleetStore(fleet_lab.store.endpoints, lock=ROLLOUT_LOCK) as store:
        result = run_rollout(fleet, policies, store, kill_leader)
    assert killed and result.ok, result
    assert fleet_lab.store.leader() not in (None, killed[0])
    status = fleet_lab.status(path)
    assert all(s["applied_generation"] == 1 and s["error"] is None for s in status.values()), status
    for name, lab in fleet_lab.labs.items():
        assert passes(lab, 8080), name
    fleet_lab.store.start_member(killed[0])
    fleet_lab.store.wait_formed()
    with FleetStore(fleet_lab.store.endpoints) as store:
        assert store.state().rollout["state"] == "done"


def _leftovers(name: str, veths: list[str], pids: list[int], paths: list[Path]) -> list[str]:
    left = [f"netns {n}" for n in os.listdir(netns.NETNS_DIR) if n.startswith(f"{name}-")]
    left += [f"veth {v}" for v in veths if Path(f"/sys/class/net/{v}").exists()]
    left += [f"pid {p}" for p in pids if netns.pid_alive(p)]
    return left + [f"file {p}" for p in paths if p.exists()]


def test_fleet_lab_up_apply_status_down_from_the_command_line(tmp_path: Path) -> None:
    """What an operator runs: `fleet lab up`, `fleet apply` and `fleet status` on the lab's fleet file,
    `fleet lab down`; afterwards no namespace, management link, process or file of the lab is left."""
    _no_root_skip()
    name = f"f{secrets.token_hex(3)}"
    source = write_source(tmp_path, {n: policy(8080) for n in NAMES}, "{canary: [edge-1], batch: 2}")
    runner = CliRunner()
    veths: list[str] = []
    pids: list[int] = []
    paths: list[Path] = []
    try:
        result = runner.invoke(main, ["fleet", "lab", "up", str(source), "--name", name])
        assert result.exit_code == 0, result.output
        lab = json.loads(runner.invoke(main, ["fleet", "lab", "status", "--name", name, "-o", "json"]).output)
        path = lab["fleet_file"]
        assert f"ovsmgr fleet apply {path}" in result.output and f"ovsmgr fleet status {path}" in result.output
        assert [m["role"] for m in lab["store"]].count("leader") == 1 and len(lab["store"]) == 3
        assert all(m["endpoint"].startswith("ssl:127.0.0.1:") for m in lab["store"])
        assert [s["switch"] for s in lab["switches"]] == list(NAMES) and all(s["connected"] for s in lab["switches"])
        assert all(s["db"].startswith("ssl:100.127.") for s in lab["switches"])

        result = runner.invoke(main, ["fleet", "apply", path])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["fleet", "status", path, "-o", "json"])
        assert result.exit_code == 0, result.output
        status = json.loads(result.output)
        assert [s["switch"] for s in status] == list(NAMES)
        assert all(s["connected"] and s["applied_generation"] == s["desired_generation"] == 1 and not s["drifted"]
                   and s["error"] is None for s in status), status
        sw = Lab(lab["switches"][0]["lab"], lab["switches"][0]["lab_dir"])
        assert passes(sw, 8080) and not passes(sw, 9090), "the lab switch enforces the policy applied over TLS"
        pids = [m["pid"] for m in lab["store"]] + [d["pid"] for s in lab["switches"]
                                                    for d in Lab(s["lab"], s["lab_dir"]).status()["daemons"].values()]
        veths = [s["veth"] for s in lab["switches"]]
        paths = [Path(lab["dir"]), *(Path(s["lab_dir"]) for s in lab["switches"])]
        assert all(netns.pid_alive(p) for p in pids) and all(p.exists() for p in paths)
        assert len(_leftovers(name, veths, pids, paths)) == 3 * 3 + len(veths) + len(pids) + len(paths)
    finally:
        result = runner.invoke(main, ["fleet", "lab", "down", "--name", name])
    assert result.exit_code == 0, result.output
    assert not _leftovers(name, veths, pids, paths)
    assert json.loads(runner.invoke(main, ["fleet", "lab", "status", "--name", name, "-o", "json"]).output)[
        "status"] == "down"
