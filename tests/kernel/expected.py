"""What every scenario must observe, per datapath: the result table of docs/datapaths.md.

Each scenario of tests/kernel/scenarios.py records behavioural facts (``ctx.fact``):
what passed, what did not, which port NAT chose, what ``ovsmgr status`` counted. Not
timings, not counts that legitimately vary (entries in conntrack, pings sent). A fact
that is the same on the kernel (``system``) and the userspace (``netdev``) datapath is
a plain value; one that differs is a ``Differs``, and docs/datapaths.md explains it in
the section ``Differs.doc`` names. The suite fails a scenario whose facts are not
these, on any datapath (``compare``), so "the same results on both datapaths, the
differences explained" is checked by every run: ``make kernel-test`` in the guest and
tests/integration/test_kernel_scenarios_netdev.py on the host. A run with ``--datapath dpdk``
(the userspace datapath with DPDK ports) expects netdev's facts unless ``Differs.dpdk``
says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAME_AS_NETDEV: Any = object()


@dataclass(frozen=True)
class Differs:
    system: Any
    netdev: Any
    doc: str
    """The heading of the section of docs/datapaths.md that explains the difference."""
    dpdk: Any = SAME_AS_NETDEV
    """The DPDK datapath is the userspace datapath with DPDK's packet I/O: what netdev does,
    unless said otherwise."""

    def on(self, datapath: str) -> Any:
        if datapath == "system":
            return self.system
        if datapath == "dpdk" and self.dpdk is not SAME_AS_NETDEV:
            return self.dpdk
        return self.netdev


CONNTRACK = "Where conntrack lives"
FRAGMENTS = "Fragments"
NAT_PORTS = "NAT port allocation"
LIMITS = "Zone limits"
OFFLOAD = "TX checksum offload on veths"
TIMEOUTS = "Conntrack timeouts"

EXPECTED: dict[str, dict[str, Any]] = {
    "seed-firewall": {
        "datapath (dpctl/show)": Differs("system@ovs-system", "netdev@ovs-netdev", CONNTRACK,
                                         dpdk="netdev@ovs-netdev, DPDK ports"),
        "inside -> outside: ping, tcp/8080, udp/8080": "answered, from the inside address",
        "outside -> inside: ping, tcp/8081, udp/8081": "no answer",
        "inside's connections in dpctl/dump-conntrack": "listed",
        "netfilter's conntrack table of the switch's namespace (nf_conntrack_count)": Differs(
            "holds them", "empty", CONNTRACK),
    },
    "seed-nat": {
        "inside -> outside: tcp, udp, ping": "answered, from 200.200.200.200",
        "outside -> inside tcp/8081": "no answer",
        "ARP for 200.200.200.200": "answered with the policy's MAC",
    },
    "gateway": {
        "masquerade (ports: 1024-65535): the client's source port": Differs("kept", "replaced", NAT_PORTS),
        "lan -> wan tcp/443, udp/53, ping; lan -> dmz tcp/80; wan -> 8080 forwarded to dmz:80": "answered",
        "smtp out, ssh lan -> dmz, blocklisted forward, wan -> dmz, ssh from wan, dmz -> lan": "no answer",
        "ovsmgr status: zone 10's limit": 30000,
    },
    "cut-on-rule-removal": {
        "open session across an apply changing another rule": "kept",
        "open session and new connections once their rule is removed": "cut",
    },
    "hitless-apply": {
        "pings lost across the apply of a changed 2,000-rule policy": "none",
    },
    "drift": {
        "plan and status after a foreign flow and a deleted flow": "exit 2, both named; drifted",
        "after apply": "repaired, foreign flow kept, status clean",
    },
    "controller": {
        "ssh from the wan (reject rule)": "refused: a RST from the controller",
        "port forward from a source added to the blocklist at run time": "no answer",
    },
    "three-box": {
        "gen -> sink tcp, udp with TX checksum offload on (as provisioned)": Differs(
            "answered, answered", "no answer, no answer", OFFLOAD),
        "with TX checksum offload off: gen -> sink tcp; sink -> gen tcp": "answered; no answer",
        "gen -> sink udp with the seed NAT": "answered, from 200.200.200.200",
    },
    "fragments": {
        "seed firewall: 3,000-byte datagram inside -> outside": "answered",
        "seed firewall: the same, its fragments built by hand and sent last first": "answered",
        "seed firewall: a datagram whose 2nd fragment overlaps the 1st, inside -> outside": "no answer",
        "seed firewall: 3,000-byte datagram outside -> inside": "no answer",
        "rule udp/7000: 1,000-byte datagram to udp/7000 (not fragmented)": "answered",
        "rule udp/7000: 3,000-byte datagram to udp/7000": "answered",
        "rule udp/7000: the same, its fragments built by hand and sent last first": "answered",
        "rule udp/7000: 3,000-byte datagram to udp/7001": "no answer",
        "rule icmp/echo-request: a 1,600-byte ping inside -> outside": "answered",
        "dpctl/ipf-get-status": Differs("not supported", "answers", FRAGMENTS),
    },
    "nat-ports": {
        "seed NAT: first connection from source port 40000": "kept 40000",
        "seed NAT: second connection from source port 40000 (another host)": Differs(
            "another port of 1024-65535", "40001: the next free port", NAT_PORTS),
        "ports: 61000-61001: two connections from source port 40001": "answered, on the two ports of the range",
        "ports: 61000-61001: a third one (range exhausted)": "no answer",
    },
    "zone-limit": {
        "zone 7 (limit 2), two connections open: a third": "no answer",
        "the refused connection's SYN reaches the server": Differs("no", "yes", LIMITS),
        "meanwhile a connection in zone 8 (another bridge)": "answered",
        "ovsmgr status, two open": "2 of 2 connections, full",
        "zone 7 in dpctl/dump-conntrack, both closed": "2 entries, TIME_WAIT",
        "ovsmgr status, both closed": Differs("0 of 2 connections", "2 of 2 connections, full", LIMITS),
        "zone 7, both closed: a new connection": Differs("answered", "no answer", LIMITS),
    },
    "conntrack-timeouts": {
        "zone 9's timeout policy in OVSDB": "udp_first=6, udp_single=15",
        "a flow of one unanswered UDP datagram lives": Differs("udp_single", "udp_first", TIMEOUTS),
        "the flow, once its timeout has passed": "expired",
        "zone 9's timeout policy after a policy without timeouts": "none",
    },
    "nat-flood": {
        "no limit: the NAT's 1,000 ports after the flood to one destination": "90 % or more in use",
        "limit: 100/s on the NAT rule: its meter (ovsmgr status)": "dropped packets",
        "limit: 100/s on the NAT rule: the established TCP stream during and after the flood": "kept delivering",
        "limit: 100/s on the NAT rule: pings lost": "none",
    },
}


def expected_facts(scenario: str, datapath: str) -> dict[str, Any]:
    return {what: value.on(datapath) if isinstance(value, Differs) else value
            for what, value in EXPECTED.get(scenario, {}).items()}


def compare(scenario: str, datapath: str, facts: dict[str, Any]) -> list[str]:
    """What in ``facts`` is not what the table expects on ``datapath`` (empty: all as expected)."""
    want = expected_facts(scenario, datapath)
    problems = [f"{what!r}: saw {facts[what]!r}, expected {want[what]!r}"
                for what in want if what in facts and facts[what] != want[what]]
    problems += [f"{what!r}: not observed" for what in want if what not in facts]
    problems += [f"{what!r}: {facts[what]!r} is not in the table" for what in facts if what not in want]
    return problems


def differences() -> list[tuple[str, str, Differs]]:
    """(scenario, fact, how it differs) for every fact that differs between the datapaths."""
    return [(name, what, value) for name, facts in EXPECTED.items()
            for what, value in facts.items() if isinstance(value, Differs)]


def scenarios_with_differences() -> list[str]:
    return list(dict.fromkeys(name for name, _, _ in differences()))


def markdown_table() -> str:
    """The per-datapath result table of docs/datapaths.md (checked by tests/kernel/test_vagrant.py)."""
    rows = ["| scenario | fact | kernel (`system`) | userspace (`netdev`) | DPDK (`dpdk`) |",
            "|---|---|---|---|---|"]
    for name, facts in EXPECTED.items():
        for what, value in facts.items():
            if isinstance(value, Differs):
                why = f" ([why](#{_anchor(value.doc)}))"
                system, netdev, dpdk = (value.on(d) for d in ("system", "netdev", "dpdk"))
                cells = [f"**{system}**", "same" if netdev == system else f"**{netdev}**{why}",
                         "same" if dpdk == netdev else f"**{dpdk}**{why}"]
            else:
                cells = [str(value), "same", "same"]
            rows.append(f"| `{name}` | {what} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


if __name__ == "__main__":
    print(markdown_table())  # for docs/datapaths.md
