"""Health checks of load-balanced DNAT backends: real TCP connects on the loopback, and the
engine taking a backend out of its select group (and back) against a fake of OVS's bundles."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ovsmgr.compiler import compile_policy
from ovsmgr.controller.engine import Engine
from ovsmgr.controller.health import HealthChecker, apply_health
from ovsmgr.controller.policydata import resolve_data
from ovsmgr.lab.netns import free_port
from ovsmgr.policy import load_policy_text
from ovsmgr.southbound.openflow import is_group
from ovsmgr.southbound.openflow.groups import decode_group
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.incremental import IncrementalFlows
from ovsmgr.switch.plan import desired_flows
from tests.support.fakes import FakeTable
from tests.support.policies import two_ports


@contextmanager
def _listening(address: str, port: int) -> Iterator[None]:
    with socket.create_server((address, port)):
        yield


def _policy(port_a: int, port_b: int, check: str = "{interval: 5, timeout: 1, failures: 2}") -> str:
    return two_ports(f"""
addresses:
  admins: [10.0.0.10]
firewall:
  default: drop
  rules:
    - {{name: admin-in, from: outside, src: "@admins", services: [tcp/22], action: allow}}
    - {{name: web-in, from: outside, dst: 200.200.200.200, services: [tcp/443], action: allow}}
nat:
  - name: web-pool
    type: dnat
    from: outside
    dst: 200.200.200.200
    services: [tcp/443]
    backends:
      - {{address: 127.0.0.1, port: {port_a}, weight: 3}}
      - {{address: 127.0.0.2, port: {port_b}}}
    health_check: {check}
""")


def test_a_backend_that_refuses_connects_is_taken_out_after_its_failures_and_comes_back() -> None:
    port_a, port_b = free_port(), free_port()
    policy = load_policy_text(_policy(port_a, port_b), "pool.yaml")
    reported: list[frozenset[object]] = []
    checker = HealthChecker(lambda: policy.nat, reported.append)
    with _listening("127.0.0.1", port_a):
        checker.round(now=0.0)
        assert reported == [] and all(s["up"] for s in checker.report()), "one failure of two: still up"
        checker.round(now=1.0)
        assert reported == [], "not due before its interval"
        checker.round(now=5.0)
        (down,) = reported
        assert down == frozenset({("web-pool", policy.nat[0].backends[1].address, port_b)})
        state = {s["address"]: s for s in checker.report()}
        assert state["127.0.0.2"]["up"] is False and state["127.0.0.2"]["failures"] == 2
        assert state["127.0.0.2"]["last_error"] and state["127.0.0.1"]["up"] is True
        with _listening("127.0.0.2", port_b):
            checker.round(now=10.0)
    assert reported[-1] == frozenset(), "the first successful connect brings it back"
    compiled = compile_policy(policy.__class__(**{**policy.__dict__, "nat": apply_health(policy.nat, down)}))
    assert [b.weight for b in compiled.groups[0].buckets] == [3], "a backend that is down has no bucket"


def _group_weights(table: FakeTable) -> list[list[int]]:
    groups = [decode_group(mod) for mod in table.flows.values() if is_group(mod)]
    return [[b.weight for b in g.buckets] for g in groups if g is not None]


def test_the_engine_takes_a_backend_out_of_its_group_in_one_bundle_and_keeps_it_out(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(_policy(8443, 8443))
    table = FakeTable()
    engine = Engine([str(path)], SwitchTarget("unix:/nonexistent", None, tmp_path), table, record=False)
    engine.load()
    engine.reconcile()
    assert _group_weights(table) == [[3, 1]]
    backend = engine.policy.nat[0].backends[1]
    pushes = len(table.pushes)
    engine.set_backends_down(frozenset({("web-pool", backend.address, backend.port)}))
    assert _group_weights(table) == [[3]] and len(table.pushes) == pushes + 1
    (op,) = table.pushes[-1]
    assert is_group(op.flow) and op.replaces, "the group is modified in place; no flow changes"
    # a runtime change and a reload keep it out, and the engine's flows are what a compile gives
    engine.set_members("admins", ["10.0.0.11"], [])
    engine.reload()
    assert _group_weights(table) == [[3]]
    healthy = resolve_data(engine.data, "<check>")
    wanted = compile_policy(healthy.__class__(**{**healthy.__dict__, "nat": apply_health(healthy.nat, engine.down)}))
    assert sorted(table.flows.values()) == sorted(desired_flows(wanted.flows, groups=wanted.groups).values())
    engine.set_backends_down(frozenset())
    assert _group_weights(table) == [[3, 1]]


def test_the_incremental_build_of_a_policy_with_groups_is_the_full_compile() -> None:
    policy = load_policy_text(_policy(8443, 8443), "pool.yaml")
    compiled = compile_policy(policy)
    assert IncrementalFlows(policy).sorted_flows() == sorted(
        desired_flows(compiled.flows, groups=compiled.groups).values())


def test_a_health_netns_that_does_not_exist_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ovsmgr.cli import main

    path = tmp_path / "policy.yaml"
    path.write_text(_policy(8443, 8443))
    result = CliRunner().invoke(main, ["controller", str(path), "--health-netns", "no-such-ns-15",
                                       "--db", "unix:/nonexistent"], env={"OVSMGR_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 1 and "--health-netns no-such-ns-15: no such network namespace" in result.output
    assert not list(tmp_path.glob("ovsmgr-*")), "nothing started, nothing written"
