"""`ovsmgr controller --fleet`: one process serving several lab switches, each with its own policy from
the store, checked with real traffic; and two controllers in HA, the active one killed."""

from __future__ import annotations

import itertools
import json
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ovsmgr.cli import main
from ovsmgr.controller.switchdb import CONTROLLER_OPTIONS, ControllerDB
from ovsmgr.fleet.state import StoreState
from ovsmgr.fleet.store import FleetStore
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.netns import free_port
from ovsmgr.lab.ovs import Lab
from tests.support.policies import two_ports

from .controller_helpers import (
    OVSMGR,
    eventually,
    flows_with_duration,
    probe_stream,
    scrape,
)
from .test_fleet import PORTS, passes

pytestmark = pytest.mark.integration


def policy(*tcp: int, udp: int | None = None) -> str:
    services = [f"tcp/{p}" for p in tcp] + ([f"udp/{udp}"] if udp else [])
    rules = "".join(f"    - {{name: {s.replace('/', '')}, from: inside, services: [{s}], action: allow}}\n"
                    for s in services)
    return two_ports(f"firewall:\n  default: drop\n  rules:\n{rules}")


@dataclass
class Fleet:
    dir: Path
    store: StoreCluster

    def write(self, switches: dict[str, str], rollout: str = "{timeout: 30}") -> str:
        """`switches`: name -> the rest of its YAML flow mapping; each policy in NAME.yaml."""
        lines = [f"  {name}: {{policy: {name}.yaml, {rest}}}" for name, rest in switches.items()]
        path = self.dir / "fleet.yaml"
        path.write_text(f"version: 1\nstore: [{', '.join(self.store.endpoints)}]\nrollout: {rollout}\n"
                        "switches:\n" + "\n".join(lines) + "\n")
        return str(path)

    def state(self) -> StoreState:
        with FleetStore(self.store.endpoints) as store:
            return store.state()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    store = StoreCluster(Path("/tmp") / f"ovsmgr-store-{secrets.token_hex(3)}")
    try:
        store.start()
        yield Fleet(tmp_path, store)
    finally:
        assert not store.stop()
        shutil.rmtree(store.dir, ignore_errors=True)


