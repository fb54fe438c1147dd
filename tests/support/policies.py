"""Policy text for tests: the two-port switch most of them need, with their own rules."""

from __future__ import annotations


def two_ports(body: str, ports: tuple[str, str] = ("inside", "outside"), zones: tuple[str, str] | None = None) -> str:
    """A `br0` with ports 1 and 2 linked, a zone per port (named like the port unless `zones`),
    then `body` (top-level keys: addresses, firewall, nat, conntrack)."""
    a, b = ports
    za, zb = zones or ports
    return f"""version: 1
switch:
  bridge: br0
  datapath: netdev
  ports: {{{a}: {{ofport: 1}}, {b}: {{ofport: 2}}}}
  links: [[{a}, {b}]]
zones:
  {za}: {{ports: [{a}]}}
  {zb}: {{ports: [{b}]}}
{body.strip()}
"""
