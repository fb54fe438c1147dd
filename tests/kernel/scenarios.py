"""The real-traffic scenario suite on the kernel datapath, run inside the kernel-test guest.

``python -m tests.kernel.scenarios [--tag TAG] [--policies DIR] [--only NAME...] [--list]``

Each scenario builds its bridge (``datapath_type=system``) and host namespaces on
the guest's system Open vSwitch, drives ``ovsmgr apply/plan/status`` as an operator
would, sends real packets and removes everything again. One line per scenario,
``TAG PASS name (seconds): what was seen`` or ``TAG FAIL name (seconds): why``, then
``TAG N passed, M failed``; vagrant/guest/kernel-test reads these from the serial
console. Exit status 0 only if every scenario passed.

The policies are the repository's, as provisioned into /etc/ovsmgr by
vagrant/provision/ovsmgr.sh (with ``datapath: system``); generated ones are
written with ``datapath: system`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ovsmgr.compiler import compile_policy
from ovsmgr.policy import load_policy
from ovsmgr.southbound.lab_spec import LabPort
from tests.kernel.bed import (
    AGENT,
    STATE_DIR,
    SYSTEM_DB,
    Bed,
    BedError,
    blocked,
    concurrently,
    connect,
    exchange,
    ping,
    run,
)

SEED_PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
GATEWAY_PORTS = (LabPort("lan0", 1, "10.0.0.5/24"), LabPort("dmz0", 2, "10.0.1.10/24"),
                 LabPort("wan0", 3, "198.51.100.9/24"))
INSIDE, OUTSIDE = "10.0.0.10", "198.51.100.9"
PUBLIC = "200.200.200.200"

POLICY = """version: 1
switch:
  bridge: br0
  datapath: system
  ports: {{inside: {{ofport: 1}}, outside: {{ofport: 2}}}}
  links: [[inside, outside]]
zones:
  inside: {{ports: [inside]}}
  outside: {{ports: [outside]}}
