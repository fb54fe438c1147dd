"""The real-traffic scenario suite: the kernel datapath in the kernel-test guest, or the
userspace (netdev) datapath on any host.

``python -m tests.kernel.scenarios [--datapath system|netdev] [--tag TAG] [--policies DIR]
[--only NAME...] [--list]``

Each scenario builds its bridge and host namespaces on one Open vSwitch, drives
``ovsmgr apply/plan/status`` as an operator would, sends real packets and removes
everything again. On ``system`` (the default: the kernel-test guest) that is the
guest's system Open vSwitch and the kernel datapath; on ``netdev`` a private
ovsdb-server and ovs-vswitchd in a network namespace of their own
(``tests/kernel/netdev.py``), on the userspace datapath.

Output: one line per scenario, ``TAG PASS name (seconds): what was seen`` or
``TAG FAIL name (seconds): why``, then ``TAG FACTS name {json}``, the behavioural
facts it observed, then ``TAG N passed, M failed``; vagrant/guest/kernel-test reads
these from the guest's serial console, tests/integration/test_kernel_scenarios_netdev.py
from the netdev run. A scenario passes only if its checks hold and its facts are
those tests/kernel/expected.py expects on this datapath: the same on both
datapaths except the differences docs/datapaths.md explains. Exit status 0 only if
every scenario passed.

The policies are the repository's: as provisioned into /etc/ovsmgr by
vagrant/provision/ovsmgr.sh (with ``datapath: system``) in the guest, policies/
(``datapath: netdev``) on netdev; generated ones say the run's datapath.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ovsmgr.compiler import compile_policy
from ovsmgr.lab.spec import LabPort
from ovsmgr.policy import load_policy
from tests.kernel.bed import (
    AGENT,
    BLOCK_TIMEOUT,
    BRIDGE_TYPE,
    DATAPATH,
    DB,
    STATE_DIR,
    Bed,
    BedError,
    blocked,
    concurrently,
    connect,
    exchange,
    ping,
    run,
)
from tests.kernel.expected import compare

REPO = Path(__file__).resolve().parents[2]
SEED_PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
GATEWAY_PORTS = (LabPort("lan0", 1, "10.0.0.5/24"), LabPort("dmz0", 2, "10.0.1.10/24"),
                 LabPort("wan0", 3, "198.51.100.9/24"))
OTHER_PORTS = (LabPort("in2", 1, "10.0.2.10/24"), LabPort("out2", 2, "198.51.102.9/24"))
"""A second bridge's hosts (zone-limit: another zone on the same datapath)."""
INSIDE, OUTSIDE = "10.0.0.10", "198.51.100.9"
PUBLIC = "200.200.200.200"

POLICY = """version: 1
switch:
  bridge: {bridge}
  datapath: {datapath}
  ports: {{{a}: {{ofport: 1}}, {b}: {{ofport: 2}}}}
  links: [[{a}, {b}]]
zones:
  inside: {{ports: [{a}]}}
  outside: {{ports: [{b}]}}
firewall:
  default: drop
  rules:
{rules}
{extra}"""


def policy_text(*rules: str, bridge: str = "br0", ports: tuple[str, str] = ("inside", "outside"),
                extra: str = "") -> str:
    """The seed firewall's shape (inside -> outside by ofport) with these rules, on this run's
    datapath; ``extra``: more top-level sections (conntrack, nat)."""
    return POLICY.format(bridge=bridge, datapath=BRIDGE_TYPE, a=ports[0], b=ports[1],
                         rules="\n".join(rules), extra=extra)


def rule(name: str, services: str, action: str = "allow") -> str:
    return f"    - {{name: {name}, from: inside, services: [{services}], action: {action}}}"


@dataclass
class Context:
    policies: Path
    scratch: Path
    facts: dict[str, Any] = field(default_factory=dict)
    """What the running scenario observed, compared with tests/kernel/expected.py."""

    def policy(self, name: str) -> Path:
        path = self.policies / name
        if not re.search(rf"^  datapath: {BRIDGE_TYPE}$", path.read_text(), re.M):
            raise BedError(f"{path} does not say datapath: {BRIDGE_TYPE}")
        return path

    def write(self, name: str, text: str) -> Path:
        path = self.scratch / name
        path.write_text(text)
        return path

    def fact(self, what: str, value: Any) -> None:
        self.facts[what] = value


def check(condition: object, message: str) -> None:
    if not condition:
        raise BedError(message)


def expect_blocked(cases: dict[str, Callable[[], bool]]) -> None:
    """Every case (a check that returns True when the traffic did not pass) at once: each
    waits for an answer that must not come, and the waits overlap."""
    results = concurrently(*cases.values())
    leaks = [what for what, stopped in zip(cases, results, strict=True) if not stopped]
    check(not leaks, "passed although the policy forbids it: " + "; ".join(leaks))


def answered(ok: object) -> str:
    return "answered" if ok else "no answer"


def status_conntrack(bed: Bed) -> dict[str, Any]:
    """``ovsmgr status BRIDGE -o json``'s conntrack part: zone, connections, limit, full."""
    found = json.loads(bed.ovsmgr("status", bed.bridge, "-o", "json").stdout)["conntrack"]
    check(found, f"ovsmgr status reports no conntrack zone for {bed.bridge}")
    return dict(found)


# -- the scenarios -----------------------------------------------------------------------------
def seed_firewall(ctx: Context) -> str:
    """policies/seed-firewall.yaml: inside may open anything, outside nothing; replies pass."""
    with Bed("br0", SEED_PORTS) as bed:
        check(not ping(bed, "inside", OUTSIDE, deadline=2), "an empty secure bridge forwarded a ping")
        # The unanswered ARP of that ping goes on for a second more and then fails the next
        # ping's packets; where the apply is fast (netdev on a host) it is not over yet.
        bed.exec("inside", ["ip", "neigh", "flush", "dev", "eth0"])
        bed.apply(ctx.policy("seed-firewall.yaml"))
        ctx.fact("datapath (dpctl/show)", bed.assert_datapath())
        check(ping(bed, "inside", OUTSIDE, count=3), "inside cannot ping outside")
        for proto in ("tcp", "udp"):
            reply = exchange(bed, "inside", "outside", f"{proto}/8080", OUTSIDE)
            check(reply["ok"], f"inside -> outside {proto}/8080 got no answer: {reply}")
            check(reply.get("seen_as") == INSIDE, f"{proto} arrived as from {reply.get('seen_as')}")
        ctx.fact("inside -> outside: ping, tcp/8080, udp/8080", "answered, from the inside address")
        expect_blocked({
            "outside -> inside tcp/8081": partial(blocked, bed, "outside", "inside", "tcp/8081", INSIDE),
            "outside -> inside udp/8081": partial(blocked, bed, "outside", "inside", "udp/8081", INSIDE),
            "outside -> inside ping": lambda: not ping(bed, "outside", INSIDE, deadline=2),
        })
        ctx.fact("outside -> inside: ping, tcp/8081, udp/8081", "no answer")
        tracked = bed.conntrack_entries(f"src={INSIDE}")
        check(tracked, "no conntrack entry for inside's connections in dpctl/dump-conntrack")
        ctx.fact("inside's connections in dpctl/dump-conntrack", "listed")
        # Where those entries live: netfilter's table of this namespace, or ovs-vswitchd's own.
        counter = Path("/proc/sys/net/netfilter/nf_conntrack_count")
        netfilter = int(counter.read_text()) if counter.exists() else 0
        ctx.fact("netfilter's conntrack table of the switch's namespace (nf_conntrack_count)",
                 "holds them" if netfilter >= len(tracked) else "empty" if netfilter == 0
                 else f"{netfilter} entries, fewer than dpctl lists")
        return f"ping+tcp+udp out, nothing in; {len(tracked)} conntrack entries in {DATAPATH}"


