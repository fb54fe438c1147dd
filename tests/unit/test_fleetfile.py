"""The fleet file: strict YAML, every mistake at file:line:column, every switch's policy validated
before anything is contacted; the rollout's order."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.fleet.fleetfile import load_fleet, load_policies
from ovsmgr.fleet.rollout import batches
from ovsmgr.policy import PolicyError
from tests.support.policies import two_ports

GOOD_POLICY = two_ports("firewall:\n  default: drop\n  rules:\n    - {name: out, from: inside, action: allow}\n")
BAD_POLICY = two_ports("firewall:\n  default: drop\n  rules:\n    - {name: out, from: nowhere, action: allow}\n")


def fleet(tmp_path: Path, body: str, policies: dict[str, str] | None = None) -> str:
    for name, text in (policies or {"good.yaml": GOOD_POLICY}).items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "fleet.yaml"
    path.write_text(body)
    return str(path)


FLEET = """version: 1
store: [unix:/nonexistent/s1.sock, unix:/nonexistent/s2.sock]
rollout: {canary: [b], batch: 2, stop_on_failure: false, confirm: 30}
switches:
  a: {policy: good.yaml, db: unix:/nonexistent/a.sock, datapath_id: "0x1"}
  b: {policy: [good.yaml], db: unix:/nonexistent/b.sock}
  c: {policy: good.yaml, db: unix:/nonexistent/c.sock}
  d: {policy: good.yaml, db: unix:/nonexistent/d.sock}
