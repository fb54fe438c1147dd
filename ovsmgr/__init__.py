"""ovsmgr: declarative stateful firewall and NAT policies for Open vSwitch."""

__version__ = "0.1.0"
