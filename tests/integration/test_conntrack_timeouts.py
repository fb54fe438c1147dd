"""conntrack.timeouts: the zone's CT_Timeout_Policy through OVSDB, and a UDP flow that expires.

The policy sets UDP timeouts of a few seconds in zone 5; a UDP exchange opens a
connection, the far end's datagrams pass as replies while it lives, and once it has
expired (gone from `dpctl/dump-conntrack`) the same datagram is a new connection from
outside and is dropped. The test waits for the expiry; it does not time it.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from ovsmgr.lab.ovs import Lab
from ovsmgr.southbound.ovsdb import OWNER_KEY, SwitchDB
from tests.integration.conftest import LabFactory
from tests.integration.switch import apply, compiled_text
from tests.integration.traffic import converse, server
from tests.support.policies import two_ports

pytestmark = pytest.mark.integration

LAN, WAN = "10.0.0.10", "192.168.1.10"
UDP_SECONDS = 3
RULES = """firewall:
  default: drop
  rules:
    - {name: lan-out, from: lan0, services: [udp/7000], action: allow}
"""
TIMEOUTS = f"""conntrack:
  zone: 5
  timeouts: {{udp_first: {UDP_SECONDS}, udp_single: {UDP_SECONDS}, udp_multiple: {UDP_SECONDS}, icmp_first: 20}}
"""


def _policy(conntrack: str) -> str:
    return two_ports(RULES + conntrack, ports=("lan0", "wan0"))


def _vsctl(lab: Lab, *args: str) -> str:
    argv = ["ovs-vsctl", f"--db={lab.db_endpoint}", "--timeout=20", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _zone_entries(lab: Lab, zone: int) -> list[str]:
    return [line for line in lab.appctl(["dpctl/dump-conntrack", "-s", f"zone={zone}"]).splitlines() if "udp" in line]


def _wait_expired(lab: Lab, zone: int, limit: float) -> bool:
    """Whether the zone's UDP entries are gone within `limit` seconds (a bound, not a measure)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not _zone_entries(lab, zone):
            return True
        time.sleep(0.5)
    return False


def test_a_udp_flow_expires_at_the_zones_configured_timeout(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    apply(lab, compiled_text(_policy(TIMEOUTS)))
    with SwitchDB(lab.db_endpoint) as db:
        zones = db.zone_timeouts()
    assert zones == {("netdev", 5): ({"udp_first": 3, "udp_single": 3, "udp_multiple": 3, "icmp_first": 20},
                                     {OWNER_KEY: "br0"})}
    with server(lab, "wan0", "udp", 7000):
        assert converse(lab, "lan0", "udp", WAN, 7000, sport=40100)["ok"]
    with server(lab, "lan0", "udp", 40100):
        entries = _zone_entries(lab, 5)
        assert entries, "the exchange left no connection in zone 5"
        remaining = [int(m[1]) for e in entries if (m := re.search(r"timeout=(\d+)", e))]
        assert remaining and max(remaining) <= UDP_SECONDS, entries
        # While the connection lives, the far end's datagram to the client is a reply and passes.
        assert converse(lab, "wan0", "udp", LAN, 40100, sport=7000)["ok"]
        assert _wait_expired(lab, 5, UDP_SECONDS + 20), _zone_entries(lab, 5)
        # Expired: the same datagram is a new connection from the wan, which no rule allows.
        assert not converse(lab, "wan0", "udp", LAN, 40100, sport=7000, timeout=1)["ok"]


def test_the_timeout_policy_goes_when_the_policy_drops_it(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    apply(lab, compiled_text(_policy(TIMEOUTS)))
    apply(lab, compiled_text(_policy(TIMEOUTS.replace("zone: 5", "zone: 6"))))
    with SwitchDB(lab.db_endpoint) as db:
        assert list(db.zone_timeouts()) == [("netdev", 6)]
    apply(lab, compiled_text(_policy("conntrack: {zone: 6}")))
    with SwitchDB(lab.db_endpoint) as db:
        assert db.zone_timeouts() == {}
    # The Datapath row ovsmgr created to hold the zone is gone too: nothing of ours is left.
    assert _vsctl(lab, "--columns=_uuid", "list", "Datapath").strip() == ""


def test_a_zone_policy_someone_else_set_is_not_overwritten(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    _vsctl(lab, "--", "--id=@dp", "create", "Datapath", "datapath_version=0",
           "--", "set", "Open_vSwitch", ".", "datapaths:netdev=@dp")
    _vsctl(lab, "add-zone-tp", "netdev", "zone=5", "udp_first=90")
    with pytest.raises(Exception, match="zone 5 of the netdev datapath already has a timeout policy"):
        apply(lab, compiled_text(_policy(TIMEOUTS)))
    with SwitchDB(lab.db_endpoint) as db:
        assert db.zone_timeouts() == {("netdev", 5): ({"udp_first": 90}, {})}
