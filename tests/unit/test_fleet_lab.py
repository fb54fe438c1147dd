"""`ovsmgr fleet lab`, its pure parts: management addresses and link names, the lab's fleet file, and
what `fleet lab up` refuses before it starts anything."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.fleet.fleetfile import load_fleet, load_policies
from ovsmgr.fleet.targets import record_dir, switch_target
from ovsmgr.lab.fleet import (
    IFNAMSIZ,
    MGMT_RANGE,
    FleetLab,
    allocate_mgmt,
    host_networks,
    lab_fleet_text,
    veth_name,
)
from ovsmgr.lab.ovs import LabError
from ovsmgr.southbound.tls import TlsFiles

from .test_fleetfile import BAD_POLICY, GOOD_POLICY, fleet

IP_ADDR = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0\\       valid_lft forever preferred_lft forever
7: ofm123456-1    inet 100.127.224.1/30 scope global ofm123456-1\\       valid_lft forever preferred_lft forever
"""


def test_management_networks_skip_what_the_host_has() -> None:
    in_use = host_networks(IP_ADDR)
    assert in_use == [ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("10.1.2.0/24"),
                      ipaddress.IPv4Network("100.127.224.0/30")]
    nets = allocate_mgmt(3, in_use)
    assert [str(n) for n in nets] == ["100.127.224.4/30", "100.127.224.8/30", "100.127.224.12/30"]
    assert all(n.subnet_of(MGMT_RANGE) for n in nets)
    wide = [ipaddress.IPv4Network("100.127.224.0/22")]  # another lab's, or the site's
    assert str(allocate_mgmt(1, wide)[0]) == "100.127.228.0/30"
    with pytest.raises(LabError, match="no 2 free /30"):
        allocate_mgmt(2, [], pool=ipaddress.IPv4Network("100.127.224.0/30"))


def test_management_link_names_fit_and_differ_per_lab() -> None:
    names = {veth_name(lab, i) for lab in ("fleet", "fleet2", "a" * 32) for i in (1, 2, 999)}
    assert len(names) == 9 and all(len(n) <= IFNAMSIZ for n in names)
    assert veth_name("fleet", 1) == veth_name("fleet", 1), "down finds it again from the name"
    with pytest.raises(LabError, match="too many switches"):
        veth_name("fleet", 100000)


def test_the_labs_fleet_file_keeps_switches_policies_and_rollout(tmp_path: Path) -> None:
    source = load_fleet(fleet(tmp_path, """version: 1
store: [ssl:10.0.0.1:6641]
tls: {private_key: k.pem, certificate: c.pem, ca_cert: ca.pem}
rollout: {canary: [b], batch: 2, stop_on_failure: false, confirm: 30, timeout: 20}
switches:
  a: {policy: good.yaml, db: "ssl:10.1.0.1:6640", openflow: "ssl:10.1.0.1:6653", datapath_id: "0x1"}
  b: {policy: [good.yaml, more.yaml], db: "ssl:10.1.0.2:6640", openflow: "ssl:10.1.0.2:6653"}
""", {"good.yaml": GOOD_POLICY, "more.yaml": "version: 1\n"}))
    ours = TlsFiles(Path("/lab/pki/ovsmgr-privkey.pem"), Path("/lab/pki/ovsmgr-cert.pem"), Path("/lab/pki/ca.pem"))
    text = lab_fleet_text(source, ["ssl:127.0.0.1:1001", "ssl:127.0.0.1:1002"], ours,
                          {"a": "100.127.224.2", "b": "100.127.224.6"}, Path("/lab/records"))
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "fleet.yaml").write_text(text)
    lab = load_fleet(tmp_path / "lab" / "fleet.yaml")
    assert lab.store == ("ssl:127.0.0.1:1001", "ssl:127.0.0.1:1002") and lab.tls == ours
    assert lab.rollout == source.rollout
    assert list(lab.switches) == ["a", "b"]
    b = lab.switches["b"]
    assert b.policy == (str(tmp_path / "good.yaml"), str(tmp_path / "more.yaml")), "the originals, absolute"
    assert (b.db, b.openflow) == ("ssl:100.127.224.6:6640", "ssl:100.127.224.6:6653")
    assert lab.switches["a"].datapath_id is None, "the lab's bridges have their own datapath ids"
    assert record_dir(b) == Path("/lab/records/b") and switch_target(b).state_dir == Path("/lab/records/b")


def test_state_dir_is_relative_to_the_fleet_file_and_defaults_to_the_state_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = "version: 1\nswitches:\n  a: {policy: good.yaml, db: unix:/nonexistent/a.sock}\n"
    monkeypatch.setenv("OVSMGR_STATE_DIR", str(tmp_path / "state"))
    assert record_dir(load_fleet(fleet(tmp_path, body)).switches["a"]) == tmp_path / "state" / "fleet" / "a"
    loaded = load_fleet(fleet(tmp_path, body.replace("switches:", "state_dir: records\nswitches:")))
    assert record_dir(loaded.switches["a"]) == tmp_path / "records" / "a"


