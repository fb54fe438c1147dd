"""Lab pieces that need no root: address picking, spec validation, state handling."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli.lab import lab as lab_group
from ovsmgr.lab import netns
from ovsmgr.lab.instance import OvsInstance
from ovsmgr.lab.ovs import (
    Lab,
    LabError,
    LabPort,
    LabSpec,
    lab_spec_from_policy,
    validate_spec,
)
from ovsmgr.southbound.ovsdb import OvsdbError, SwitchDB


@dataclass(frozen=True)
class FakePort:
    ofport: int


@dataclass(frozen=True)
class FakeZone:
    ports: list[str]
    networks: list[str] = field(default_factory=list)
    vlan: int | None = None


@dataclass(frozen=True)
class FakeSwitch:
    bridge: str
    ports: dict[str, FakePort]


@dataclass(frozen=True)
class FakePolicy:
    switch: FakeSwitch
    zones: dict[str, FakeZone]


def policy(ports: dict[str, int], zones: dict[str, FakeZone]) -> FakePolicy:
    return FakePolicy(FakeSwitch("br0", {n: FakePort(o) for n, o in ports.items()}), zones)


def addresses(spec: LabSpec) -> dict[str, str | None]:
    return {p.name: p.address for p in spec.ports}


def test_hosts_are_numbered_from_10_per_zone_network() -> None:
    pol = policy({"lan0": 1, "lan1": 2, "dmz0": 3, "wan0": 4}, {
        "lan": FakeZone(["lan0", "lan1"], ["10.0.0.0/24", "10.9.0.0/16"]),
        "dmz": FakeZone(["dmz0"], ["fd00:1::/64"]),
        "wan": FakeZone(["wan0"], ["0.0.0.0/0", "203.0.113.0/24"]),
    })
    spec = lab_spec_from_policy(pol, "netdev", {}, "x")
    assert (spec.bridge, spec.datapath, spec.name) == ("br0", "netdev", "x")
    assert [(p.name, p.ofport) for p in spec.ports] == [("lan0", 1), ("lan1", 2), ("dmz0", 3), ("wan0", 4)]
    assert addresses(spec) == {"lan0": "10.0.0.10/24", "lan1": "10.0.0.11/24",
                               "dmz0": "fd00:1::10/64", "wan0": "203.0.113.10/24"}


def test_ports_without_networks_share_the_fallback_network() -> None:
    pol = policy({"inside": 1, "outside": 2, "mgmt": 3}, {
        "inside": FakeZone(["inside"]), "outside": FakeZone(["outside"]),
    })
    assert addresses(lab_spec_from_policy(pol, "dpdk", {}, "x")) == {
        "inside": "198.51.100.10/24", "outside": "198.51.100.11/24", "mgmt": "198.51.100.12/24"}


def test_overrides_win_and_their_addresses_are_skipped() -> None:
    pol = policy({"a": 1, "b": 2, "c": 3}, {"z": FakeZone(["a", "b", "c"], ["10.0.0.0/24"])})
    spec = lab_spec_from_policy(pol, "netdev", {"c": "10.0.0.10/24"}, "x")
    assert addresses(spec) == {"a": "10.0.0.11/24", "b": "10.0.0.12/24", "c": "10.0.0.10/24"}


def test_a_trunk_host_gets_an_address_per_vlan_zone_on_a_vlan_subinterface() -> None:
    pol = policy({"trunk0": 1, "wan0": 2, "only": 3}, {
        "guests": FakeZone(["trunk0"], ["10.20.0.0/24"], 20), "staff": FakeZone(["trunk0", "only"], ["10.30.0.0/24"], 30),
        "mgmt": FakeZone(["trunk0"], ["10.99.0.0/24"]), "wan": FakeZone(["wan0"], ["198.51.100.0/24"]),
    })
    ports = {p.name: p for p in lab_spec_from_policy(pol, "netdev", {}, "x").ports}
    assert (ports["trunk0"].address, ports["trunk0"].vlans) == ("10.99.0.10/24", ((20, "10.20.0.10/24"),
                                                                                 (30, "10.30.0.10/24")))
    assert (ports["only"].address, ports["only"].vlans) == (None, ((30, "10.30.0.11/24"),)), \
        "a port in VLAN zones only has no untagged address"
    assert (ports["wan0"].address, ports["wan0"].vlans) == ("198.51.100.10/24", ())


def test_network_objects_work_like_strings() -> None:
    zone = FakeZone(["a"], [ipaddress.ip_network("10.1.0.0/16")])  # type: ignore[list-item]
    spec = lab_spec_from_policy(policy({"a": 1}, {"z": zone}), "netdev", {}, "x")
    assert addresses(spec) == {"a": "10.1.0.10/16"}


def test_unknown_override_and_full_network_are_errors() -> None:
    pol = policy({"a": 1, "b": 2}, {"z": FakeZone(["a", "b"], ["10.0.0.8/29"])})
    with pytest.raises(LabError, match=r"unknown port.*nope"):
        lab_spec_from_policy(pol, "netdev", {"nope": "10.0.0.1/24"}, "x")
    with pytest.raises(LabError, match="no room"):
        lab_spec_from_policy(pol, "netdev", {}, "x")


@pytest.mark.parametrize(("ports", "message"), [
    ([LabPort("a", 1, "10.0.0.1/24"), LabPort("a", 2)], "port names are not unique"),
    ([LabPort("a", 1), LabPort("b", 1)], "ofports are not unique"),
    ([LabPort("a", 0)], "ofport 0"),
    ([LabPort("a-very-long-port-name", 1)], "must have 1..15"),
    ([LabPort("a", 1, "10.0.0.1/24"), LabPort("b", 2, "10.0.0.1/16")], "addresses are not unique"),
    ([LabPort("a", 1, "banana")], "banana"),
    ([LabPort("br0", 1)], "differ from the bridge"),
    ([LabPort("a", 1, None, ((20, "10.0.0.1/24"), (20, "10.0.1.1/24")))], "VLAN ids"),
    ([LabPort("a", 1, None, ((4095, "10.0.0.1/24"),))], "VLAN ids"),
    ([LabPort("a", 1, "10.0.0.1/24", ((20, "10.0.0.1/16"),))], "addresses are not unique"),
])
def test_validate_spec_refuses(ports: list[LabPort], message: str) -> None:
    with pytest.raises(LabError, match=message):
        validate_spec(LabSpec("br0", "netdev", ports, "x"))


def test_dpdk_port_names_leave_room_for_the_veth_prefix() -> None:
    validate_spec(LabSpec("br0", "netdev", [LabPort("fifteen-chars-x", 1)], "x"))
    with pytest.raises(LabError, match=r"1\.\.13"):
        validate_spec(LabSpec("br0", "dpdk", [LabPort("fifteen-chars-x", 1)], "x"))


def test_a_lab_that_never_ran_is_down(tmp_path: Path) -> None:
    lab = Lab("nothing", tmp_path)
    lab.down()
    status = lab.status()
    assert status["up"] is False and status["status"] == "down" and status["ports"] == []
    with pytest.raises(LabError, match="not up"):
        lab.exec("lan0", ["true"])


def test_lab_dir_comes_from_env_or_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OVSMGR_LAB_DIR", raising=False)
    assert Lab("abc").dir == Path("/run/ovsmgr/lab-abc")
    monkeypatch.setenv("OVSMGR_LAB_DIR", str(tmp_path))
    assert Lab("abc").dir == tmp_path
    assert Lab("abc", "/elsewhere").dir == Path("/elsewhere")


@pytest.mark.parametrize("name", ["", "../etc", "a b", "-x", "x" * 40])
def test_lab_names_must_be_safe_for_namespaces_and_paths(name: str) -> None:
    with pytest.raises(LabError, match="lab name"):
        Lab(name, "/nonexistent")


def test_up_refuses_a_spec_for_another_lab(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="spec is for lab 'b'"):
        Lab("a", tmp_path).up(LabSpec("br0", "netdev", [], "b"))


def test_switchdb_unreachable_endpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(OvsdbError, match=r"no-db\.sock"):
        SwitchDB(f"unix:{tmp_path}/no-db.sock", timeout=2)


def test_cli_rejects_malformed_host() -> None:
    result = CliRunner().invoke(lab_group, ["up", "x.yaml", "--host", "lan0-10.0.0.1"])
    assert result.exit_code == 2 and "PORT=ADDR/PREFIX" in result.output


def test_cli_status_of_a_lab_that_is_not_up(tmp_path: Path) -> None:
    result = CliRunner(env={"OVSMGR_LAB_DIR": str(tmp_path)}).invoke(
        lab_group, ["status", "--name", "idle", "-o", "json"])
    assert result.exit_code == 0 and '"up": false' in result.output


def test_an_ovs_of_its_own_is_userspace_and_finds_its_sockets_in_its_directory(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="netdev or dpdk, not system"):
        OvsInstance(tmp_path, "x-sw", "system")  # type: ignore[arg-type]
    ovs = OvsInstance(tmp_path, "x-sw", "dpdk")
    env = ovs.env()
    assert {env[k] for k in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR")} == {str(tmp_path)}
    assert (ovs.db_endpoint, ovs.mgmt_socket("br0")) == (f"unix:{tmp_path}/db.sock", f"{tmp_path}/br0.mgmt")
    assert ovs.appctl_target() is None and ovs.stop() == []  # nothing started, nothing to stop
    ovs.pids["ovs-vswitchd"] = os.getpid()  # a live pid that is not this instance's daemon
    assert ovs.appctl_target() == f"{tmp_path}/ovs-vswitchd.{os.getpid()}.ctl"
    assert ovs.stop_daemon("ovs-vswitchd") == [] and ovs.pids == {}  # and it is left alone


def test_a_namespace_that_does_not_exist_has_no_processes() -> None:
    assert netns.pids("ovsmgr-no-such-namespace") == []
    assert not netns.exists("ovsmgr-no-such-namespace")
    netns.delete("ovsmgr-no-such-namespace")  # nothing to do