firewall:
  default: drop
  rules:
{rules}
"""


def policy_text(*rules: str) -> str:
    return POLICY.format(rules="\n".join(rules))


def rule(name: str, services: str, action: str = "allow") -> str:
    return f"    - {{name: {name}, from: inside, services: [{services}], action: {action}}}"


@dataclass
class Context:
    policies: Path
    scratch: Path

    def policy(self, name: str) -> Path:
        path = self.policies / name
        if not re.search(r"^  datapath: system$", path.read_text(), re.M):
            raise BedError(f"{path} does not say datapath: system")
        return path

    def write(self, name: str, text: str) -> Path:
        path = self.scratch / name
        path.write_text(text)
        return path


def check(condition: object, message: str) -> None:
    if not condition:
        raise BedError(message)


def expect_blocked(cases: dict[str, Callable[[], bool]]) -> None:
    """Every case (a check that returns True when the traffic did not pass) at once: each
    waits for an answer that must not come, and the waits overlap."""
    results = concurrently(*cases.values())
    leaks = [what for what, stopped in zip(cases, results, strict=True) if not stopped]
    check(not leaks, "passed although the policy forbids it: " + "; ".join(leaks))


# -- the scenarios -----------------------------------------------------------------------------
def seed_firewall(ctx: Context) -> str:
    """policies/seed-firewall.yaml: inside may open anything, outside nothing; replies pass."""
    with Bed("br0", SEED_PORTS) as bed:
        check(not ping(bed, "inside", OUTSIDE, deadline=2), "an empty secure bridge forwarded a ping")
        bed.apply(ctx.policy("seed-firewall.yaml"))
        bed.assert_kernel_datapath()
        check(ping(bed, "inside", OUTSIDE, count=3), "inside cannot ping outside")
        for proto in ("tcp", "udp"):
            reply = exchange(bed, "inside", "outside", f"{proto}/8080", OUTSIDE)
            check(reply["ok"], f"inside -> outside {proto}/8080 got no answer: {reply}")
            check(reply.get("seen_as") == INSIDE, f"{proto} arrived as from {reply.get('seen_as')}")
        expect_blocked({
            "outside -> inside tcp/8081": partial(blocked, bed, "outside", "inside", "tcp/8081", INSIDE),
            "outside -> inside udp/8081": partial(blocked, bed, "outside", "inside", "udp/8081", INSIDE),
            "outside -> inside ping": lambda: not ping(bed, "outside", INSIDE, deadline=2),
        })
        tracked = bed.conntrack_entries(f"src={INSIDE}")
        check(tracked, "no kernel conntrack entry for inside's connections")
        return f"ping+tcp+udp out, nothing in; {len(tracked)} kernel conntrack entries"


def seed_nat(ctx: Context) -> str:
    """policies/seed-nat.yaml: inside is translated to 200.200.200.200 and back."""
    path = ctx.policy("seed-nat.yaml")
    switch_mac = compile_policy(load_policy([path])).policy.mac.lower()
    with Bed("br0", SEED_PORTS) as bed:
        bed.apply(path)
        bed.assert_kernel_datapath()
        bed.announce()
        for proto, port in (("tcp", 8080), ("udp", 5353)):
            reply = exchange(bed, "inside", "outside", f"{proto}/{port}", OUTSIDE)
            check(reply["ok"], f"inside -> outside {proto}/{port} got no answer: {reply}")
            check(reply.get("seen_as") == PUBLIC, f"{proto} arrived as from {reply.get('seen_as')}")
        check(ping(bed, "inside", OUTSIDE, count=2), "inside cannot ping outside through NAT")
        check(blocked(bed, "outside", "inside", "tcp/8081", INSIDE), "outside opened tcp/8081 to inside")
        arping = bed.exec("outside", ["arping", "-c", "1", "-w", "3", "-I", "eth0", PUBLIC])
        check(arping.returncode == 0, f"nobody answered ARP for {PUBLIC}: {arping.stdout}")
        check(switch_mac in arping.stdout.lower(), f"ARP for {PUBLIC} not answered by {switch_mac}")
        natted = bed.conntrack_entries(PUBLIC)
        check(natted, f"no kernel conntrack entry translated to {PUBLIC}")
        return f"tcp+udp+ping seen as {PUBLIC}, ARP answered by {switch_mac}, nothing in"


def gateway(ctx: Context) -> str:
    """policies/gateway.yaml: masquerade, port forward, blocklist, reject, default drop."""
    with Bed("br0", GATEWAY_PORTS) as bed:
        bed.exec("wan0", ["ip", "addr", "add", "198.51.100.66/24", "dev", "eth0"])
        bed.apply(ctx.policy("gateway.yaml"))
        bed.assert_kernel_datapath()
        bed.announce()
        out = exchange(bed, "lan0", "wan0", "tcp/443", OUTSIDE)
        check(out["ok"] and out.get("seen_as") == PUBLIC, f"lan -> wan tcp/443 not masqueraded: {out}")
        check(1024 <= out["seen_port"] <= 65535, f"masquerade port {out['seen_port']}")
        dns = exchange(bed, "lan0", "wan0", "udp/53", OUTSIDE)
        check(dns.get("seen_as") == PUBLIC, f"lan -> wan udp/53: {dns}")
        check(ping(bed, "lan0", OUTSIDE), "lan cannot ping the wan")
        dmz = exchange(bed, "lan0", "dmz0", "tcp/80", "10.0.1.10")
        check(dmz["ok"] and dmz.get("seen_as") == "10.0.0.5", f"lan -> dmz tcp/80: {dmz}")
        forward = exchange(bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080)
        check(forward["ok"] and forward.get("seen_as") == OUTSIDE, f"port forward: {forward}")
        expect_blocked({
            "smtp out (no rule: default drop)": partial(blocked, bed, "lan0", "wan0", "tcp/25", OUTSIDE),
            "ssh lan -> dmz from a non-admin": partial(blocked, bed, "lan0", "dmz0", "tcp/22", "10.0.1.10"),
            "the port forward from a blocklisted source": partial(
                blocked, bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080, from_addr="198.51.100.66"),
            "wan -> dmz directly": partial(blocked, bed, "wan0", "dmz0", "tcp/80", "10.0.1.10"),
            "ssh from the wan (rejected)": partial(blocked, bed, "wan0", "lan0", "tcp/22", "10.0.0.5"),
            "dmz -> lan": partial(blocked, bed, "dmz0", "lan0", "tcp/80", "10.0.0.5"),
        })
        # conntrack.max_connections on the kernel datapath: nf_conncount, set through dpctl.
        usage = json.loads(bed.ovsmgr("status", "br0", "-o", "json").stdout)["conntrack"]
        check(usage and usage["limit"] == 100000, f"zone limit not in force: {usage}")
        entries = sorted(_conntrack_summary(line) for line in bed.conntrack_entries("zone=10"))
        return (f"masquerade, port forward, blocklist, rejects and default drop as written; "
                f"zone 10 limit {usage['limit']} (status counts {usage['connections']}; "
                f"conntrack has {len(entries)}: {' '.join(entries)})")


def _conntrack_summary(line: str) -> str:
    """``tcp/TIME_WAIT``, ``udp``: protocol and TCP state of a dump-conntrack line."""
    state = re.search(r"state=(\w+)", line)
    return line.split(",")[0] + (f"/{state[1]}" if state else "")


def cut_on_rule_removal(ctx: Context) -> str:
    """An open TCP session survives a change to another rule and dies when its rule goes."""
    with Bed("br0", SEED_PORTS) as bed:
        bed.apply(ctx.write("cut-1.yaml", policy_text(rule("web", "tcp/8080"), rule("other", "tcp/9090"))))
        echo = bed.popen("outside", [*PROBE_ECHO, "8080", "--timeout", "300"], stdout=subprocess.PIPE)
        session = None
        try:
            assert echo.stdout
            check("listening" in echo.stdout.readline(), "echo server did not start")
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
            bed.apply(ctx.write("cut-3.yaml", policy_text(rule("other", "tcp/9091"))))
            third = say("three")
            check(third == "timeout", f"the session lived on after its rule was removed: {third!r}")
            late = connect(bed, "inside", "tcp", OUTSIDE, 8080, timeout=2)  # to the echo server
            check(not late["ok"], f"a new tcp/8080 connection passed after the rule was removed: {late}")
        finally:
            for proc in (session, echo):
                if proc is not None:
                    proc.kill()
                    proc.wait()
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
        bed.ovsmgr("apply", seed)
        bed.ovsmgr("plan", seed, expect=0)
        check("cookie=0x1234" in bed.ofctl("dump-flows", "table=0"), "apply removed the foreign flow")
        status = json.loads(bed.ovsmgr("status", "br0", "-o", "json").stdout)
        check(not status["drifted"] and status["generation"] == 2, f"after repair: {status}")
        check(status["datapath_type"] == "system", f"datapath after repair: {status['datapath_type']}")
        check(ping(bed, "inside", OUTSIDE), "no ping after the repair")
        return f"deleted '{victim}', plan exit 2, apply repaired, foreign flow kept"


def _one_rule_flow(bed: Bed) -> str:
    """``table=T,priority=P,MATCH`` of a flow of the seed's firewall rule (cookie kind 1)."""
    for line in bed.ofctl("dump-flows", "--no-stats").splitlines():
        found = re.search(r"cookie=0x0?f5a0001[0-9a-f]{8}, table=(\d+), priority=(\d+),(\S+) actions", line)
        if found:
            return f"table={found[1]},priority={found[2]},{found[3]}"
    raise BedError("no flow of a firewall rule on the switch")


