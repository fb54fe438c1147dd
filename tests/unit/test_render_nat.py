"""NAT actions as text: what `ovsmgr compile` prints must load into `ovs-ofctl` as it is."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import Ct
from ovsmgr.policy import load_policy_text
from ovsmgr.render.ofctl import flow_text
from tests.support.policies import two_ports

POLICY = two_ports("""
firewall:
  default: drop
  rules:
    - {name: out, from: inside, action: allow}
nat:
  - {name: masq6, type: snat, from: inside, to: outside, src: "fd00::/64",
     translate_to: "2001:db8::240-2001:db8::241", ports: 1024-2000}
  - {name: masq4, type: snat, from: inside, to: outside, src: 10.0.0.0/24,
     translate_to: 200.200.200.10-200.200.200.11}
""")


def nat_lines() -> list[str]:
    flows = compile_policy(load_policy_text(POLICY, "nat.yaml")).flows
    return [flow_text(f) for f in flows if any(isinstance(a, Ct) and a.nat is not None for a in f.actions)]


def test_address_ranges_are_written_as_ovs_writes_them() -> None:
    lines = nat_lines()
    assert any("nat(src=[2001:db8::240]-[2001:db8::241]:1024-2000)" in line for line in lines), lines
    assert any("nat(src=200.200.200.10-200.200.200.11)" in line for line in lines), lines


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs ovs-ofctl")
def test_ovs_ofctl_parses_every_nat_flow() -> None:
    for line in nat_lines():
        proc = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "parse-flow", line], capture_output=True,
                              text=True, timeout=10, check=False)
        assert proc.returncode == 0, f"{line}: {proc.stderr}"
