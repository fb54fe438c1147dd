"""A SYN flood to one destination through SNAT: with either mitigation (a zone limit below the
NAT's source ports, or a `limit:` on the NAT rule's new connections) established traffic is
delivered and the switch never searches an exhausted port range.

The SNAT rule gets a narrow source port range (`NAT_PORTS`), so a flood from a CI machine
exhausts it in well under a second. Without a mitigation OVS logs the exhaustion (the control:
the flood is real and reaches the port range); with ``max_connections`` below the range the zone
fills first and refuses the rest before any port is searched; with ``limit:`` on the NAT rule its
meter drops the SYNs above the rate before they are committed, so the range is never used up. Figures for the same on the full
port range, at the generator's full rate, are `ovsmgr bench run bench/nat.yaml` (docs/bench.md);
nothing here is timed.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsmgr.bench.testbed import Host, drop_load_at_host
from ovsmgr.lab.ovs import Lab, LabPort
from ovsmgr.switch.status import switch_status

from .reliability import zone_limits
from .switch import apply, compiled_text, target_of
from .test_reliability_conntrack import INSIDE_OUT, OUTSIDE, policy, say
from .traffic import PY

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
NAT_PORTS = (20000, 20999)
LIMIT = 500
"""Half the 1,000 source ports of `NAT_PORTS`: the zone is full long before they run out. (At 900
OVS sometimes logged the exhaustion anyway: it tries a bounded number of ports from a hashed
start, and 90 % of a small range in use leaves runs of taken ports longer than that.)"""
NEW_PER_SECOND = 100
"""The NAT rule's `limit:`: FLOOD_SECONDS of it (and its burst) stay below the 1,000 ports."""
FLOOD_SECONDS = 3
REPLY_WAIT = 30
EXHAUSTED = "Unable to NAT due to tuple space exhaustion"
MASQUERADE = ("nat:\n  - {name: masq, type: snat, from: inside, to: outside, translate_to: 200.200.200.200, "
              f"ports: {NAT_PORTS[0]}-{NAT_PORTS[1]}}}")
MASQUERADE_LIMITED = MASQUERADE.replace("}", f", limit: {NEW_PER_SECOND}/s}}")


def vswitchd_log(lab: Lab) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(lab.dir).rglob("ovs-vswitchd*.log"))


def flood_one_destination(lab: Lab) -> subprocess.Popen[str]:
    """SYNs from random sources at one outside address and port, as fast as hping3 goes; the
    outside host drops them on arrival (no RST comes back)."""
    state = {p["name"]: p for p in lab.status()["ports"]}
    drop_load_at_host(Host(state["outside"]["netns"], "eth0", "198.51.100.9/24", state["outside"]["mac"]))
    return lab.popen("inside", ["timeout", str(FLOOD_SECONDS), "hping3", "--flood", "--rand-source", "-S",
                                "-p", "9", OUTSIDE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


@contextlib.contextmanager
def session(lab: Lab, port: int = 9000) -> Iterator[subprocess.Popen[str]]:
    """A TCP session from inside to an echo server outside, opened now; a line waits up to
    `REPLY_WAIT` seconds for its echo (delivered, however late: nothing here is timed)."""
    echo = lab.popen("outside", [*PY, "echo", str(port), "--timeout", "60"], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert echo.stdout and "listening" in echo.stdout.readline()
        client = lab.popen("inside", [*PY, "session", OUTSIDE, str(port), "--timeout", str(REPLY_WAIT)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout and client.stdout.readline().strip() == "connected"
        yield client
    finally:
        for proc in (client, echo):
            if proc is not None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("mitigation", [None, "zone-limit", "nat-limit"],
                         ids=["none", "zone-limit-below-nat-ports", "limit-on-the-nat-rule"])
def test_a_flood_to_one_destination_through_snat(lab_factory, mitigation: str | None) -> None:
    lab = lab_factory(PORTS)
    conntrack = f"conntrack: {{max_connections: {LIMIT}}}" if mitigation == "zone-limit" else ""
    nat = MASQUERADE_LIMITED if mitigation == "nat-limit" else MASQUERADE
    compiled = compiled_text(policy(INSIDE_OUT, nat=nat, conntrack=conntrack))
    apply(lab, compiled)
    lab.announce()
    with session(lab) as established:
        assert say(established, "before") == "reply before"
        flood = flood_one_destination(lab)
        time.sleep(1)
        during = say(established, "during")
        flood.wait(timeout=FLOOD_SECONDS + 10)
        after = say(established, "after")
        exhausted = EXHAUSTED in vswitchd_log(lab)
        connections = int(lab.appctl(["dpctl/ct-get-nconns"]).strip())
    if mitigation is None:
        assert exhausted, "the control: the flood reaches the NAT's port range and exhausts it"
        assert connections >= NAT_PORTS[1] - NAT_PORTS[0] + 1
        return
    assert not exhausted, "the mitigation keeps OVS from searching an exhausted port range"
    if mitigation == "zone-limit":
        assert zone_limits(lab, 1) == (LIMIT, LIMIT), "the flood fills the zone, and no more"
    else:
        meters = switch_status(target_of(lab), "br0")["meters"]
        assert [m["rule"] for m in meters] == ["masq"] and meters[0]["dropped_packets"] > 0, \
            "the NAT rule's meter dropped the flood above its rate"
        assert connections < NAT_PORTS[1] - NAT_PORTS[0] + 1
    assert (during, after) == ("reply during", "reply after"), "the established session is served"
    flows = lab.ofctl(["dump-flows"])  # the switch still answers its management connection
    assert "nat(src=200.200.200.200:20000-20999)" in flows
    apply(lab, compiled)
