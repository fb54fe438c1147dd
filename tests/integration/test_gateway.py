"""policies/gateway.yaml end to end on a real switch: masquerade, port forward, blocklist, reject, default."""

from __future__ import annotations

import pytest

from ovsmgr.cli.lab_probe import probe_once
from ovsmgr.lab.ovs import LabPort

from .switch import apply, compiled_file

pytestmark = pytest.mark.integration

HOSTS = (LabPort("lan0", 1, "10.0.0.5/24"), LabPort("dmz0", 2, "10.0.1.10/24"), LabPort("wan0", 3, "198.51.100.9/24"))




def _probe(lab, src, dst, service, **kw):
    return probe_once(lab, src, dst, service, kw.get("dst_addr"), kw.get("src_addr"), 2.0)


def test_gateway_end_to_end(lab_factory):
    lab = lab_factory(HOSTS)
    lab.exec("wan0", ["ip", "addr", "add", "198.51.100.66/24", "dev", "eth0"], check=True)
    apply(lab, compiled_file("gateway.yaml"))

    out = _probe(lab, "lan0", "wan0", "tcp/443")
    assert out["passed"] and out["seen_as"].startswith("200.200.200.200:"), out
    port = int(out["seen_as"].split(":")[1])
    assert 1024 <= port <= 65535
    assert _probe(lab, "lan0", "wan0", "udp/53")["seen_as"].startswith("200.200.200.200:")
    assert _probe(lab, "lan0", "wan0", "icmp")["passed"]
    assert not _probe(lab, "lan0", "wan0", "tcp/25")["passed"], "no rule allows smtp: default drop"

    lan_dmz = _probe(lab, "lan0", "dmz0", "tcp/80")
    assert lan_dmz["passed"] and lan_dmz["seen_as"].startswith("10.0.0.5:"), "lan to dmz is not translated"
    assert not _probe(lab, "lan0", "dmz0", "tcp/22")["passed"], "only admins may ssh into the dmz"

    forward = _probe(lab, "wan0", "dmz0", "tcp/80", dst_addr="200.200.200.200:8080")
    assert forward["passed"] and forward["seen_as"].startswith("198.51.100.9:"), forward
    assert not _probe(lab, "wan0", "dmz0", "tcp/80", dst_addr="200.200.200.200:8080",
                      src_addr="198.51.100.66")["passed"], "blocklisted source"
    assert not _probe(lab, "wan0", "dmz0", "tcp/80", dst_addr="10.0.1.10:80")["passed"], "dmz only via the forward"
    assert not _probe(lab, "wan0", "lan0", "tcp/22")["passed"], "ssh from the wan is rejected"
    assert not _probe(lab, "wan0", "lan0", "tcp/8080")["passed"]
    assert not _probe(lab, "dmz0", "lan0", "tcp/80")["passed"], "the dmz may not open the lan"
