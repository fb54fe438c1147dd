"""`ovsmgr plan --connections` with real open connections on a lab switch: the connections it says a
change cuts are the ones the switch stops after the apply, and `apply` says how many first."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ovsmgr.lab.ovs import Lab, LabPort

from .switch import apply, compiled_file

pytestmark = pytest.mark.integration

OVSMGR = str(Path(sys.executable).parent / "ovsmgr")
PY = [sys.executable, "-m", "ovsmgr.lab.probe"]
POLICIES = Path(__file__).resolve().parents[2] / "policies"
HOSTS = (LabPort("lan0", 1, "10.0.0.5/24"), LabPort("dmz0", 2, "10.0.1.10/24"), LabPort("wan0", 3, "198.51.100.9/24"))
WAN = "198.51.100.9"


class Session:
    """A TCP connection that stays open: each line said is echoed back by the far end."""

    def __init__(self, lab: Lab, port: str, address: str, tport: int) -> None:
        self.echo = lab.popen("wan0" if address == WAN else "dmz0", [*PY, "echo", str(tport), "--timeout", "90"],
                              stdout=subprocess.PIPE, text=True)
        assert self.echo.stdout and "listening" in self.echo.stdout.readline()
        self.proc = lab.popen(port, [*PY, "session", address, str(tport), "--timeout", "1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "connected"

    def say(self, word: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.echo.kill()


@contextmanager
def sessions(lab: Lab, *ends: tuple[str, str, int]) -> Iterator[list[Session]]:
    opened: list[Session] = []
    try:
        for port, address, tport in ends:
            opened.append(Session(lab, port, address, tport))
        yield opened
    finally:
        for session in opened:
            session.close()


def ovsmgr(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OVSMGR, *args, "--db", lab.db_endpoint], capture_output=True, text=True, timeout=120,
                          check=False)


def test_plan_lists_the_open_connections_a_change_cuts_and_the_switch_then_cuts_them(lab_factory, tmp_path):
    lab = lab_factory(HOSTS)
    apply(lab, compiled_file("gateway.yaml"))
    lab.announce()
    narrowed = tmp_path / "gateway.yaml"  # lan-out no longer allows tcp/443
    narrowed.write_text((POLICIES / "gateway.yaml").read_text().replace(
        "      services: [web, dns, ping, udp/123]\n", "      services: [tcp/80, dns, ping, udp/123]\n"))
    with sessions(lab, ("lan0", WAN, 443), ("lan0", WAN, 80), ("lan0", "10.0.1.10", 443)) as (https, http, dmz):
        for session in (https, http, dmz):
            assert session.say("hello") == "reply hello"
        planned = ovsmgr(lab, "plan", str(narrowed), "--connections", "-o", "json")
        assert planned.returncode == 2, planned.stderr
        report = json.loads(planned.stdout)
        assert report["connections_established"] >= 3
        cut = report["connections_cut"]
        assert [(c["proto"], c["src"], c["dst"], c["dport"], c["rule_before"], c["verdict_after"]) for c in cut] \
            == [("tcp", "10.0.0.5", WAN, 443, "lan-out", "drop")], cut
        assert cut[0]["sport"] > 1024
        text = ovsmgr(lab, "plan", str(narrowed), "--connections")
        print(text.stdout)
        assert "Connections: 1 of the" in text.stdout and "allowed by lan-out, now drop" in text.stdout

        applied = ovsmgr(lab, "apply", str(narrowed))
        assert applied.returncode == 0, applied.stderr
        print(applied.stdout)
        assert applied.stdout.startswith("Cuts 1 of the "), applied.stdout
        assert https.say("again") == "timeout", "the connection plan named is cut"
        assert http.say("again") == "reply again", "lan-out still allows tcp/80: revalidated, not cut"
        assert dmz.say("again") == "reply again", "lan-to-dmz did not change"