def seed_nat(ctx: Context) -> str:
    """policies/seed-nat.yaml: inside is translated to 200.200.200.200 and back."""
    path = ctx.policy("seed-nat.yaml")
    switch_mac = compile_policy(load_policy([path])).policy.mac.lower()
    with Bed("br0", SEED_PORTS) as bed:
        bed.apply(path)
        bed.assert_datapath()
        bed.announce()
        for proto, port in (("tcp", 8080), ("udp", 5353)):
            reply = exchange(bed, "inside", "outside", f"{proto}/{port}", OUTSIDE)
            check(reply["ok"], f"inside -> outside {proto}/{port} got no answer: {reply}")
            check(reply.get("seen_as") == PUBLIC, f"{proto} arrived as from {reply.get('seen_as')}")
        check(ping(bed, "inside", OUTSIDE, count=2), "inside cannot ping outside through NAT")
        ctx.fact("inside -> outside: tcp, udp, ping", f"answered, from {PUBLIC}")
        check(blocked(bed, "outside", "inside", "tcp/8081", INSIDE), "outside opened tcp/8081 to inside")
        ctx.fact("outside -> inside tcp/8081", "no answer")
        arping = bed.exec("outside", ["arping", "-c", "1", "-w", "3", "-I", "eth0", PUBLIC])
        check(arping.returncode == 0, f"nobody answered ARP for {PUBLIC}: {arping.stdout}")
        check(switch_mac in arping.stdout.lower(), f"ARP for {PUBLIC} not answered by {switch_mac}")
        ctx.fact(f"ARP for {PUBLIC}", "answered with the policy's MAC")
        natted = bed.conntrack_entries(PUBLIC)
        check(natted, f"no conntrack entry translated to {PUBLIC}")
        return f"tcp+udp+ping seen as {PUBLIC}, ARP answered by {switch_mac}, nothing in"


def gateway(ctx: Context) -> str:
    """policies/gateway.yaml: masquerade, port forward, blocklist, reject, default drop."""
    with Bed("br0", GATEWAY_PORTS) as bed:
        bed.exec("wan0", ["ip", "addr", "add", "198.51.100.66/24", "dev", "eth0"])
        bed.apply(ctx.policy("gateway.yaml"))
        bed.assert_datapath()
        bed.announce()
        out = exchange(bed, "lan0", "wan0", "tcp/443", OUTSIDE)
        check(out["ok"] and out.get("seen_as") == PUBLIC, f"lan -> wan tcp/443 not masqueraded: {out}")
        check(1024 <= out["seen_port"] <= 65535, f"masquerade port {out['seen_port']}")
        ctx.fact("masquerade (ports: 1024-65535): the client's source port",
                 "kept" if out["seen_port"] == out["local_port"] else "replaced")
        dns = exchange(bed, "lan0", "wan0", "udp/53", OUTSIDE)
        check(dns.get("seen_as") == PUBLIC, f"lan -> wan udp/53: {dns}")
        check(ping(bed, "lan0", OUTSIDE), "lan cannot ping the wan")
        dmz = exchange(bed, "lan0", "dmz0", "tcp/80", "10.0.1.10")
        check(dmz["ok"] and dmz.get("seen_as") == "10.0.0.5", f"lan -> dmz tcp/80: {dmz}")
        forward = exchange(bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080)
        check(forward["ok"] and forward.get("seen_as") == OUTSIDE, f"port forward: {forward}")
        ctx.fact("lan -> wan tcp/443, udp/53, ping; lan -> dmz tcp/80; wan -> 8080 forwarded to dmz:80",
                 "answered")
        expect_blocked({
            "smtp out (no rule: default drop)": partial(blocked, bed, "lan0", "wan0", "tcp/25", OUTSIDE),
            "ssh lan -> dmz from a non-admin": partial(blocked, bed, "lan0", "dmz0", "tcp/22", "10.0.1.10"),
            "the port forward from a blocklisted source": partial(
                blocked, bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080, from_addr="198.51.100.66"),
            "wan -> dmz directly": partial(blocked, bed, "wan0", "dmz0", "tcp/80", "10.0.1.10"),
            "ssh from the wan (rejected)": partial(blocked, bed, "wan0", "lan0", "tcp/22", "10.0.0.5"),
            "dmz -> lan": partial(blocked, bed, "dmz0", "lan0", "tcp/80", "10.0.0.5"),
        })
        ctx.fact("smtp out, ssh lan -> dmz, blocklisted forward, wan -> dmz, ssh from wan, dmz -> lan",
                 "no answer")
        # conntrack.max_connections: set through dpctl/ct-set-limits on both datapaths.
        usage = status_conntrack(bed)
        check(usage["limit"] == 30000, f"zone limit not in force: {usage}")
        ctx.fact("ovsmgr status: zone 10's limit", usage["limit"])
        # What the two counts are (closed connections or not) is zone-limit's to show: here
        # the UDP and ICMP entries may time out between the two readings.
        entries = sorted(_conntrack_summary(line) for line in bed.conntrack_entries(zone=10))
        return (f"masquerade (port {out['local_port']} -> {out['seen_port']}), port forward, "
                f"blocklist, rejects and default drop as written; zone 10 limit {usage['limit']} "
                f"(status counts {usage['connections']}; conntrack has {len(entries)}: "
                f"{' '.join(entries)})")


def _conntrack_summary(line: str) -> str:
    """``tcp/TIME_WAIT``, ``udp``: protocol and TCP state of a dump-conntrack line."""
    state = re.search(r"state=(\w+)", line)
    return line.split(",")[0] + (f"/{state[1]}" if state else "")