@contextmanager
def fleet_controller(path: str, name: str, sockets: list[Path], log: Path, *extra: str, agent: str | None = None
                     ) -> Iterator[subprocess.Popen[bytes]]:
    """`ovsmgr controller --fleet`, or with `agent` the switch's own `ovsmgr agent --switch AGENT`."""
    listen = [arg for sock in sockets for arg in ("--listen", f"unix:{sock}")]
    command = ["controller"] if agent is None else ["agent", "--switch", agent]
    with open(log, "ab") as err:
        proc = subprocess.Popen([OVSMGR, *command, "--fleet", path, "--name", name, *listen,
                                 "--stats-interval", "0.5", *extra], stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


def dpid_of(lab: Lab) -> int:
    with ControllerDB(lab.db_endpoint) as db:
        dpid = eventually(lambda: db.datapath_id("br0"), 10)
    assert dpid is not None
    return dpid


def controller_roles(lab: Lab) -> dict[str, str]:
    """The bridge's controllers: target -> role as OVS reports it (master, slave, other), connected only."""
    out = subprocess.run(["ovs-vsctl", f"--db={lab.db_endpoint}", "--format=csv", "--data=bare", "--no-headings",
                          "--columns=target,role,is_connected", "list", "Controller"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in out.splitlines() if line]
    return {target: role for target, role, connected in rows if connected == "true"}


def fleet_cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["fleet", *args])


def apply(path: str) -> None:
    result = CliRunner().invoke(main, ["fleet", "apply", path])
    assert result.exit_code == 0, result.output


def test_one_fleet_controller_serves_two_switches_each_its_own_policy(
        fleet: Fleet, lab_factory: Callable[..., Lab]) -> None:
    labs = {name: lab_factory(PORTS) for name in ("edge-1", "edge-2")}
    stranger = lab_factory(PORTS)
    (fleet.dir / "edge-1.yaml").write_text(policy(8080).replace("action: allow}", "action: allow, log: true}"))
    (fleet.dir / "edge-2.yaml").write_text(policy(9090))
    # each switch's OVS connects only to a socket in its own run directory: one listener each
    socks = {name: Path(lab.dir) / "fleet-ctl.sock" for name, lab in [*labs.items(), ("stranger", stranger)]}
    log, metrics = fleet.dir / "controller.log", f"127.0.0.1:{free_port()}"
    match_log = fleet.dir / "match.log"
    dpid = dpid_of(labs["edge-1"])
    path = fleet.write({
        "edge-1": f"db: '{labs['edge-1'].db_endpoint}', datapath_id: '{dpid:#x}', controllers: ['unix:{socks['edge-1']}']",
        # edge-2 is identified by its bridge's datapath id, read from its OVSDB
        "edge-2": f"db: '{labs['edge-2'].db_endpoint}', controllers: ['unix:{socks['edge-2']}']"})
    with fleet_controller(path, "ctl-a", list(socks.values()), log, "--metrics", metrics,
                          "--match-log", str(match_log)) as proc:
        assert eventually(lambda: fleet.state().active_controller == "ctl-a", 30), log.read_text()
        with ControllerDB(stranger.db_endpoint) as db:  # a bridge the fleet does not know connects too
            db.point_at("br0", [f"unix:{socks['stranger']}"], CONTROLLER_OPTIONS)
        apply(path)
        assert proc.poll() is None
        for name, lab in labs.items():  # OVS writes the roles it sees to its database every few seconds
            want = {f"unix:{socks[name]}": "master"}
            assert eventually(lambda lab=lab, want=want: controller_roles(lab) == want, 15), controller_roles(lab)
        assert passes(labs["edge-1"], 8080) and not passes(labs["edge-1"], 9090), "edge-1 runs edge-1.yaml"
        assert passes(labs["edge-2"], 9090) and not passes(labs["edge-2"], 8080), "edge-2 runs edge-2.yaml"
        assert not passes(labs["edge-2"], 9090, source="outside")
        logged = [json.loads(line) for line in match_log.read_text().splitlines()]
        assert logged and all(e["switch"] == "edge-1" and e["rule"] == "tcp8080" for e in logged), logged
        rows = fleet.state().switches
        assert all(rows[n].applied_generation == 1 and rows[n].served_by == "ctl-a" and rows[n].connected
                   and rows[n].error is None for n in labs), rows

        assert eventually(lambda: "is no switch of" in log.read_text(), 20), log.read_text()
        assert eventually(lambda: controller_roles(stranger), 10), "the unknown bridge never connected"
        assert "cookie=0xf5a" not in stranger.ofctl(["dump-flows"]), "an unknown datapath was written to"

        samples = scrape(metrics)
        connected = {s[0]["switch"]: s[1] for s in samples["ovsmgr_switch_connected"]}
        assert connected == {"edge-1": 1.0, "edge-2": 1.0}, connected
        generation = {s[0]["switch"]: s[1] for s in samples["ovsmgr_fleet_generation"]}
        assert generation == {"edge-1": 1.0, "edge-2": 1.0}
        packets = {(s[0]["switch"], s[0]["rule"]): s[1] for s in samples["ovsmgr_rule_packets_total"]
                   if s[0]["kind"] == "firewall"}
        assert packets.get(("edge-1", "tcp8080"), 0) > 0 and packets.get(("edge-2", "tcp9090"), 0) > 0, packets
        assert ("edge-1", "tcp9090") not in packets and ("edge-2", "tcp8080") not in packets, packets

        (fleet.dir / "edge-2.yaml").write_text(policy(9090, 7070))  # generation 2: only edge-2's policy changes
        apply(path)
        assert passes(labs["edge-2"], 7070) and not passes(labs["edge-1"], 7070)
        assert fleet.state().switches["edge-2"].applied_generation == 2

        # runtime changes through the store: to one switch, to all; one that does not fit a switch changes none
        result = fleet_cli("rule", "add", path, "{name: tcp6060, from: inside, services: [tcp/6060], action: allow}",
                           "--switch", "edge-1")
        assert result.exit_code == 0 and "edge-1: rule tcp6060 added, generation 3" in result.output, result.output
        assert passes(labs["edge-1"], 6060) and not passes(labs["edge-2"], 6060)
        rows = fleet.state().switches
        assert (rows["edge-1"].applied_generation, rows["edge-2"].applied_generation) == (3, 2), rows
        result = fleet_cli("rule", "disable", path, "tcp9090", "--all")
        assert result.exit_code == 1 and "switch edge-1: no rule 'tcp9090'" in result.output, result.output
        assert passes(labs["edge-2"], 9090) and fleet.state().generation == 3, "a refused change changed something"
        result = fleet_cli("rule", "add", path, "{name: tcp5050, from: inside, services: [tcp/5050], action: allow}",
                           "--all")
        assert result.exit_code == 0, result.output
        assert passes(labs["edge-1"], 5050) and passes(labs["edge-2"], 5050) and passes(labs["edge-1"], 6060)
        # a new generation from the fleet file keeps each switch's runtime changes on its new files
        (fleet.dir / "edge-1.yaml").write_text(policy(8080, 4040))
        apply(path)
        assert passes(labs["edge-1"], 4040) and passes(labs["edge-1"], 6060) and passes(labs["edge-1"], 5050)
        assert not passes(labs["edge-2"], 6060)
        status = {e["switch"]: e for e in json.loads(fleet_cli("status", path, "-o", "json").output)}
        assert all(e["applied_generation"] == 5 and not e["drifted"] for e in status.values()), status


def test_the_active_controller_killed_the_standby_takes_over_without_flow_churn(
        fleet: Fleet, lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(PORTS)
    (fleet.dir / "edge-1.yaml").write_text(policy(8080, udp=9000))
    sock_a, sock_b = Path(lab.dir) / "ctl-a.sock", Path(lab.dir) / "ctl-b.sock"
    path = fleet.write({"edge-1": f"db: '{lab.db_endpoint}', controllers: ['unix:{sock_a}', 'unix:{sock_b}']"})
    log_a, log_b = fleet.dir / "a.log", fleet.dir / "b.log"
    metrics_a, metrics_b = (f"127.0.0.1:{free_port()}" for _ in "ab")
    with fleet_controller(path, "ctl-a", [sock_a], log_a, "--metrics", metrics_a) as a:
        assert eventually(lambda: fleet.state().active_controller == "ctl-a", 30), log_a.read_text()
        apply(path)
        with fleet_controller(path, "ctl-b", [sock_b], log_b, "--metrics", metrics_b) as b:
            roles = eventually(lambda: len(r := controller_roles(lab)) == 2 and "other" not in r.values(), 30)
            assert roles and controller_roles(lab) == {f"unix:{sock_a}": "master", f"unix:{sock_b}": "slave"}
            assert passes(lab, 8080) and not passes(lab, 9090)
            before = flows_with_duration(lab)
            text_before = lab.ofctl(["dump-flows", "--no-stats"])
            assert fleet.state().role_generation == 1
            for where, active in ((metrics_a, 1.0), (metrics_b, 0.0)):  # both connected: master and slave
                samples = scrape(where)
                assert samples["ovsmgr_switch_connected"][0][1] == 1.0, (where, samples["ovsmgr_switch_connected"])
                assert samples["ovsmgr_fleet_active"][0][1] == active, (where, samples["ovsmgr_fleet_active"])

            with probe_stream(lab, "inside", "outside", "198.51.100.9", 9000, duration=12, interval=0.01) as received:
                time.sleep(3)
                a.kill()
                a.wait(10)
                taken = eventually(lambda: (s := fleet.state()).active_controller == "ctl-b"
                                   and s.switches["edge-1"].served_by == "ctl-b", 30)
                assert taken, log_b.read_text()
            assert b.poll() is None
            assert eventually(lambda: controller_roles(lab) == {f"unix:{sock_b}": "master"}, 15), controller_roles(lab)
            assert fleet.state().role_generation == 2
            assert scrape(metrics_b)["ovsmgr_fleet_active"][0][1] == 1.0
            after = flows_with_duration(lab)
            assert lab.ofctl(["dump-flows", "--no-stats"]) == text_before, "the take-over changed flows"
            assert after.keys() == before.keys()
            assert all(after[k] >= before[k] for k in before), "a flow was replaced (its duration restarted)"
            assert "reconciled" not in log_b.read_text(), "the standby pushed something when it took over"
            seqs = sorted({int(r["seq"]) for r in received})
            assert seqs, "no probe arrived"
            lost = [n for n in range(seqs[-1] + 1) if n not in set(seqs)]
            print(f"take-over: {len(seqs)} probes received, {len(lost)} lost, longest gap "
                  f"{max((b2 - b1 - 1 for b1, b2 in itertools.pairwise(seqs)), default=0)}")
            assert not lost, f"probes lost during the take-over: {lost[:20]}"
            assert passes(lab, 8080) and not passes(lab, 9090)


def test_agents_each_serve_their_own_switch_one_active_per_switch(
        fleet: Fleet, lab_factory: Callable[..., Lab]) -> None:
    labs = {name: lab_factory(PORTS) for name in ("edge-1", "edge-2")}
    (fleet.dir / "edge-1.yaml").write_text(policy(8080))
    (fleet.dir / "edge-2.yaml").write_text(policy(9090))
    socks = {n: Path(labs["edge-1"].dir) / f"{n}.sock" for n in ("a1", "a2")} | {"b": Path(labs["edge-2"].dir) / "b.sock"}
    path = fleet.write({
        "edge-1": f"db: '{labs['edge-1'].db_endpoint}', controllers: ['unix:{socks['a1']}', 'unix:{socks['a2']}'], "
                  "agent: true",
        "edge-2": f"db: '{labs['edge-2'].db_endpoint}', controllers: ['unix:{socks['b']}'], agent: true"})
    logs = {n: fleet.dir / f"{n}.log" for n in socks}
    with fleet_controller(path, "a1", [socks["a1"]], logs["a1"], agent="edge-1"), \
            fleet_controller(path, "b", [socks["b"]], logs["b"], agent="edge-2"):
        for n in ("a1", "b"):  # each the active agent of its own switch, at the same time
            assert eventually(lambda n=n: "is active" in logs[n].read_text(), 30), logs[n].read_text()
        with fleet_controller(path, "a2", [socks["a2"]], logs["a2"], agent="edge-1") as a2:
            apply(path)
            rows = fleet.state().switches
            assert (rows["edge-1"].served_by, rows["edge-2"].served_by) == ("a1", "b"), rows
            assert fleet.state().active_controller is None, "an agent is active for its switch, not the fleet"
            want = {f"unix:{socks['a1']}": "master", f"unix:{socks['a2']}": "slave"}
            assert eventually(lambda: controller_roles(labs["edge-1"]) == want, 30), controller_roles(labs["edge-1"])
            assert eventually(lambda: controller_roles(labs["edge-2"]) == {f"unix:{socks['b']}": "master"}, 30)
            assert passes(labs["edge-1"], 8080) and not passes(labs["edge-1"], 9090)
            assert passes(labs["edge-2"], 9090) and not passes(labs["edge-2"], 8080)
            assert "is active" not in logs["a2"].read_text() and a2.poll() is None
            assert "switch edge-1 (its rows only)" in logs["a1"].read_text()


def test_two_groups_of_switches_each_have_their_own_active_fleet_controller(
        fleet: Fleet, lab_factory: Callable[..., Lab]) -> None:
    labs = {name: lab_factory(PORTS) for name in ("edge-1", "edge-2")}
    (fleet.dir / "edge-1.yaml").write_text(policy(8080))
    (fleet.dir / "edge-2.yaml").write_text(policy(9090))
    socks = {n: Path(labs[n].dir) / "ctl.sock" for n in labs}
    path = fleet.write({
        "edge-1": f"db: '{labs['edge-1'].db_endpoint}', controllers: ['unix:{socks['edge-1']}']",
        "edge-2": f"db: '{labs['edge-2'].db_endpoint}', controllers: ['unix:{socks['edge-2']}'], group: east"})
    logs = {n: fleet.dir / f"{n}.log" for n in ("plain", "east", "agent")}
    with fleet_controller(path, "plain", [socks["edge-1"]], logs["plain"]), \
            fleet_controller(path, "east", [socks["edge-2"]], logs["east"], "--group", "east"):
        for n in ("plain", "east"):  # each the active controller of its own switches, at the same time
            assert eventually(lambda n=n: "is active" in logs[n].read_text(), 30), logs[n].read_text()
        assert "for 1 switches of group east" in logs["east"].read_text()
        apply(path)
        state = fleet.state()
        assert (state.switches["edge-1"].served_by, state.switches["edge-2"].served_by) == ("plain", "east")
        assert state.active_controller == "plain", "the fleet's active controller is that of no group"
        status = {e["switch"]: e for e in json.loads(fleet_cli("status", path, "-o", "json").output)}
        assert {n: (e["served_by"], e["applied_generation"]) for n, e in status.items()} == {
            "edge-1": ("plain", 1), "edge-2": ("east", 1)}, status
        assert eventually(lambda: controller_roles(labs["edge-2"]) == {f"unix:{socks['edge-2']}": "master"}, 30)
        assert passes(labs["edge-1"], 8080) and not passes(labs["edge-1"], 9090)
        assert passes(labs["edge-2"], 9090) and not passes(labs["edge-2"], 8080)
        # an agent for a switch its group's controllers serve is refused before it connects to anything
        with fleet_controller(path, "agent", [Path(labs["edge-2"].dir) / "agent.sock"], logs["agent"],
                              agent="edge-2") as agent:
            assert agent.wait(30) == 1
        assert "switch edge-2 is served by fleet controllers of group east" in logs["agent"].read_text()
        assert controller_roles(labs["edge-2"]) == {f"unix:{socks['edge-2']}": "master"}


def test_the_store_leader_killed_under_two_fleet_controllers(fleet: Fleet, lab_factory: Callable[..., Lab]) -> None:
    """The Raft leader dies while two fleet controllers serve a switch: their store connections move to
    the new leader and the lock is asked for again there; one controller is active after it (whichever
    gets the lock), the switch's flows do not change, no probe through it is lost, and the next
    generation rolls out through the new leader."""
    lab = lab_factory(PORTS)
    (fleet.dir / "edge-1.yaml").write_text(policy(8080, udp=9000))
    sock_a, sock_b = Path(lab.dir) / "ctl-a.sock", Path(lab.dir) / "ctl-b.sock"
    path = fleet.write({"edge-1": f"db: '{lab.db_endpoint}', controllers: ['unix:{sock_a}', 'unix:{sock_b}']"})
    log_a, log_b = fleet.dir / "a.log", fleet.dir / "b.log"
    with fleet_controller(path, "ctl-a", [sock_a], log_a) as a:
        assert eventually(lambda: fleet.state().active_controller == "ctl-a", 30), log_a.read_text()
        apply(path)
        with fleet_controller(path, "ctl-b", [sock_b], log_b) as b:
            want = {f"unix:{sock_a}": "master", f"unix:{sock_b}": "slave"}
            assert eventually(lambda: controller_roles(lab) == want, 30), controller_roles(lab)
            assert passes(lab, 8080) and not passes(lab, 9090)  # (the hosts' MACs learned, as a switch in use has)
            text_before, before = lab.ofctl(["dump-flows", "--no-stats"]), flows_with_duration(lab)
            leader = fleet.store.leader()
            assert leader is not None
            with probe_stream(lab, "inside", "outside", "198.51.100.9", 9000, duration=10, interval=0.01) as received:
                time.sleep(2)
                assert not fleet.store.stop_member(leader)
                assert eventually(lambda: fleet.store.leader() not in (None, leader), 30), "no new leader"

                def one_active() -> bool:
                    state = fleet.state()
                    roles = sorted(controller_roles(lab).values())
                    return (roles == ["master", "slave"] and state.active_controller in ("ctl-a", "ctl-b")
                            and state.switches["edge-1"].served_by == state.active_controller)
                assert eventually(one_active, 30), (controller_roles(lab), fleet.state())
                print(f"leader s{leader} killed: {fleet.state().active_controller} active, "
                      f"role generation {fleet.state().role_generation}")
            assert a.poll() is None and b.poll() is None
            after = flows_with_duration(lab)
            assert lab.ofctl(["dump-flows", "--no-stats"]) == text_before, "the leader's death changed flows"
            assert after.keys() == before.keys() and all(after[k] >= before[k] for k in before)
            seqs = sorted({int(r["seq"]) for r in received})
            assert seqs, "no probe arrived"
            lost = [n for n in range(seqs[-1] + 1) if n not in set(seqs)]
            assert not lost, f"probes lost while the store's leader changed: {lost[:20]}"

            (fleet.dir / "edge-1.yaml").write_text(policy(8080, 7070, udp=9000))
            apply(path)  # generation 2, through the new leader, applied by whichever controller is active
            assert passes(lab, 7070) and passes(lab, 8080) and not passes(lab, 9090)
            state = fleet.state()
            assert state.switches["edge-1"].applied_generation == 2 and state.switches["edge-1"].error is None
            fleet.store.start_member(leader)
            fleet.store.wait_formed()


def test_a_switch_cut_off_from_its_controller_stops_the_rollout_and_keeps_its_flows(
        fleet: Fleet, lab_factory: Callable[..., Lab]) -> None:
    labs = {name: lab_factory(PORTS) for name in ("edge-1", "edge-2", "edge-3")}
    for name in labs:
        (fleet.dir / f"{name}.yaml").write_text(policy(8080))
    socks = {name: Path(lab.dir) / "ctl.sock" for name, lab in labs.items()}
    path = fleet.write({name: f"db: '{lab.db_endpoint}', controllers: ['unix:{socks[name]}']"
                        for name, lab in labs.items()}, rollout="{canary: [edge-1], timeout: 5}")
    log = fleet.dir / "controller.log"
    with fleet_controller(path, "ctl-a", list(socks.values()), log):
        assert eventually(lambda: fleet.state().active_controller == "ctl-a", 30), log.read_text()
        apply(path)
        flows = labs["edge-2"].ofctl(["dump-flows", "--no-stats"])
        # the controller out of reach, the switch's configuration kept: still a controller to wait for (with none,
        # OVS would flush the bridge's flows), on a socket nobody listens on
        subprocess.run(["ovs-vsctl", f"--db={labs['edge-2'].db_endpoint}", "set-controller", "br0",
                        f"unix:{labs['edge-2'].dir}/nobody.sock"], check=True)
        assert eventually(lambda: not fleet.state().switches["edge-2"].connected, 20), "the controller did not see it go"

        for name in labs:
            (fleet.dir / f"{name}.yaml").write_text(policy(8080, 7070))
        result = fleet_cli("apply", path)
        assert result.exit_code == 1, result.output
        status = {e["switch"]: e for e in json.loads(fleet_cli("status", path, "-o", "json").output)}
        assert status["edge-1"]["applied_generation"] == 2 and passes(labs["edge-1"], 7070)
        assert status["edge-2"]["applied_generation"] == 1
        assert "the switch is not connected to ctl-a, its active controller" in str(status["edge-2"]["error"]), status
        assert status["edge-3"]["applied_generation"] == 1, "the rollout went on past the failed switch"
        assert "stopped before this switch: switch edge-2 failed" in str(status["edge-3"]["error"]), status
        assert not passes(labs["edge-3"], 7070) and passes(labs["edge-3"], 8080)
        # cut off, edge-2 keeps what it had: its flows (fail_mode=secure), so what it allowed and nothing more
        assert labs["edge-2"].ofctl(["dump-flows", "--no-stats"]) == flows
        assert passes(labs["edge-2"], 8080) and not passes(labs["edge-2"], 7070)


def test_a_fleet_lab_runs_its_switches_controllers_over_tls(tmp_path: Path) -> None:
    """`fleet lab up` of a fleet file whose switches name two controllers (HA): the lab says how to run
    them (each on a TLS port of its own, reached over the switches' management links), they serve the
    lab's switches (one active, one standby), and the switches keep the lab's passive listener, so
    `fleet status` still reads their flows."""
    from ovsmgr.fleet.fleetfile import load_fleet, load_policies
    from ovsmgr.lab.fleet import FleetLab
    from ovsmgr.southbound.tls import configure

    from .test_fleet import _no_root_skip

    _no_root_skip()
    (tmp_path / "edge-1.yaml").write_text(policy(8080))
    (tmp_path / "edge-2.yaml").write_text(policy(9090))
    source = tmp_path / "source.yaml"
    source.write_text("version: 1\ntls: {private_key: k.pem, certificate: c.pem, ca_cert: ca.pem}\n"
                      "controllers: ['ssl:192.0.2.1:6653', 'ssl:192.0.2.2:6653']\n"
                      "rollout: {canary: [edge-1], timeout: 30}\n"
                      "switches:\n  edge-1: {policy: edge-1.yaml}\n  edge-2: {policy: edge-2.yaml}\n")
    fleet = load_fleet(source)
    name = f"c{secrets.token_hex(3)}"
    lab = FleetLab(name, Path("/tmp") / f"ovsmgr-{name}")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        status = lab.up(fleet, load_policies(fleet))
        configure(lab.tls)
        path = status["fleet_file"]
        assert [c["serves"] for c in status["controllers"]] == [["edge-1", "edge-2"]] * 2
        logs = [tmp_path / f"ctl-{i}.log" for i in range(2)]
        for server, log in zip(status["controllers"], logs, strict=True):
            assert server["command"][:2] == ["ovsmgr", "controller"] and "ssl:0.0.0.0:" in " ".join(server["command"])
            with open(log, "ab") as err:
                procs.append(subprocess.Popen([OVSMGR, *server["command"][1:]], stdout=subprocess.DEVNULL, stderr=err))
        names = {server["command"][-1] for server in status["controllers"]}
        with FleetStore(lab.store.endpoints) as store:
            assert eventually(lambda: store.state().active_controller in names, 30), [log.read_text() for log in logs]
        result = fleet_cli("apply", path)
        assert result.exit_code == 0, (result.output, [log.read_text() for log in logs])
        entries = {e["switch"]: e for e in json.loads(fleet_cli("status", path, "-o", "json").output)}
        active = entries["edge-1"]["served_by"]
        assert active in names and all(e["served_by"] == active and e["applied_generation"] == 1 and e["connected"]
                                       and not e["drifted"] and e["error"] is None for e in entries.values()), json.dumps(entries)
        labs = lab.labs()
        assert passes(labs["edge-1"], 8080) and not passes(labs["edge-1"], 9090)
        assert passes(labs["edge-2"], 9090) and not passes(labs["edge-2"], 8080)
        for sw in labs.values():
            roles = eventually(lambda sw=sw: sorted(r for t, r in controller_roles(sw).items() if t.startswith("ssl:"))
                               == ["master", "slave"], 30)
            assert roles, (controller_roles(sw), [log.read_text()[-3000:] for log in logs])
            targets = subprocess.run(["ovs-vsctl", f"--db={sw.db_endpoint}", "get-controller", "br0"],
                                     capture_output=True, text=True, check=True).stdout.split()
            assert any(t.startswith("pssl:6653:") for t in targets), f"the lab's listener is gone: {targets}"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        lab.down()