"""


def messages(path: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_fleet(path)
    return [str(d) for d in info.value.diagnostics]


def test_a_fleet_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    loaded = load_fleet(fleet(tmp_path, FLEET))
    assert list(loaded.switches) == ["a", "b", "c", "d"]
    assert loaded.switches["a"].policy == (str(tmp_path / "good.yaml"),)
    assert loaded.switches["a"].datapath_id == 1
    assert loaded.rollout.canary == ("b",) and loaded.rollout.batch == 2 and not loaded.rollout.stop_on_failure
    assert set(load_policies(loaded)) == {"a", "b", "c", "d"}


def test_the_rollout_goes_canaries_first_then_batches_in_file_order(tmp_path: Path) -> None:
    loaded = load_fleet(fleet(tmp_path, FLEET))
    assert batches(loaded, list(loaded.switches)) == [["b"], ["a", "c"], ["d"]]


@pytest.mark.parametrize(("change", "where", "says"), [
    (("  a: {policy: good.yaml,", "  a: {polcy: good.yaml,"), ":5:7:", 'unknown key "polcy"'),
    (("canary: [b]", "canary: [e]"), ":3:20:", 'canary "e" is not a switch'),
    (("unix:/nonexistent/s2.sock", "tcp:127.0.0.1:6641"), ":2:36:", "plain TCP is refused"),
    (("b.sock}", 'b.sock, datapath_id: "0x01"}'), ":6:", "datapath_id 0x0000000000000001 is also switch a's"),
    (("batch: 2", "batch: 0"), ":3:", "batch"),
    (("version: 1", "version: 2"), ":1:", "only version 1"),
    (("c.sock}", "c.sock, agent: true}"), ":7:", "agent: is about who serves the switch, but it has no controllers"),
    (("c.sock}", "c.sock, group: east}"), ":7:", "group: is about who serves the switch"),
    (("c.sock}", "c.sock, group: 'east west'}"), ":7:", "group"),
])
def test_mistakes_are_reported_at_their_place(tmp_path: Path, change: tuple[str, str], where: str, says: str) -> None:
    found = messages(fleet(tmp_path, FLEET.replace(*change)))
    assert any(where in m and says in m for m in found), found


def test_ssl_endpoints_need_tls_files(tmp_path: Path) -> None:
    found = messages(fleet(tmp_path, FLEET.replace("unix:/nonexistent/s1.sock", "ssl:127.0.0.1:6641")))
    assert any("ssl: endpoints need tls:" in m for m in found), found


def test_one_bad_policy_fails_the_whole_fleet_with_its_place_and_switch(tmp_path: Path) -> None:
    text = FLEET.replace("c: {policy: good.yaml", "c: {policy: bad.yaml")
    loaded = load_fleet(fleet(tmp_path, text, {"good.yaml": GOOD_POLICY, "bad.yaml": BAD_POLICY}))
    with pytest.raises(PolicyError) as info:
        load_policies(loaded)
    found = [str(d) for d in info.value.diagnostics]
    assert found and all(m.startswith(f"{tmp_path / 'bad.yaml'}:") and m.endswith("(switch c)") for m in found)


def test_fleet_apply_with_a_bad_policy_contacts_nothing(tmp_path: Path) -> None:
    """The store and the switches are unreachable paths: an apply that tried them would say so."""
    text = FLEET.replace("c: {policy: good.yaml", "c: {policy: bad.yaml")
    path = fleet(tmp_path, text, {"good.yaml": GOOD_POLICY, "bad.yaml": BAD_POLICY})
    result = CliRunner().invoke(main, ["fleet", "apply", path])
    assert result.exit_code == 1
    assert "bad.yaml:" in result.output and "nothing was changed on any switch" in result.output
    assert "nonexistent" not in result.output


@pytest.mark.parametrize(("endpoint", "problem"), [
    ("ssl:10.0.0.5:6653", None), ("unix:/run/ovsmgr/ctl.sock", None), ("tcp:127.0.0.1:6653", None),
    ("tcp:10.0.0.5:6653", "plain TCP only to its own loopback"), ("unix:ctl.sock", "unix:/ABSOLUTE/PATH"),
])
def test_switches_reach_controllers_over_tls_or_on_their_own_host(endpoint: str, problem: str | None) -> None:
    from ovsmgr.fleet.fleetfile import endpoint_problem

    found = endpoint_problem(endpoint, client=False)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_a_fleet_controller_serves_switches_with_controllers_that_it_can_tell_apart(tmp_path: Path) -> None:
    from ovsmgr.fleet.controller import served_switches
    from ovsmgr.fleet.targets import FleetError

    with pytest.raises(FleetError, match="no switch has controllers"):
        served_switches(load_fleet(fleet(tmp_path, FLEET)))
    served = FLEET.replace("rollout:", "controllers: ['unix:/run/ovsmgr/ctl.sock']\nrollout:")
    assert [s.name for s in served_switches(load_fleet(fleet(tmp_path, served)))] == ["a", "b", "c", "d"]
    anonymous = served.replace("  d: {policy: good.yaml, db: unix:/nonexistent/d.sock}", "  d: {policy: good.yaml}")
    with pytest.raises(FleetError, match="switch d has neither datapath_id nor db"):
        served_switches(load_fleet(fleet(tmp_path, anonymous)))


def test_each_switch_is_served_by_one_kind_of_controller_its_group_s_or_its_own_agents(tmp_path: Path) -> None:
    from ovsmgr.fleet.controller import served_switches
    from ovsmgr.fleet.targets import FleetError

    text = (FLEET.replace("rollout:", "controllers: ['unix:/run/ovsmgr/ctl.sock']\nrollout:")
            .replace("b.sock}", "b.sock, group: east}").replace("c.sock}", "c.sock, group: east}")
            .replace("d.sock}", "d.sock, agent: true}"))
    loaded = load_fleet(fleet(tmp_path, text))
    assert [s.name for s in served_switches(loaded)] == ["a"]
    assert [s.name for s in served_switches(loaded, group="east")] == ["b", "c"]
    assert [s.name for s in served_switches(loaded, agent="d")] == ["d"]
    with pytest.raises(FleetError, match="switch b is served by fleet controllers of group east; an agent serves only"):
        served_switches(loaded, agent="b")
    with pytest.raises(FleetError, match="no switch for fleet controllers of group west: groups \\(no group\\), east"):
        served_switches(loaded, group="west")
    both = text.replace("d.sock, agent: true}", "d.sock, agent: true, group: east}")
    assert any("agent: true says its own agents do" in m for m in messages(fleet(tmp_path, both)))


def test_each_switch_s_agents_and_each_group_share_a_lock_of_their_own_with_a_name_ovsdb_takes() -> None:
    import re

    from ovsmgr.fleet.controller import agent_lock, group_lock
    from ovsmgr.fleet.store import CONTROLLER_LOCK

    names = {agent_lock(n) for n in ("edge-1", "edge.1", "edge_1", "EDGE-1")}
    groups = {group_lock(g) for g in ("edge-1", "east", "EAST")}
    assert len(names) == 4 and len(groups) == 3 and CONTROLLER_LOCK not in names | groups
    assert not names & groups and group_lock(None) == CONTROLLER_LOCK
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names | groups)  # an OVSDB <id>


def test_status_of_a_controller_served_switch_without_db_is_what_its_controller_wrote(tmp_path: Path) -> None:
    from ovsmgr.fleet.state import StoreState, SwitchRow
    from ovsmgr.fleet.status import fleet_status

    class Store:
        def __init__(self) -> None:
            self.observed: list[str] = []

        def state(self) -> StoreState:
            return StoreState(2, switches={"a": SwitchRow("a", "br0", desired_generation=2, applied_generation=2,
                                                          connected=True, served_by="ctl-a")})

        def observe(self, name: str, **columns: object) -> None:
            self.observed.append(name)

    body = FLEET.replace('  a: {policy: good.yaml, db: unix:/nonexistent/a.sock, datapath_id: "0x1"}',
                         '  a: {policy: good.yaml, datapath_id: "0x1", controllers: [unix:/run/ovsmgr/ctl.sock]}')
    store = Store()
    entries = {e["switch"]: e for e in fleet_status(load_fleet(fleet(tmp_path, body)), store)}  # type: ignore[arg-type]
    assert entries["a"]["connected"] and entries["a"]["error"] is None and "a" not in store.observed
    assert entries["a"]["served_by"] == "ctl-a" and entries["b"]["served_by"] is None
    assert entries["b"]["error"] == "not in the store: run `ovsmgr fleet apply`"
