"""Fleets: a 3-member Raft store and three lab switches, each its own OVS in its own namespace,
rolled out to with `ovsmgr fleet apply` and checked with real traffic on every switch."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ovsmgr.cli import main
from ovsmgr.fleet.fleetfile import load_fleet, load_policies
from ovsmgr.fleet.rollout import Outcome, run_rollout
from ovsmgr.fleet.store import ROLLOUT_LOCK, FleetStore
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.ovs import Lab, LabPort
from tests.support.policies import two_ports

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
    far, address = ("outside", "198.51.100.9") if source == "inside" else ("inside", "10.0.0.10")
    with server(lab, far, "tcp", port):
        return bool(converse(lab, source, "tcp", address, port)["ok"])


def cut_management(lab: Lab) -> None:
    """The switch cannot be managed any more (its OVSDB and OpenFlow sockets are gone for new
    connections) but keeps forwarding: ovs-vswitchd keeps its own connection to its database.
    (Stopping ovsdb-server would stop a userspace datapath's forwarding too: ovs-vswitchd runs
    its bridges only while it holds its database lock.)"""
    for socket in (lab.db_endpoint.removeprefix("unix:"), lab.mgmt_socket("br0")):
        path = Path(socket)
        path.rename(path.with_name("cut-" + path.name))


@dataclass
class FleetLab:
    dir: Path
    store: StoreCluster
    labs: dict[str, Lab]

    def write(self, policies: dict[str, str], rollout: str = "{canary: [edge-1], batch: 2}") -> str:
        """The fleet file, each switch's policy in a file of its own."""
        switches = []
        for name, text in policies.items():
            (self.dir / f"{name}.yaml").write_text(text)
            switches.append(f"  {name}: {{policy: {name}.yaml, db: '{self.labs[name].db_endpoint}'}}")
        path = self.dir / "fleet.yaml"
        path.write_text(f"version: 1\nstore: [{', '.join(self.store.endpoints)}]\nrollout: {rollout}\n"
                        f"switches:\n" + "\n".join(switches) + "\n")
        return str(path)

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["fleet", *args])

    def status(self, path: str) -> dict[str, dict[str, object]]:
        result = self.run("status", path, "-o", "json")
        assert result.exit_code == 0, result.output
        return {e["switch"]: e for e in json.loads(result.output)}

    def flows(self) -> dict[str, str]:
        return {name: lab.ofctl(["dump-flows", "--no-stats"]) for name, lab in self.labs.items()}


@pytest.fixture
def fleet_lab(lab_factory: Callable[..., Lab], tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetLab]:
    """Three lab switches and a 3-member Raft store on loopback (unix sockets: short paths)."""
    store = StoreCluster(Path("/tmp") / f"ovsmgr-store-{secrets.token_hex(3)}")
    labs = {name: lab_factory(PORTS) for name in NAMES}
    try:
        store.start()
        yield FleetLab(tmp_path_factory.mktemp("fleet"), store, labs)
    finally:
        assert not store.stop()
        shutil.rmtree(store.dir, ignore_errors=True)


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
