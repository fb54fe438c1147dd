"""The lock-out guard against a fake switch: which connections a policy would cut, and why."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.policy import load_policy_text
from ovsmgr.policy.ir import IPAddress
from ovsmgr.switch.lockout import Endpoint, LockoutError, check_lockout, lifelines

SWITCH, ADMIN, OTHER_ADMIN = "192.0.2.1", "192.0.2.50", "192.0.2.60"

POLICY = """
version: 1
switch:
  bridge: br0
  datapath: netdev
  forwarding: {forwarding}
  ports:
    inside: {{ofport: 1}}
    outside: {{ofport: 2}}
    admin: {{ofport: 3}}
    mgmt0: {{ofport: 4, type: internal, interface: mgmt0}}
{links}
zones:
  inside: {{ports: [inside]}}
  outside: {{ports: [outside]}}
  admin: {{ports: [admin]{admin_networks}}}
  switch: {{ports: [mgmt0]{switch_networks}}}
firewall:
  default: drop
  rules:
{rules}
"""
LINKS = "  links: [[inside, outside], [admin, mgmt0]]"
SSH_IN = "    - {name: admin-ssh, from: admin, to: switch, services: [tcp/22], action: allow}"
CONTROLLER_OUT = "    - {name: to-controller, from: switch, to: admin, services: [tcp/6653], action: allow}"
LOCKDOWN = "    - {name: lockdown, from: admin, action: drop}"


def compiled(*rules: str, forwarding: str = "ports") -> CompiledPolicy:
    normal = forwarding == "normal"
    text = POLICY.format(
        forwarding=forwarding, links="" if normal else LINKS,
        admin_networks=", networks: [192.0.2.32/27]" if normal else "",
        switch_networks=", networks: [192.0.2.0/28]" if normal else "",
        rules="\n".join(rules) or "    []")
    return compile_policy(load_policy_text(text.replace("rules:\n    []", "rules: []"), "p.yaml"))


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@dataclass
class FakeSwitch:
    """A switch host whose address 192.0.2.1 is on the internal port mgmt0 of br0."""

    ifaces: dict[str, int] = field(default_factory=lambda: {
        "inside": 1, "outside": 2, "admin": 3, "mgmt0": 4, "br0": 65534})
    targets: list[str] = field(default_factory=list)
    own: dict[IPAddress, str] | None = field(default_factory=lambda: {
        ip(SWITCH): "mgmt0", ip("127.0.0.1"): "lo", ip("10.9.9.9"): "eth9"})

    def interfaces(self) -> dict[str, int]:
        return dict(self.ifaces)

    def controllers(self) -> list[str]:
        return list(self.targets)

    def addresses(self) -> dict[IPAddress, str] | None:
        return self.own

    def route(self, address: IPAddress) -> IPAddress | None:
        return ip(SWITCH) if address in ipaddress.ip_network("192.0.2.0/24") else ip("10.9.9.9")


SSH = f"{ADMIN} 50022 {SWITCH} 22"


def cuts(policy: CompiledPolicy, switch: FakeSwitch | None = None, mgmt: tuple[str, ...] = (),
         ssh: str | None = None) -> list[str]:
    found = check_lockout(policy, switch or FakeSwitch(), [Endpoint.parse(m) for m in mgmt], ssh)
    return [str(c) for c in found]


def test_a_policy_that_keeps_every_lifeline_passes() -> None:
    switch = FakeSwitch(targets=[f"tcp:{ADMIN}:6653"])
    assert cuts(compiled(SSH_IN, CONTROLLER_OUT), switch, mgmt=(SWITCH,), ssh=SSH) == []


def test_the_rule_that_cuts_the_ssh_session_is_named_with_its_place() -> None:
    found = cuts(compiled(LOCKDOWN, SSH_IN), ssh=SSH)
    assert len(found) == 1
    assert found[0].startswith(f"this SSH session from {ADMIN} to {SWITCH}:22: it is dropped")
    assert "rule lockdown (p.yaml:" in found[0] and "drops it" in found[0], found


def test_the_firewall_default_is_named_when_no_rule_allows_it() -> None:
    found = cuts(compiled(), mgmt=(f"{SWITCH}:22",))
    assert found == [f"management address {SWITCH}:22: it is dropped: the firewall default (drop)"]


def test_controller_connection_is_opened_by_the_switch_from_its_routed_address() -> None:
    switch = FakeSwitch(targets=[f"tcp:{ADMIN}:6653", "unix:/run/c.sock", "tcp:127.0.0.1:6653",
                                 "punix:/run/x.sock"])
    assert [line.what for line in lifelines(switch, [], None)] == [f"controller tcp:{ADMIN}:6653"]
    found = cuts(compiled(SSH_IN), switch)
    assert found and found[0].startswith(f"controller tcp:{ADMIN}:6653: it is dropped"), found
    assert cuts(compiled(SSH_IN, CONTROLLER_OUT), switch) == []


def test_a_known_client_is_checked_exactly_any_client_is_enough_for_mgmt() -> None:
    only_other = f'    - {{name: other-admin-ssh, from: admin, src: {OTHER_ADMIN}, services: [tcp/22], action: allow}}'
    policy = compiled(only_other)
    assert cuts(policy, mgmt=(SWITCH,)) == [], "someone (192.0.2.60) can still manage the switch"
    found = cuts(policy, ssh=SSH)
    assert len(found) == 1 and "this SSH session" in found[0], "but not the operator running apply"


def test_a_stateless_allow_without_its_pair_cuts_on_the_way_back() -> None:
    one_way = "    - {name: ssh-one-way, from: admin, services: [tcp/22], action: allow, stateful: false}"
    found = cuts(compiled(one_way), ssh=SSH)
    assert len(found) == 1 and "dropped on its way back: conntrack calls it invalid: a SYN+ACK" in found[0], found


def test_an_address_on_the_local_port_is_cut_by_any_policy() -> None:
    switch = FakeSwitch(own={ip(SWITCH): "br0"})
    found = cuts(compiled(SSH_IN), switch, ssh=SSH)
    assert found and "is on interface br0 (ofport 65534), which is no port of the policy" in found[0]


def test_controller_traffic_of_the_local_port_is_left_to_in_band_control() -> None:
    switch = FakeSwitch(own={ip(SWITCH): "br0"}, targets=[f"tcp:{ADMIN}:6653"])
    assert cuts(compiled(), switch) == []


def test_out_of_band_management_is_never_in_the_way() -> None:
    switch = FakeSwitch(own={ip("10.9.9.9"): "eth9"})
    assert cuts(compiled(LOCKDOWN), switch, mgmt=("10.9.9.9",), ssh=f"{ADMIN} 1 10.9.9.9 22") == []


def test_moving_the_managed_interface_into_the_bridge_is_a_cut() -> None:
    text = POLICY.format(forwarding="ports", links=LINKS, admin_networks="", switch_networks="",
                         rules=SSH_IN).replace("    admin: {ofport: 3}", "    admin: {ofport: 3, interface: eth9}")
    policy = compile_policy(load_policy_text(text, "p.yaml"))
    switch = FakeSwitch(ifaces={"inside": 1, "outside": 2, "mgmt0": 4})
    found = cuts(policy, switch, ssh=f"{ADMIN} 1 10.9.9.9 22")
    assert found == [f"this SSH session from {ADMIN} to 10.9.9.9:22: port admin would move interface eth9, "
                     "which holds 10.9.9.9, into bridge br0"]


def test_unknown_addresses_are_not_guessed() -> None:
    assert cuts(compiled(LOCKDOWN), FakeSwitch(own=None), mgmt=(SWITCH,), ssh=SSH) == []


def test_normal_forwarding_finds_the_client_by_zone_networks() -> None:
    ssh_in = "    - {name: admin-ssh, from: admin, to: switch, services: [tcp/22], action: allow}"
    assert cuts(compiled(ssh_in, forwarding="normal"), ssh=SSH) == []
    found = cuts(compiled(forwarding="normal"), ssh=SSH)
    assert found and "firewall default" in found[0]


def test_an_admin_in_a_vlan_zone_of_a_trunk_port_is_judged_with_the_tag() -> None:
    text = POLICY.format(forwarding="ports", links=LINKS, admin_networks="", switch_networks="", rules=SSH_IN)
    text = text.replace("  admin: {ports: [admin]}",
                        "  admin: {ports: [admin], vlan: 10, networks: [192.0.2.32/27]}\n"
                        "  guests: {ports: [admin], vlan: 20, networks: [198.18.0.0/24]}")
    policy = compile_policy(load_policy_text(text, "p.yaml"))
    assert cuts(policy, ssh=SSH) == [], "the admin's SYN comes tagged 10, as the admin zone's hosts send it"
    assert cuts(policy, mgmt=(SWITCH,)) == []
    locked = compile_policy(load_policy_text(text.replace(SSH_IN, LOCKDOWN), "p.yaml"))
    found = cuts(locked, ssh=SSH)
    assert len(found) == 1 and "rule lockdown (p.yaml:" in found[0], found


def test_ipv6_lifelines() -> None:
    switch = FakeSwitch(own={ip("fd00::1"): "mgmt0"})
    assert cuts(compiled(SSH_IN), switch, mgmt=("[fd00::1]:22",)) == []
    assert cuts(compiled(LOCKDOWN), switch, mgmt=("fd00::1",))


@pytest.mark.parametrize(("text", "address", "port"), [
    ("192.0.2.1", "192.0.2.1", 22), ("192.0.2.1:2222", "192.0.2.1", 2222), ("fd00::1", "fd00::1", 22),
    ("[fd00::1]:830", "fd00::1", 830), ("fe80::1%eth0", "fe80::1", 22),
])
def test_endpoint_forms(text: str, address: str, port: int) -> None:
    assert Endpoint.parse(text) == Endpoint(ip(address), port)


def test_lockout_error_lists_every_cut() -> None:
    found = check_lockout(compiled(), FakeSwitch(targets=[f"tcp:{ADMIN}:6653"]), [Endpoint.parse(SWITCH)], SSH)
    message = str(LockoutError(found))
    assert message.startswith("refused: the policy would cut the switch's own connections (apply --force")
    assert message.count("\n  - ") == 3, message


def test_cli_refuses_a_malformed_mgmt_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nswitch: {bridge: br0}\n")
    result = CliRunner().invoke(main, ["apply", str(policy), "--mgmt", "not-an-address", "--db", "unix:/nonexistent"])
    assert result.exit_code == 2 and "--mgmt" in result.output, result.output