def controller(ctx: Context) -> str:
    """``ovsmgr controller`` against the system OVS: it pushes the policy when the bridge
    connects, answers reject rules with a TCP RST (packet-in/packet-out through the kernel
    datapath) and takes a runtime blocklist change."""
    with Bed("br0", GATEWAY_PORTS) as bed:
        log = ctx.scratch / "controller.log"
        argv = [str(Path(sys.executable).with_name("ovsmgr")), "controller",
                str(ctx.policy("gateway.yaml")), "--db", SYSTEM_DB]
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
            check(exchange(bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080)["ok"],
                  "the port forward does not pass before the blocklist change")
            added = bed.ovsmgr("set", "add", "blocklist", OUTSIDE)
            check(blocked(bed, "wan0", "dmz0", "tcp/80", PUBLIC, dial=8080),
                  f"a source added to the blocklist at run time still passes: {added.output}")
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
        time.sleep(1)
    status = json.loads(bed.ovsmgr("status", bed.bridge, "-o", "json").stdout)
    check(status["applied"] and not status["drifted"], f"after the controller connected: {status}")


def three_box(ctx: Context) -> str:
    """The Vagrant topology in miniature, built by vagrant/provision/dut.sh and host.sh: gen and
    sink namespaces behind NICs found by MAC, dut's bridge with ports inside and outside, and
    the provisioned seed policies from /etc/ovsmgr between them."""
    gen, sink = LabPort("inside", 1, GEN + "/16"), LabPort("outside", 2, SINK + "/16")
    bed = Bed("br0", (gen, sink))  # its namespaces: kt-inside (gen), kt-outside (sink)
    bed.down(leftovers_only=True)
    try:
        run(["ip", "-batch", "-"], input="".join(
            f"netns add {bed.netns(p.name)}\n"
            f"link add dut-{p.name} address {DUT_MACS[p.name]} type veth peer name eth1 "
            f"address {HOST_MACS[p.name]} netns {bed.netns(p.name)}\n" for p in (gen, sink)))
        run(["bash", str(PROVISION / "dut.sh"), "--inside-mac", DUT_MACS["inside"],
             "--outside-mac", DUT_MACS["outside"]])
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
        bed.assert_kernel_datapath()
        reply = exchange(bed, "inside", "outside", "tcp/5201", SINK)
        check(reply["ok"] and reply.get("seen_as") == GEN, f"gen -> sink through dut: {reply}")
        check(blocked(bed, "outside", "inside", "tcp/5201", GEN), "sink opened gen")
        bed.apply(ctx.policy("seed-nat.yaml"))
        reply = exchange(bed, "inside", "outside", "udp/5201", SINK)
        check(reply["ok"] and reply.get("seen_as") == PUBLIC, f"gen -> sink with the seed NAT: {reply}")
        return f"dut.sh + host.sh: gen {GEN} -> sink {SINK} firewalled, then seen as {PUBLIC}"
    finally:
        bed.down()