def test_up_refuses_a_bad_policy_before_starting_anything(tmp_path: Path) -> None:
    lab_dir = Path("/run/ovsmgr/fleet-lab-refused-by-check")
    policies = {"good.yaml": GOOD_POLICY, "bad.yaml": BAD_POLICY}
    path = fleet(tmp_path, "version: 1\nswitches:\n  a: {policy: good.yaml}\n  b: {policy: bad.yaml}\n", policies)
    result = CliRunner().invoke(main, ["fleet", "lab", "up", path, "--name", "refused-by-check"])
    assert result.exit_code == 1
    assert f"{tmp_path / 'bad.yaml'}:13:25: error: unknown zone" in result.output and "(switch b)" in result.output
    assert f"{path}: nothing was started" in result.output
    assert not lab_dir.exists()


def test_the_lab_runs_one_controller_per_group_and_controller_and_one_per_agent(tmp_path: Path) -> None:
    from ovsmgr.lab.fleet import controller_servers, server_command

    source = load_fleet(fleet(tmp_path, """version: 1
tls: {private_key: k.pem, certificate: c.pem, ca_cert: ca.pem}
controllers: ["ssl:10.0.0.9:6653", "ssl:10.0.0.10:6653"]
switches:
  a: {policy: good.yaml, db: "ssl:10.1.0.1:6640"}
  b: {policy: good.yaml, db: "ssl:10.1.0.2:6640", group: east, controllers: ["ssl:10.2.0.9:6653"]}
  c: {policy: good.yaml, db: "ssl:10.1.0.3:6640", agent: true, controllers: ["tcp:127.0.0.1:6653"]}
  d: {policy: good.yaml, db: "ssl:10.1.0.4:6640"}
"""))
    servers = controller_servers(source, iter(range(7001, 7100)))
    assert [(s["key"], s["port"], s["switches"]) for s in servers] == [
        ("group::0", 7001, ["a", "d"]), ("group::1", 7002, ["a", "d"]), ("group:east:0", 7003, ["b"]),
        ("agent:c:0", 7004, ["c"])]
    commands = [server_command("lab1", Path("/lab/fleet.yaml"), s, "100.127.224.9") for s in servers]
    assert commands[0] == ["ovsmgr", "controller", "--fleet", "/lab/fleet.yaml", "--listen", "ssl:0.0.0.0:7001",
                           "--name", "lab1-ctl-0"]
    assert commands[2][4:6] == ["--group", "east"]
    assert commands[3] == ["ovsmgr", "agent", "--fleet", "/lab/fleet.yaml", "--switch", "c",
                           "--listen", "ssl:100.127.224.9:7004", "--name", "lab1-c-0"]
    ours = TlsFiles(Path("/lab/k.pem"), Path("/lab/c.pem"), Path("/lab/ca.pem"))
    hosts = {"a": "100.127.224.1", "b": "100.127.224.5", "c": "100.127.224.9", "d": "100.127.224.13"}
    controllers = {"a": [f"ssl:{hosts['a']}:7001", f"ssl:{hosts['a']}:7002"], "b": [f"ssl:{hosts['b']}:7003"],
                   "c": [f"ssl:{hosts['c']}:7004"], "d": [f"ssl:{hosts['d']}:7001", f"ssl:{hosts['d']}:7002"]}
    text = lab_fleet_text(source, ["ssl:127.0.0.1:1001"], ours, {n: "100.127.224.2" for n in hosts},
                          Path("/lab/records"), controllers)
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "fleet.yaml").write_text(text)
    lab = load_fleet(tmp_path / "lab" / "fleet.yaml")
    assert {n: s.controllers for n, s in lab.switches.items()} == {n: tuple(c) for n, c in controllers.items()}
    assert (lab.switches["b"].group, lab.switches["c"].agent, lab.switches["a"].group) == ("east", True, None)


def test_lab_switch_names_must_make_namespace_names(tmp_path: Path) -> None:
    loaded = load_fleet(fleet(tmp_path, "version: 1\nswitches:\n  " + "e" * 30 + ": {policy: good.yaml}\n"))
    with pytest.raises(LabError, match="longer than 32 characters"):
        FleetLab("fleet", tmp_path / "lab").check(loaded, load_policies(loaded))
    assert not (tmp_path / "lab").exists()


def test_a_lab_that_is_not_up_says_so(tmp_path: Path) -> None:
    status = FleetLab("nothing", tmp_path / "lab").status()
    assert status["status"] == "down" and status["switches"] == [] and status["fleet_file"] is None
    FleetLab("nothing", tmp_path / "lab").down()  # nothing to do, no error


def test_a_lab_of_the_same_name_that_is_up_is_not_taken_over(tmp_path: Path) -> None:
    loaded = load_fleet(fleet(tmp_path, "version: 1\nswitches:\n  edge-1: {policy: good.yaml}\n"))
    lab = FleetLab("fleet", tmp_path / "lab")
    (tmp_path / "lab" / "switches" / "edge-1").mkdir(parents=True)
    (tmp_path / "lab" / "switches" / "edge-1" / "lab.json").write_text("{}")
    with pytest.raises(LabError, match="a lab named fleet-edge-1 is up already"):
        lab.check(loaded, load_policies(loaded))
    assert not (tmp_path / "lab" / "fleet-lab.json").exists()