def cut_on_rule_removal(ctx: Context) -> str:
    """An open TCP session survives a change to another rule and dies when its rule goes."""
    with Bed("br0", SEED_PORTS) as bed:
        bed.apply(ctx.write("cut-1.yaml", policy_text(rule("web", "tcp/8080"), rule("other", "tcp/9090"))))
        bed.server("outside", [*PROBE_ECHO, "8080", "--timeout", "300"])
        session = None
        try:
            session = bed.popen("inside", [*PROBE_SESSION, OUTSIDE, "8080", "--timeout", "2"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert session.stdin and session.stdout
            check(session.stdout.readline().strip() == "connected", "session did not connect")

            def say(word: str) -> str:
                assert session and session.stdin and session.stdout
                session.stdin.write(word + "\n")
                session.stdin.flush()
                return session.stdout.readline().strip()

            check(say("one") == "reply one", "the session does not echo")
            bed.apply(ctx.write("cut-2.yaml", policy_text(rule("web", "tcp/8080"), rule("other", "tcp/9091"))))
            check(say("two") == "reply two", "a change to another rule cut the session")
            ctx.fact("open session across an apply changing another rule", "kept")
            bed.apply(ctx.write("cut-3.yaml", policy_text(rule("other", "tcp/9091"))))
            third = say("three")
            check(third == "timeout", f"the session lived on after its rule was removed: {third!r}")
            late = connect(bed, "inside", "tcp", OUTSIDE, 8080, timeout=2)  # to the echo server
            check(not late["ok"], f"a new tcp/8080 connection passed after the rule was removed: {late}")
            ctx.fact("open session and new connections once their rule is removed", "cut")
        finally:
            if session is not None:
                session.kill()
                session.wait()
        return "session kept across an unrelated change, cut when its rule was removed"


def hitless_apply(ctx: Context) -> str:
    """A continuous ping loses nothing while a changed 2,000-rule policy is applied."""

    def big(offset: int) -> str:
        filler = [rule(f"r{i}", f"tcp/{10000 + offset + i}", "drop") for i in range(2000)]
        return policy_text(*filler, rule("ping", "icmp/echo-request"))

    with Bed("br0", SEED_PORTS) as bed:
        bed.apply(ctx.write("big-0.yaml", big(0)))
        check(ping(bed, "inside", OUTSIDE), "no ping with the first 2,000-rule policy")
        changed = ctx.write("big-1.yaml", big(1000))
        pinger = bed.popen("inside", ["ping", "-n", "-i", "0.01", "-w", "900", OUTSIDE],
                           stdout=subprocess.PIPE)
        try:
            time.sleep(1.0)
            result = bed.apply(changed)
            time.sleep(1.0)
        finally:
            pinger.send_signal(2)  # SIGINT: ping prints its statistics and exits
            out, _ = pinger.communicate(timeout=30)
        stats = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        check(stats, f"no ping statistics: {out[-500:]}")
        assert stats is not None
        sent, received = int(stats[1]), int(stats[2])
        changes = result["changes"]
        check(changes["add"] + changes["change"] >= 1000, f"the apply changed too little: {changes}")
        # The last request may have been in flight when ping was interrupted.
        check(sent - received <= 1 and sent >= 100,
              f"{sent - received} of {sent} pings lost while applying {changes}")
        ctx.fact("pings lost across the apply of a changed 2,000-rule policy", "none")
        return (f"{received}/{sent} pings answered across an apply of {changes} "
                f"in {result['seconds']:.1f} s")


def drift(ctx: Context) -> str:
    """A foreign flow and a deleted flow of ours: plan exits 2, apply repairs, the foreign flow stays."""
    seed = str(ctx.policy("seed-firewall.yaml"))
    with Bed("br0", SEED_PORTS) as bed:
        bed.ovsmgr("apply", seed)
        bed.ovsmgr("plan", seed, expect=0)
        bed.ofctl("add-flow", "cookie=0x1234,table=0,priority=7,udp,tp_dst=9 actions=drop")
        victim = _one_rule_flow(bed)
        run(["ovs-ofctl", "-O", "OpenFlow15", "--strict", "del-flows", "br0", victim])
        planned = bed.ovsmgr("plan", seed, expect=2).stdout
        check(re.search(r"^\+ inside-out: 1 added", planned, re.M), f"plan does not add it back:\n{planned}")
        check("foreign flow" in planned and "cookie=0x1234" in planned, f"foreign flow not named:\n{planned}")
        status = json.loads(bed.ovsmgr("status", "br0", "-o", "json").stdout)
        check(status["drifted"], f"status does not see the drift: {status.get('drift')}")
        ctx.fact("plan and status after a foreign flow and a deleted flow", "exit 2, both named; drifted")
        bed.ovsmgr("apply", seed)
        bed.ovsmgr("plan", seed, expect=0)
        check("cookie=0x1234" in bed.ofctl("dump-flows", "table=0"), "apply removed the foreign flow")
        status = json.loads(bed.ovsmgr("status", "br0", "-o", "json").stdout)
        check(not status["drifted"] and status["generation"] == 2, f"after repair: {status}")
        check(status["datapath_type"] == BRIDGE_TYPE, f"datapath after repair: {status['datapath_type']}")
        check(ping(bed, "inside", OUTSIDE), "no ping after the repair")
        ctx.fact("after apply", "repaired, foreign flow kept, status clean")
        return f"deleted '{victim}', plan exit 2, apply repaired, foreign flow kept"


def _one_rule_flow(bed: Bed) -> str:
    """``table=T,priority=P,MATCH`` of a flow of the seed's firewall rule (cookie kind 1)."""
    for line in bed.ofctl("dump-flows", "--no-stats").splitlines():
        found = re.search(r"cookie=0x0?f5a0001[0-9a-f]{8}, table=(\d+), priority=(\d+),(\S+) actions", line)
        if found:
            return f"table={found[1]},priority={found[2]},{found[3]}"
    raise BedError("no flow of a firewall rule on the switch")


def controller(ctx: Context) -> str:
    """``ovsmgr controller`` against the switch: it pushes the policy when the bridge
    connects, answers reject rules with a TCP RST (packet-in/packet-out through the
    datapath) and takes a runtime blocklist change."""
    with Bed("br0", GATEWAY_PORTS) as bed:
        log = ctx.scratch / "controller.log"
        argv = [str(Path(sys.executable).with_name("ovsmgr")), "controller",
                str(ctx.policy("gateway.yaml")), "--db", DB]
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_connected(bed, proc, log)
            bed.announce()
            out = exchange(bed, "lan0", "wan0", "tcp/443", OUTSIDE)
            check(out["ok"] and out.get("seen_as") == PUBLIC, f"lan -> wan tcp/443: {out}")
            rejected = exchange(bed, "wan0", "lan0", "tcp/22", "10.0.0.5")
            check("refused" in str(rejected.get("error", "")).lower(),
                  f"ssh from the wan was not answered with a RST: {rejected}")
            ctx.fact("ssh from the wan (reject rule)", "refused: a RST from the controller")
            check(exchange(bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080)["ok"],
                  "the port forward does not pass before the blocklist change")
            added = bed.ovsmgr("set", "add", "blocklist", OUTSIDE)
            check(blocked(bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080),
                  f"a source added to the blocklist at run time still passes: {added.output}")
            ctx.fact("port forward from a source added to the blocklist at run time", "no answer")
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return "policy pushed on connect, reject answered with a RST, runtime blocklist change in force"


def _wait_connected(bed: Bed, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    """Until the controller's API says the switch is connected (asked cheaply: the controller
    needs the guest's two CPUs to start), then ``ovsmgr status`` must show its policy applied."""
    from ovsmgr.controller.client import ApiClient, ApiError
    from ovsmgr.controller.paths import ControllerPaths

    paths = ControllerPaths(STATE_DIR, bed.bridge)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BedError(f"the controller exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        info = paths.read_info()
        if info is not None and info.get("pid") == proc.pid:
            with contextlib.suppress(ApiError):
                if ApiClient.for_paths(paths).call("GET", "/v1/status").get("connected"):
                    break
        if time.monotonic() > deadline:
            raise BedError(f"the controller did not connect in {timeout:.0f} s:\n{log.read_text()[-2000:]}")
        time.sleep(1 if DATAPATH == "system" else 0.2)
    # The API says connected once the flows are pushed; the bridge's record in OVSDB follows.
    while True:
        status = json.loads(bed.ovsmgr("status", bed.bridge, "-o", "json").stdout)
        if status["applied"] and not status["drifted"]:
            return
        if time.monotonic() > deadline:
            raise BedError(f"after the controller connected: {status}")
        time.sleep(0.5)


def three_box(ctx: Context) -> str:
    """The Vagrant topology in miniature, built by vagrant/provision/dut.sh and host.sh: gen and
    sink namespaces behind NICs found by MAC, dut's bridge with ports inside and outside, and
    the provisioned seed policies between them. The scripts leave TX checksum offload as the
    NICs have it (on, for veths): what TCP and UDP do with it on is a fact of the datapath."""
    gen, sink = LabPort("inside", 1, GEN + "/16"), LabPort("outside", 2, SINK + "/16")
    bed = Bed("br0", (gen, sink))  # its namespaces: kt-inside (gen), kt-outside (sink)
    bed.down(leftovers_only=True)
    try:
        run(["ip", "-batch", "-"], input="".join(
            f"netns add {bed.netns(p.name)}\n"
            f"link add dut-{p.name} address {DUT_MACS[p.name]} type veth peer name eth1 "
            f"address {HOST_MACS[p.name]} netns {bed.netns(p.name)}\n" for p in (gen, sink)))
        with _dut_shim() as env:
            run(["bash", str(PROVISION / "dut.sh"), "--inside-mac", DUT_MACS["inside"],
                 "--outside-mac", DUT_MACS["outside"]], env=env)
        for port, address, routes in ((gen, gen.address, ["10.2.0.0/16"]),
                                      (sink, sink.address, ["10.1.0.0/16", f"{PUBLIC}/32"])):
            assert address is not None
            argv = ["bash", str(PROVISION / "host.sh"), "--mac", HOST_MACS[port.name], "--address", address]
            for route in routes:
                argv += ["--route", route]
            run(["ip", "netns", "exec", bed.netns(port.name), *argv])
        # The installed command, as the operator of dut runs it; the other scenarios run the
        # same command code in this process (a process start costs 20 s of imports under TCG).
        bed.ovsmgr_process("apply", str(ctx.policy("seed-firewall.yaml")))
        bed.assert_datapath()
        offload_on = concurrently(
            partial(exchange, bed, "inside", "outside", "tcp/5201", SINK, timeout=OFFLOAD_TIMEOUT),
            partial(exchange, bed, "inside", "outside", "udp/5201", SINK, timeout=OFFLOAD_TIMEOUT))
        ctx.fact("gen -> sink tcp, udp with TX checksum offload on (as provisioned)",
                 ", ".join(answered(r["ok"]) for r in offload_on))
        # What the embedded lab does and every other scenario does: TX checksum offload off.
        run(["ethtool", "-K", "inside", "tx", "off"])
        run(["ethtool", "-K", "outside", "tx", "off"])
        concurrently(*(partial(bed.exec, p.name, ["ethtool", "-K", "data0", "tx", "off"]) for p in (gen, sink)))
        reply = exchange(bed, "inside", "outside", "tcp/5201", SINK)
        check(reply["ok"] and reply.get("seen_as") == GEN, f"gen -> sink through dut: {reply}")
        check(blocked(bed, "outside", "inside", "tcp/5201", GEN), "sink opened gen")
        ctx.fact("with TX checksum offload off: gen -> sink tcp; sink -> gen tcp", "answered; no answer")
        bed.apply(ctx.policy("seed-nat.yaml"))
        reply = exchange(bed, "inside", "outside", "udp/5201", SINK)
        check(reply["ok"] and reply.get("seen_as") == PUBLIC, f"gen -> sink with the seed NAT: {reply}")
        ctx.fact("gen -> sink udp with the seed NAT", f"answered, from {PUBLIC}")
        return (f"dut.sh + host.sh: gen {GEN} -> sink {SINK} firewalled, then seen as {PUBLIC}; "
                f"with TX checksum offload on: tcp {answered(offload_on[0]['ok'])}, "
                f"udp {answered(offload_on[1]['ok'])}")
    finally:
        bed.down()


OFFLOAD_TIMEOUT = 4.0
"""Seconds for an answer that comes at once when the datapath copes with offloaded checksums."""


@contextlib.contextmanager
def _dut_shim() -> Any:
    """The environment dut.sh runs with. On netdev, an ``ovs-vsctl`` first on PATH that turns
    the script's ``datapath_type=system`` into ``netdev`` (this host has no kernel datapath);
    nothing else differs. In the guest, dut.sh runs as provisioned."""
    if DATAPATH == "system":
        yield None
        return
    real = shutil.which("ovs-vsctl")
    with tempfile.TemporaryDirectory(prefix="kt-shim-") as shim:
        script = Path(shim) / "ovs-vsctl"
        script.write_text("#!/bin/sh\n# three-box on netdev: dut.sh's bridge on the userspace datapath\n"
                          'for a; do shift; [ "$a" = datapath_type=system ] && a=datapath_type=netdev\n'
                          f'  set -- "$@" "$a"; done\nexec {real} "$@"\n')
        script.chmod(0o755)
        yield {**os.environ, "PATH": f"{shim}:{os.environ.get('PATH', '')}"}


GEN, SINK = "10.1.0.2", "10.2.0.2"
DUT_MACS = {"inside": "02:0a:01:00:00:01", "outside": "02:0a:02:00:00:01"}
HOST_MACS = {"inside": "02:0a:01:00:00:02", "outside": "02:0a:02:00:00:02"}
"""As in vagrant/Vagrantfile."""
PROVISION = REPO / "vagrant" / "provision"

PROBE_ECHO = [*AGENT, "echo"]
PROBE_SESSION = [*AGENT, "session"]
FRAG = [AGENT[0], "-I", "-S", str(Path(__file__).with_name("fragprobe.py"))]
"""tests/kernel/fragprobe.py, stdlib only, started as the traffic agent is."""


# -- the datapath differences ------------------------------------------------------------------
def fragments(ctx: Context) -> str:
    """A UDP datagram larger than the MTU (3,000 bytes: three fragments) through the seed
    firewall (its rule has no ports), then through rules for one UDP port and for echo requests."""

    def send(src: str, address: str, port: int, order: str = "kernel", size: int = 3000) -> str:
        argv = [*FRAG, "send", address, str(port), "--size", str(size), "--order", order,
                "--timeout", str(FRAG_TIMEOUT)]
        out = bed.exec(src, argv, timeout=FRAG_TIMEOUT + 60)
        lines = out.stdout.strip().splitlines()
        if not lines:
            raise BedError(f"fragprobe printed nothing: {out.stderr.strip()}")
        reply = json.loads(lines[-1])
        check(not reply["ok"] or reply.get("len") == size, f"the server got {reply.get('len')} of {size} bytes")
        return answered(reply["ok"])

    with Bed("br0", SEED_PORTS) as bed:
        bed.apply(ctx.policy("seed-firewall.yaml"))
        receiver = bed.server("outside", [*FRAG, "serve", "7000", "7001"])
        bed.server("inside", [*FRAG, "serve", "7000"])
        before = _reassembled(receiver.pid)
        seed = dict(zip(SEED_FRAGMENT_CASES, concurrently(
            partial(send, "inside", OUTSIDE, 7000),
            partial(send, "inside", OUTSIDE, 7001, "reverse"),
            partial(send, "inside", OUTSIDE, 7000, "overlap"),
            partial(send, "outside", INSIDE, 7000)), strict=True))
        for what, seen in seed.items():
            ctx.fact(what, seen)
        bed.apply(ctx.write("udp-7000.yaml", policy_text(rule("udp-7000", "udp/7000"),
                                                         rule("ping", "icmp/echo-request"))))
        ported = dict(zip(PORT_FRAGMENT_CASES, concurrently(
            partial(send, "inside", OUTSIDE, 7000, size=1000),
            partial(send, "inside", OUTSIDE, 7000),
            partial(send, "inside", OUTSIDE, 7000, "reverse"),
            partial(send, "inside", OUTSIDE, 7001),
            lambda: answered(ping(bed, "inside", OUTSIDE, size=1600))), strict=True))
        for what, seen in ported.items():
            ctx.fact(what, seen)
        # Where the reassembly for conntrack happens: ovs-vswitchd's ipf (netdev) or the kernel.
        ipf = run(["ovs-appctl", "dpctl/ipf-get-status"], check=False)
        ctx.fact("dpctl/ipf-get-status", "answers" if ipf.returncode == 0 else "not supported")
        counters = {m[1]: int(m[2]) for m in re.finditer(r"v4 frags (\w[\w ]*?): (\d+)", ipf.stdout)}
        got = _reassembled(receiver.pid) - before
        return (f"seed firewall: {', '.join(seed.values())}; udp/7000 rule: "
                f"{', '.join(ported.values())}; outside reassembled {got} datagrams"
                + (f"; ipf {counters}" if counters else ""))


FRAG_TIMEOUT = 4.0
SEED_FRAGMENT_CASES = (
    "seed firewall: 3,000-byte datagram inside -> outside",
    "seed firewall: the same, its fragments built by hand and sent last first",
    "seed firewall: a datagram whose 2nd fragment overlaps the 1st, inside -> outside",
    "seed firewall: 3,000-byte datagram outside -> inside",
)
PORT_FRAGMENT_CASES = (
    "rule udp/7000: 1,000-byte datagram to udp/7000 (not fragmented)",
    "rule udp/7000: 3,000-byte datagram to udp/7000",
    "rule udp/7000: the same, its fragments built by hand and sent last first",
    "rule udp/7000: 3,000-byte datagram to udp/7001",
    "rule icmp/echo-request: a 1,600-byte ping inside -> outside",
)


def _snmp(pid: int, group: str, counter: str) -> int:
    """A counter of /proc/net/snmp in the namespace of process ``pid`` (a host's server)."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
             if line.startswith(f"{group}:")]
    return int(dict(zip(lines[0], lines[1], strict=True))[counter])


def _reassembled(pid: int) -> int:
    """Datagrams the namespace of process ``pid`` reassembled from fragments (ReasmOKs)."""
    return _snmp(pid, "Ip", "ReasmOKs")


def nat_ports(ctx: Context) -> str:
    """Three inside hosts (addresses of the inside namespace) connect from the same source
    port through one SNAT address: the seed NAT (no port range), then a range of two ports."""
    hosts = [INSIDE, "10.0.0.11", "10.0.0.12"]
    path = ctx.policy("seed-nat.yaml")
    with Bed("br0", SEED_PORTS) as bed:
        bed.exec("inside", ["sh", "-ec", "; ".join(f"ip addr add {h}/24 dev eth0" for h in hosts[1:])])
        bed.apply(path)
        bed.announce({"inside": hosts[1:]})
        bed.serve("outside", "tcp", 8080)

        def dial(src: str, sport: int, timeout: float = 10.0) -> dict[str, Any]:
            argv = [*AGENT, "connect", "tcp", OUTSIDE, "8080", "--timeout", str(timeout),
                    "--src", src, "--sport", str(sport)]
            lines = bed.exec("inside", argv, timeout=timeout + 60).stdout.strip().splitlines()
            return dict(json.loads(lines[-1])) if lines else {"ok": False}

        seed = [dial(hosts[0], 40000), dial(hosts[1], 40000)]
        for got in seed:
            check(got["ok"] and got.get("seen_as") == PUBLIC, f"through the seed NAT: {got}")
        ports = [got["seen_port"] for got in seed]
        check(ports[0] != ports[1], f"both connections got port {ports[0]}")
        ctx.fact("seed NAT: first connection from source port 40000", _port_kind(ports[0], 40000))
        ctx.fact("seed NAT: second connection from source port 40000 (another host)",
                 _port_kind(ports[1], 40000))
        text = path.read_text()
        check(f"translate_to: {PUBLIC}\n" in text, f"{path} does not translate to {PUBLIC}")
        ranged = ctx.write("nat-range.yaml", text.replace(
            f"translate_to: {PUBLIC}\n", f"translate_to: {PUBLIC}\n    ports: {RANGE[0]}-{RANGE[1]}\n"))
        bed.apply(ranged)
        first, second = dial(hosts[0], 40001), dial(hosts[1], 40001)
        third = dial(hosts[2], 40001, timeout=BLOCK_TIMEOUT)
        in_range = [got.get("seen_port") for got in (first, second)]
        check(first["ok"] and second["ok"], f"through the ranged NAT: {first} {second}")
        check(all(RANGE[0] <= p <= RANGE[1] for p in in_range if p) and in_range[0] != in_range[1],
              f"ports {in_range} not distinct ports of {RANGE}")
        ctx.fact(f"ports: {RANGE[0]}-{RANGE[1]}: two connections from source port 40001",
                 "answered, on the two ports of the range")
        ctx.fact(f"ports: {RANGE[0]}-{RANGE[1]}: a third one (range exhausted)", answered(third["ok"]))
        return (f"seed NAT: 40000 -> {ports[0]}, {ports[1]}; range {RANGE[0]}-{RANGE[1]}: "
                f"40001 -> {in_range[0]}, {in_range[1]}, third {answered(third['ok'])}")


RANGE = (61000, 61001)


def _port_kind(port: int, original: int) -> str:
    if port == original:
        return f"kept {original}"
    if port == original + 1:
        return f"{original + 1}: the next free port"
    if 1024 <= port <= 65535:
        return "another port of 1024-65535"
    return f"port {port}, outside 1024-65535"


def zone_limit(ctx: Context) -> str:
    """conntrack.max_connections: 2: with two connections open, a third is refused while another
    bridge's zone on the same datapath takes connections; then what the limit counts once
    the two are closed (TIME_WAIT), as ovsmgr status reports it."""
    limited = policy_text(rule("web", "tcp/8080"), extra="conntrack: {zone: 7, max_connections: 2}\n")
    other = policy_text(rule("web", "tcp/8080"), bridge="br1", ports=("in2", "out2"),
                        extra="conntrack: {zone: 8}\n")
    with Bed("br0", SEED_PORTS) as bed, Bed("br1", OTHER_PORTS) as other_bed:
        bed.apply(ctx.write("zone-7.yaml", limited))
        other_bed.apply(ctx.write("zone-8.yaml", other))
        echo = bed.server("outside", [*PROBE_ECHO, "8080", "--timeout", "900"])
        other_bed.serve("out2", "tcp", 8080)
        sessions = [bed.popen("inside", [*PROBE_SESSION, OUTSIDE, "8080", "--timeout", "5"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
        try:
            for session in sessions:
                assert session.stdin and session.stdout
                check(session.stdout.readline().strip() == "connected", "a session did not connect")
                session.stdin.write("one\n")
                session.stdin.flush()
                check(session.stdout.readline().strip() == "reply one", "a session does not echo")
            segments = _snmp(echo.pid, "Tcp", "InSegs")
            third, elsewhere = concurrently(
                partial(connect, bed, "inside", "tcp", OUTSIDE, 8080, timeout=BLOCK_TIMEOUT),
                partial(exchange, other_bed, "in2", "out2", "tcp/8080", "198.51.102.9"))
            ctx.fact("zone 7 (limit 2), two connections open: a third", answered(third["ok"]))
            # Where the refused commit stops the SYN: the server namespace counts what reaches it
            # (nothing else talks to it meanwhile: the two sessions are idle).
            ctx.fact("the refused connection's SYN reaches the server",
                     "yes" if _snmp(echo.pid, "Tcp", "InSegs") > segments else "no")
            ctx.fact("meanwhile a connection in zone 8 (another bridge)", answered(elsewhere["ok"]))
            full = status_conntrack(bed)
            ctx.fact("ovsmgr status, two open", _usage(full))
        finally:
            for session in sessions:
                if session.stdin:
                    session.stdin.close()  # the session ends: FIN, the echo server closes too
                try:
                    session.wait(10)
                except subprocess.TimeoutExpired:
                    session.kill()
                    session.wait()
        deadline = time.monotonic() + 20
        while True:  # until conntrack has seen both FIN/ACK exchanges
            entries = sorted(_conntrack_summary(line) for line in bed.conntrack_entries(zone=7))
            if entries and all(e == "tcp/TIME_WAIT" for e in entries):
                break
            check(time.monotonic() < deadline, f"zone 7 after closing both: {entries}")
            time.sleep(0.5)
        closed = status_conntrack(bed)
        ctx.fact("zone 7 in dpctl/dump-conntrack, both closed", "2 entries, TIME_WAIT"
                 if len(entries) == 2 else f"{len(entries)} entries, TIME_WAIT")
        ctx.fact("ovsmgr status, both closed", _usage(closed))
        late = connect(bed, "inside", "tcp", OUTSIDE, 8080, timeout=BLOCK_TIMEOUT)
        ctx.fact("zone 7, both closed: a new connection", answered(late["ok"]))
        return (f"limit {full['limit']}: third {answered(third['ok'])}, zone 8 "
                f"{answered(elsewhere['ok'])}; status {full['connections']}/{full['limit']} open, "
                f"{closed['connections']}/{closed['limit']} after closing "
                f"(conntrack: {' '.join(entries)}); then a new one {answered(late['ok'])}")


UDP_FIRST, UDP_SINGLE = 6, 15
"""conntrack-timeouts' two UDP keys: far apart, so the remaining timeout says which one applied,
and the first long enough that the entry is still there when the client (a refused datagram, no
wait) has returned, also on a busy host."""


def conntrack_timeouts(ctx: Context) -> str:
    """`conntrack.timeouts` on zone 9: the CT_Zone row, which key times a UDP flow of one datagram
    nobody answers, the flow expiring, and the row going with the policy."""
    timeouts = f"conntrack:\n  zone: 9\n  timeouts: {{udp_first: {UDP_FIRST}, udp_single: {UDP_SINGLE}}}\n"
    with Bed("br0", SEED_PORTS) as bed:
        bed.apply(ctx.write("timeouts.yaml", policy_text(rule("udp-7000", "udp/7000"), extra=timeouts)))
        ctx.fact("zone 9's timeout policy in OVSDB", _zone_policy(9))
        connect(bed, "inside", "udp", OUTSIDE, 7000, timeout=BLOCK_TIMEOUT)  # nobody serves 7000
        left = _udp_timeouts(9)
        check(left, "the datagram left no UDP entry in zone 9")
        key = "udp_first" if max(left) <= UDP_FIRST else "udp_single" if max(left) <= UDP_SINGLE else "neither"
        ctx.fact("a flow of one unanswered UDP datagram lives", key)
        deadline = time.monotonic() + UDP_SINGLE + 20
        while _udp_timeouts(9) and time.monotonic() < deadline:
            time.sleep(0.5)
        ctx.fact("the flow, once its timeout has passed", "expired" if not _udp_timeouts(9) else "still there")
        bed.apply(ctx.write("no-timeouts.yaml", policy_text(rule("udp-7000", "udp/7000"),
                                                            extra="conntrack:\n  zone: 9\n")))
        ctx.fact("zone 9's timeout policy after a policy without timeouts", _zone_policy(9))
        return f"timeouts left {left}; the flow followed {key}"


def _zone_policy(zone: int) -> str:
    from ovsmgr.southbound.ovsdb import SwitchDB

    with SwitchDB(DB) as db:
        found = [timeouts for (_, z), (timeouts, _) in db.zone_timeouts().items() if z == zone]
    return ", ".join(f"{k}={v}" for k, v in sorted(found[0].items())) if found else "none"


def _udp_timeouts(zone: int) -> list[int]:
    """Seconds left of the zone's UDP entries (`dpctl/dump-conntrack -s`)."""
    out = run(["ovs-appctl", "dpctl/dump-conntrack", "-s", f"zone={zone}"]).stdout
    return [int(m[1]) for line in out.splitlines() if line.startswith("udp")
            if (m := re.search(r"timeout=(\d+)", line))]


def _usage(usage: dict[str, Any]) -> str:
    return f"{usage['connections']} of {usage['limit']} connections" + (", full" if usage["full"] else "")


FLOOD_NAT_PORTS = (20000, 20999)
"""The SNAT's source ports in nat-flood: few enough that seconds of a guest's flood to one
destination use them up (64,512 take the bench's 250 kpps generator)."""
FLOOD_LIMIT = 100
"""nat-flood's `limit:` on the NAT rule, new connections a second: the flood's seconds of it (and
its burst) stay well below half the ports (docs/policy.md, `max_connections`)."""
FLOOD_SECONDS, CALM_SECONDS = 4, 3
"""The flood's length (hping3's, from its start), and the seconds of stream before and after it."""
FLOOD_PACE = ["--flood"] if DATAPATH == "system" else ["-i", "u1000"]
"""hping3's pace. In the guest as fast as it goes: its usleep pacing is coarse under TCG (``-i
u100`` sent 50 SYNs a second there). On the host at most 1,000 a second: ten times the limit, and
far below the rates at which the userspace datapath's socket buffers drop packets whatever the
policy when its thread is descheduled on a busy host (docs/bench.md, "The netdev datapath drops
at 3 ms of scheduling delay": at 5,000 a second a ping through the limit lost 1 of 54)."""
STREAM_RATE = "10M"
STREAM_PORT = 5201
PING_EVERY = 0.05


def nat_flood(ctx: Context) -> str:
    """A SYN flood from random sources to one destination through SNAT while an established
    TCP stream (iperf3) and a ping pass the same switch: first without a limit (the control:
    the flood uses up the NAT's ports), then with `limit:` on the NAT rule, whose meter drops the
    flood's SYNs above the rate before they are committed. With the limit the stream keeps
    delivering and the ping loses nothing. The figures (what the stream delivered during the
    flood against before it, pings lost, SYNs offered and delivered) are reported, not checked."""
    from ovsmgr.bench.testbed import Host, drop_load_at_host, sink_load_counter

    inside_out = "    - {name: inside-out, from: inside, action: allow}"
    nat = (f"nat:\n  - {{name: masq, type: snat, from: inside, to: outside, translate_to: {PUBLIC}, "
           f"ports: {FLOOD_NAT_PORTS[0]}-{FLOOD_NAT_PORTS[1]}}}\n")
    limited = nat.replace("}\n", f", limit: {FLOOD_LIMIT}/s}}\n")
    ports = FLOOD_NAT_PORTS[1] - FLOOD_NAT_PORTS[0] + 1
    with Bed("br0", SEED_PORTS) as bed:
        sink = Host(bed.netns("outside"), "eth0", SEED_PORTS[1].address or "", SEED_PORTS[1].mac)
        drop_load_at_host(sink)  # the flood's SYNs are counted and dropped: no RST comes back
        bed.apply(ctx.write("flood-nat.yaml", policy_text(inside_out, extra=nat)))
        bed.announce()
        plain = _flood_trial(bed, lambda: sink_load_counter(sink))
        translated = len(bed.conntrack_entries(PUBLIC, zone=1))
        ctx.fact("no limit: the NAT's 1,000 ports after the flood to one destination",
                 "90 % or more in use" if translated >= 0.9 * ports else f"{translated} in use")
        run(["ovs-appctl", "dpctl/flush-conntrack"])  # the first flood's half-open connections go
        bed.apply(ctx.write("flood-nat-limit.yaml", policy_text(inside_out, extra=limited)))
        metered = _flood_trial(bed, lambda: sink_load_counter(sink))
        meters = json.loads(bed.ovsmgr("status", bed.bridge, "-o", "json").stdout)["meters"]
        check([m["rule"] for m in meters] == ["masq"], f"ovsmgr status shows meters {meters}")
        dropped = int(meters[0].get("dropped_packets") or 0)
        ctx.fact(f"limit: {FLOOD_LIMIT}/s on the NAT rule: its meter (ovsmgr status)",
                 "dropped packets" if dropped > 0 else "dropped nothing")
        kept = metered["segments_during"] > 0 and metered["segments_after"] > 0
        ctx.fact(f"limit: {FLOOD_LIMIT}/s on the NAT rule: the established TCP stream during and after "
                 "the flood", "kept delivering" if kept else "stalled")
        ctx.fact(f"limit: {FLOOD_LIMIT}/s on the NAT rule: pings lost",
                 "none" if metered["lost"] == 0 else "some")
        return (f"no limit: {_flood_figures(plain)}; {translated} connections translated ({ports} NAT "
                f"ports); limit {FLOOD_LIMIT}/s: {_flood_figures(metered)}; the meter dropped {dropped:,}")


def _flood_trial(bed: Bed, syns_at_sink: Callable[[], int]) -> dict[str, Any]:
    """The stream and the ping, CALM_SECONDS, the flood, CALM_SECONDS. What the stream delivered
    is read from the outside host's own counters at each boundary, in this process (no clock of
    another process to align): TCP segments received and IP bytes received (``IpExt InOctets``:
    the stream's, and the ping's 84 bytes every PING_EVERY; the flood's SYNs are dropped at the
    host's ingress, before IP counts them). Pings: those sent before the end less a second (the
    ping is stopped there), and those sent during the flood."""
    from ovsmgr.bench.flood import ping_figures

    server = bed.popen("outside", ["iperf3", "-s", "-1", "-p", str(STREAM_PORT)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = pinger = flood = None
    try:
        _wait_tcp_listening(server, STREAM_PORT)
        client = bed.popen("inside", ["iperf3", "-c", OUTSIDE, "-p", str(STREAM_PORT), "-t", "600",
                                      "-b", STREAM_RATE, "--connect-timeout", "30000"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pinger = bed.popen("inside", ["ping", "-n", "-D", "-i", str(PING_EVERY), "-w", "600", OUTSIDE],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while _snmp(server.pid, "Tcp", "InSegs") < 100:  # the stream runs (slow to start under TCG)
            check(time.monotonic() < deadline and client.poll() is None, "the TCP stream did not start")
            time.sleep(0.2)
        marks = [_stream_counters(server.pid)]  # before: CALM_SECONDS of the stream alone
        time.sleep(CALM_SECONDS)
        marks.append(_stream_counters(server.pid))
        syn0 = syns_at_sink()
        flood = bed.popen("inside", ["timeout", "-s", "INT", str(FLOOD_SECONDS), "hping3", *FLOOD_PACE,
                                     "--rand-source", "-S", "-p", "9", OUTSIDE],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # hping3 takes a moment to start: the flood's window begins a second later
        marks.append(_stream_counters(server.pid))
        flood_out = flood.communicate(timeout=FLOOD_SECONDS + 120)[0]
        marks.append(_stream_counters(server.pid))
        syn1 = syns_at_sink()
        time.sleep(CALM_SECONDS)
        marks.append(_stream_counters(server.pid))
        pinger.send_signal(signal.SIGINT)  # ping prints its statistics and exits
        ping_out = pinger.communicate(timeout=60)[0]
    finally:
        for proc in (flood, pinger, client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    (t0, _, b0), (t1, _, b1), (t2, s2, b2), (t3, s3, b3), (t4, s4, b4) = marks
    offered = re.search(r"(\d+) packets tra\w*mitted", flood_out)
    whole = ping_figures(ping_out, (0.0, t4 - 1.0))
    during = ping_figures(ping_out, (t2, t3))
    return {
        "before": _mbps(b1 - b0, t1 - t0), "during": _mbps(b3 - b2, t3 - t2), "after": _mbps(b4 - b3, t4 - t3),
        "segments_during": s3 - s2, "segments_after": s4 - s3,
        "pings": int(whole["ping_sent"]), "lost": round(whole["ping_sent"] * whole["ping_loss"]),
        "pings_during": int(during["ping_sent"]), "lost_during": round(during["ping_sent"] * during["ping_loss"]),
        "offered": int(offered[1]) if offered else -1,
        "delivered": syn1 - syn0 if syn0 >= 0 and syn1 >= 0 else -1,
    }


def _stream_counters(pid: int) -> tuple[float, int, int]:
    """(now, TCP segments, IP bytes) the namespace of process ``pid`` has received."""
    return time.time(), _snmp(pid, "Tcp", "InSegs"), _netstat(pid, "IpExt", "InOctets")


def _netstat(pid: int, group: str, counter: str) -> int:
    """A counter of /proc/net/netstat (the same two-line layout as /proc/net/snmp)."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
             if line.startswith(f"{group}:")]
    return int(dict(zip(lines[0], lines[1], strict=True))[counter])


def _mbps(octets: int, seconds: float) -> float:
    return round(octets * 8 / seconds / 1e6, 2) if seconds > 0 else math.nan


def _flood_figures(trial: dict[str, Any]) -> str:
    before, during = trial["before"], trial["during"]
    ratio = "n/a" if math.isnan(before) or math.isnan(during) or not before else f"{during / before:.2f}x"
    return (f"SYNs offered {trial['offered']:,}, delivered {trial['delivered']:,}; stream Mbit/s before "
            f"{before:g}, during {during:g}, after {trial['after']:g} (delivered ratio {ratio}); pings lost "
            f"{trial['lost']} of {trial['pings']} ({trial['lost_during']} of {trial['pings_during']} during "
            f"the flood)")


def _wait_tcp_listening(server: subprocess.Popen[str], port: int, timeout: float = 60.0) -> None:
    """Until the server process's namespace has a TCP socket listening on ``port`` (read from its
    /proc: no process to start; iperf3 says nothing until it ends)."""
    deadline = time.monotonic() + timeout
    listening = re.compile(rf"^\s*\d+: [0-9A-F]+:{port:04X} [0-9A-F]+:0000 0A ", re.M)
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BedError(f"the server exited: {server.stderr.read() if server.stderr else ''}")
        tables = (Path(f"/proc/{server.pid}/net/{name}") for name in ("tcp", "tcp6"))
        if any(listening.search(table.read_text()) for table in tables if table.exists()):
            return
        time.sleep(0.1)
    raise BedError(f"nothing listens on tcp/{port} after {timeout:.0f} s")


SCENARIOS: dict[str, Callable[[Context], str]] = {
    "seed-firewall": seed_firewall,
    "seed-nat": seed_nat,
    "gateway": gateway,
    "cut-on-rule-removal": cut_on_rule_removal,
    "hitless-apply": hitless_apply,
    "drift": drift,
    "controller": controller,
    "three-box": three_box,
    "fragments": fragments,
    "nat-ports": nat_ports,
    "zone-limit": zone_limit,
    "conntrack-timeouts": conntrack_timeouts,
    "nat-flood": nat_flood,
}


# -- running them ------------------------------------------------------------------------------
def run_all(names: list[str], ctx: Context, tag: str) -> int:
    passed = failed = 0
    for name in names:
        started = time.monotonic()
        ctx.facts = {}
        try:
            detail = SCENARIOS[name](ctx)
            problems = compare(name, DATAPATH, ctx.facts)
            if problems:
                raise BedError(f"{detail}; not as tests/kernel/expected.py says for {DATAPATH}: "
                               + "; ".join(problems))
        except Exception as exc:  # a scenario's failure must not stop the others
            failed += 1
            print(f"{tag} FAIL {name} ({time.monotonic() - started:.1f} s): "
                  f"{' '.join(str(exc).split())[:1500] or type(exc).__name__}", flush=True)
            for line in traceback.format_exc().splitlines()[-12:]:
                print(f"{tag}     {line}", flush=True)
        else:
            passed += 1
            print(f"{tag} PASS {name} ({time.monotonic() - started:.1f} s): {detail}", flush=True)
        print(f"{tag} FACTS {name} {json.dumps(ctx.facts, sort_keys=True)}", flush=True)
    print(f"{tag} {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


def main(argv: list[str] | None = None) -> int:
    from tests.kernel import netdev

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datapath", choices=["system", "netdev", "dpdk"], default=DATAPATH,
                        help="system: the system OVS (the kernel-test guest); netdev, dpdk: a "
                             "private userspace OVS in a namespace of its own (any host, root)")
    parser.add_argument("--tag", default="ovsmgr-kernel-test:", help="prefix of every result line")
    parser.add_argument("--policies", type=Path, default=None,
                        help="the repository's policies with this datapath (default: /etc/ovsmgr "
                             "on system, policies/ otherwise)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--list", action="store_true", help="print the scenario names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if args.datapath != "system" and netdev.INNER_ENV not in os.environ:
        # Start the private switch, then run this again inside its namespace.
        with netdev.PrivateSwitch(args.datapath) as switch:
            status = switch.run_inside([sys.executable, "-m", "tests.kernel.scenarios",
                                        *(sys.argv[1:] if argv is None else argv)])
            switch.keep = status != 0
            return status
    if args.datapath != DATAPATH:
        raise SystemExit(f"--datapath {args.datapath}, but the environment says {DATAPATH}")
    policies = args.policies or (Path("/etc/ovsmgr") if DATAPATH == "system" else REPO / "policies")
    run(["ovs-vsctl", "--timeout=30", "show"])  # the switch must be running
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ovsmgr-kt-")))
        if DATAPATH != "system":
            stack.enter_context(netdev.private_etc(scratch))
        return run_all(args.only or list(SCENARIOS), Context(policies, scratch), args.tag)


if __name__ == "__main__":
    sys.exit(main())