GEN, SINK = "10.1.0.2", "10.2.0.2"
DUT_MACS = {"inside": "02:0a:01:00:00:01", "outside": "02:0a:02:00:00:01"}
HOST_MACS = {"inside": "02:0a:01:00:00:02", "outside": "02:0a:02:00:00:02"}
"""As in vagrant/Vagrantfile."""
PROVISION = Path(__file__).resolve().parents[2] / "vagrant" / "provision"

PROBE_ECHO = [*AGENT, "echo"]
PROBE_SESSION = [*AGENT, "session"]

SCENARIOS: dict[str, Callable[[Context], str]] = {
    "seed-firewall": seed_firewall,
    "seed-nat": seed_nat,
    "gateway": gateway,
    "cut-on-rule-removal": cut_on_rule_removal,
    "hitless-apply": hitless_apply,
    "drift": drift,
    "controller": controller,
    "three-box": three_box,
}


# -- running them ------------------------------------------------------------------------------
def run_all(names: list[str], ctx: Context, tag: str) -> int:
    passed = failed = 0
    for name in names:
        started = time.monotonic()
        try:
            detail = SCENARIOS[name](ctx)
        except Exception as exc:  # a scenario's failure must not stop the others
            failed += 1
            print(f"{tag} FAIL {name} ({time.monotonic() - started:.1f} s): "
                  f"{' '.join(str(exc).split())[:600] or type(exc).__name__}", flush=True)
            for line in traceback.format_exc().splitlines()[-12:]:
                print(f"{tag}     {line}", flush=True)
        else:
            passed += 1
            print(f"{tag} PASS {name} ({time.monotonic() - started:.1f} s): {detail}", flush=True)
    print(f"{tag} {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="ovsmgr-kernel-test:", help="prefix of every result line")
    parser.add_argument("--policies", type=Path, default=Path("/etc/ovsmgr"),
                        help="the repository's policies with datapath: system")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--list", action="store_true", help="print the scenario names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    run(["ovs-vsctl", "--timeout=30", "show"])  # the system OVS must be running
    with tempfile.TemporaryDirectory(prefix="ovsmgr-kt-") as scratch:
        return run_all(args.only or list(SCENARIOS), Context(args.policies, Path(scratch)), args.tag)


if __name__ == "__main__":
    sys.exit(main())
