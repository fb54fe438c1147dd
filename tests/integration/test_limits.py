"""`limit:` with real traffic: a limited rule's meter holds its rate on netdev and DPDK, the meter
is on the switch exactly as compiled (a second plan is empty), and its drops are counted.

UDP datagrams, each from a fresh source port (so each is a new connection and meets the rule's
FILTER flow), are offered at several times the limit; what arrives is counted at the receiver
by arrival time after the meter's burst. The rate is the arrivals' own (their count over the
span of their arrival times), so a slow sender changes how many arrive, not the rate: the test
only needs the sender to offer well above the limit, which it checks.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess

import pytest

from ovsmgr.lab.ovs import LabPort
from ovsmgr.southbound.openflow import BundleRefused, FlowMod, SwitchConnection
from ovsmgr.southbound.openflow.channel import push_bundle
from ovsmgr.southbound.openflow.meters import OFPMC_MODIFY, meter_entry, meter_mod
from ovsmgr.switch.apply import plan_policy
from ovsmgr.switch.status import switch_status

from .switch import apply, compiled_text, target_of
from .test_lab import DATAPATHS
from .test_reliability_conntrack import OUTSIDE, policy
from .traffic import PY

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
RATE = 300
"""Packets per second the rule lets through."""
TOLERANCE = 0.15
"""How far the measured rate may be from RATE: arrival times are the receiver's (a namespace on
a shared two-core machine), and the meter's bucket refills in the datapath's own time slices."""
OFFER_INTERVAL = 0.0002
"""The sender's pace (5,000 a second asked; at least 3 x RATE must come out of it)."""
SEND_SECONDS = 4.0
BURST_SECONDS = 0.5
"""Arrivals in the first half second are left out: the meter's burst (0.1 s of RATE) passes there."""
LIMITED = policy("    - {name: udp-out, from: inside, services: [udp/9999], action: allow, stateful: false, "
                 f"limit: {RATE}/s}}")


def received_rate(lines: list[str]) -> tuple[int, float]:
    """(datagrams that arrived, their rate after the burst) from stream-recv's output."""
    arrivals = sorted(json.loads(line)["recv"] for line in lines if line.startswith('{"seq"'))
    assert len(arrivals) > 10, f"almost nothing arrived: {len(arrivals)}"
    start = arrivals[0] + BURST_SECONDS
    steady = [t for t in arrivals if t >= start]
    return len(arrivals), (len(steady) - 1) / (steady[-1] - steady[0])


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_a_limit_holds_its_rate_with_real_traffic(lab_factory, record_property, datapath: str) -> None:
    lab = lab_factory(PORTS, datapath=datapath)
    compiled = compiled_text(LIMITED)
    apply(lab, compiled)
    plan, _ = plan_policy(compiled, target_of(lab))
    assert plan.empty, "the meter reads back as it was written (and the flows using it)"
    lab.announce()
    receiver = lab.popen("outside", [*PY, "stream-recv", "9999", "--duration", str(SEND_SECONDS + 20)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout and "listening" in receiver.stdout.readline()
        sent = lab.exec("inside", [*PY, "stream-send", OUTSIDE, "9999", "--interval", str(OFFER_INTERVAL),
                                   "--duration", str(SEND_SECONDS)], capture_output=True, text=True, check=True)
        offered = json.loads(sent.stdout)["sent"]
    finally:
        receiver.send_signal(signal.SIGTERM)
        out, _ = receiver.communicate(timeout=30)
    assert offered / SEND_SECONDS >= 3 * RATE, f"the sender offered only {offered / SEND_SECONDS:.0f}/s"
    arrived, rate = received_rate(out.splitlines())
    record_property("offered_per_second", round(offered / SEND_SECONDS))
    record_property("passed_per_second", round(rate, 1))  # --junitxml keeps them; nothing is printed
    assert abs(rate / RATE - 1) <= TOLERANCE, f"{rate:.0f} packets/s passed a limit of {RATE}/s ({datapath})"
    meter = switch_status(target_of(lab), "br0")["meters"]
    assert [(m["rule"], m["dropped_packets"] > 0) for m in meter] == [("udp-out", True)]
    assert meter[0]["packets"] - meter[0]["dropped_packets"] >= arrived, "what passed is what the meter let by"


class _MeterInBundle:
    """A bundle op that is a meter_mod (what `SwitchFlowTable.push` never sends)."""

    def __init__(self, entry: FlowMod) -> None:
        self.flow, self.delete, self.about = entry, False, "a meter_mod"

    def encode(self, xid: int, version: int) -> bytes:
        return meter_mod(OFPMC_MODIFY, self.flow, xid, version)


def test_open_vswitch_takes_no_meter_mod_in_a_bundle(lab_factory) -> None:
    """Why meters go around the flows' bundle and not into it (docs/policy.md, "Rate limits"): the
    switch refuses a meter_mod in a bundle and changes nothing. Should a later Open vSwitch take
    it, this fails, and meters can move into the bundle."""
    lab = lab_factory(PORTS)
    compiled = compiled_text(LIMITED)
    apply(lab, compiled)
    faster = meter_entry(dataclasses.replace(compiled.meters[0], rate=RATE * 2))
    with SwitchConnection(target_of(lab).openflow("br0")) as connection, \
            pytest.raises(BundleRefused, match="OFPBFC_MSG_UNSUP"):
        push_bundle(connection, [_MeterInBundle(faster)])  # type: ignore[list-item]
    assert plan_policy(compiled, target_of(lab))[0].empty, "the meter is as it was"
