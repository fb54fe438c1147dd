"""apply under faults: killed mid-bundle, refused by OVSDB after the push, or about to lock itself out."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.lab.ovs import Lab, LabPort
from ovsmgr.policy.generate import generate_policy
from ovsmgr.southbound.ovsdb import OvsdbError, SwitchDB
from ovsmgr.switch.record import read_record
from ovsmgr.switch.status import switch_status

from .switch import apply, compiled_text, flow_table, target_of
from .traffic import PY, converse, ping, server

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))

HEAD = """
version: 1
switch:
  bridge: br0
  datapath: netdev
  ports:
    inside: {{ofport: 1}}
    outside: {{ofport: 2}}
{ports}
  links: [[inside, outside]{links}]
zones:
  inside: {{ports: [inside]}}
  outside: {{ports: [outside]}}
{zones}
firewall:
  default: drop
  rules:
{rules}
"""
DENY_9000 = "    - {name: deny-9000, from: inside, services: [tcp/9000], action: drop}"
INSIDE_OUT = "    - {name: inside-out, from: inside, action: allow}"


def policy(*rules: str, ports: str = "", links: str = "", zones: str = "") -> str:
    return HEAD.format(rules="\n".join(rules), ports=ports, links=links, zones=zones)


# --- killed between bundle messages -------------------------------------------------------------
OFPT_BUNDLE_CONTROL, OFPT_BUNDLE_ADD_MESSAGE = 33, 34
OPEN_REPLY, COMMIT_REQUEST = 1, 4


class _Stream:
    """Whole OpenFlow messages from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def messages(self) -> list[bytes] | None:
        """The next whole messages (waiting for at least one); None at the end of the stream."""
        while True:
            out = []
            while len(self.buffer) >= 8 and len(self.buffer) >= (size := struct.unpack("!H", self.buffer[2:4])[0]):
                out.append(self.buffer[:size])
                self.buffer = self.buffer[size:]
            if out:
                return out
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk


def _bundle_type(message: bytes) -> int | None:
    return struct.unpack("!H", message[12:14])[0] if message[1] == OFPT_BUNDLE_CONTROL else None


class BundleCutter:
    """A relay in front of the bridge's management socket that SIGKILLs the sender's process group
    once the switch has opened its bundle and received `kill_after` of its messages, and then
    hangs up on the switch, as the kernel does when the sender dies."""

    def __init__(self, upstream: str, path: str, kill_after: int):
        self.upstream, self.path, self.kill_after = upstream, path, kill_after
        self.opened = self.committed = False
        self.forwarded = 0
        self.killed = threading.Event()
        self.victim: subprocess.Popen[str] | None = None
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        switch = socket.socket(socket.AF_UNIX)
        switch.connect(self.upstream)
        threading.Thread(target=self._replies, args=(switch, client), daemon=True).start()
        try:
            stream = _Stream(client)
            while (batch := stream.messages()) is not None:
                for message in batch:
                    if message[1] == OFPT_BUNDLE_ADD_MESSAGE and self.opened and self.forwarded >= self.kill_after:
                        assert self.victim is not None
                        os.killpg(self.victim.pid, signal.SIGKILL)
                        self.killed.set()
                        return
                    self.committed |= _bundle_type(message) == COMMIT_REQUEST
                    self.forwarded += message[1] == OFPT_BUNDLE_ADD_MESSAGE
                    switch.sendall(message)
        except OSError:
            pass
        finally:
            switch.close()
            client.close()

    def _replies(self, switch: socket.socket, client: socket.socket) -> None:
        try:
            stream = _Stream(switch)
            while (batch := stream.messages()) is not None:
                for message in batch:
                    self.opened |= _bundle_type(message) == OPEN_REPLY
                    client.sendall(message)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_apply_killed_mid_bundle_leaves_the_old_rules_whole(lab_factory):
    """`ovsmgr apply` of a 5,000-rule policy is SIGKILLed (it and its ovs-ofctl) after the switch
    opened the bundle and took 3,000 of its ~10,000 messages: the switch discards the bundle."""
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(policy(DENY_9000, INSIDE_OUT)))
    before = flow_table(lab).dump_text()
    relay_dir = Path(tempfile.mkdtemp(prefix="cut-", dir="/tmp"))
    (relay_dir / "db.sock").symlink_to(f"{lab.dir}/db.sock")
    big = relay_dir / "big.yaml"
    big.write_text(generate_policy(5_000, "dport", seed=7))
    cutter = BundleCutter(lab.mgmt_socket("br0"), str(relay_dir / "br0.mgmt"), kill_after=3_000)
    try:
        cutter.victim = subprocess.Popen(
            [sys.executable, "-c", "from ovsmgr.cli import main; main()", "apply", str(big),
             "--db", f"unix:{relay_dir}/db.sock"], start_new_session=True, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OVSMGR_STATE_DIR": str(lab.dir)})
        assert cutter.killed.wait(60), "the apply never got 3,000 messages into its bundle"
        assert cutter.victim.wait(10) == -signal.SIGKILL
    finally:
        cutter.close()
        if cutter.victim is not None and cutter.victim.poll() is None:
            os.killpg(cutter.victim.pid, signal.SIGKILL)
        shutil.rmtree(relay_dir, ignore_errors=True)
    assert cutter.opened and cutter.forwarded == 3_000 and not cutter.committed
    time.sleep(0.5)  # let ovs-vswitchd see the hang-up
    assert flow_table(lab).dump_text() == before, "the switch must keep the old rules, byte for byte"
    with server(lab, "outside", "tcp", 9000):
        assert not converse(lab, "inside", "tcp", "198.51.100.9", 9000)["ok"], "deny-9000 still drops"
    with server(lab, "outside", "tcp", 8080):
        assert converse(lab, "inside", "tcp", "198.51.100.9", 8080)["ok"], "inside-out still allows"
    assert ping(lab, "inside", "198.51.100.9"), "the old policy (not the generated one) is in force"
    status = switch_status(target_of(lab), "br0")
    assert status["generation"] == 1 and not status["drifted"], status
    result = apply(lab, compiled_text(policy(INSIDE_OUT)))  # no bundle left open in the way
    assert result.generation == 2 and result.plan.counts()["delete"] > 0


# --- OVSDB refuses after the flows went in --------------------------------------------------------
def test_a_port_ovsdb_refuses_after_the_push_puts_the_previous_flows_back(lab_factory):
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(policy(INSIDE_OUT)))
    before = flow_table(lab).dump_text()
    missing = policy(DENY_9000, INSIDE_OUT, ports="    extra: {ofport: 3, interface: vx-missing}",
                     zones="  extra: {ports: [extra]}")
    with pytest.raises(OvsdbError, match="vx-missing") as caught:
        apply(lab, compiled_text(missing))
    assert "the previous flows are back" in "".join(caught.value.__notes__)
    assert flow_table(lab).dump_text() == before
    assert read_record(target_of(lab), "br0").generation == 1  # type: ignore[union-attr]
    # The interface ovsmgr adds is the one the policy names (it used to open one named after the port).
    lab.switch_exec(["ip", "link", "add", "vx1", "type", "veth", "peer", "name", "vx1-peer"], check=True)
    lab.switch_exec(["ip", "link", "set", "vx1", "up"], check=True)
    apply(lab, compiled_text(policy(INSIDE_OUT, ports="    extra: {ofport: 3, interface: vx1}",
                                    zones="  extra: {ports: [extra]}")))
    with SwitchDB(lab.db_endpoint) as db:
        assert db.ofports("br0")["vx1"] == 3


# --- the lock-out guard ---------------------------------------------------------------------------
SWITCH_ADDR, ADMIN_ADDR = "192.0.2.1", "192.0.2.50"
ADMIN_PORTS = (*PORTS, LabPort("admin", 3, f"{ADMIN_ADDR}/24"))
MGMT = dict(ports="    admin: {ofport: 3}\n    mgmt0: {ofport: 4, type: internal, interface: mgmt0}",
            links=", [admin, mgmt0]", zones="  admin: {ports: [admin]}\n  switch: {ports: [mgmt0]}")
ADMIN_SSH = "    - {name: admin-ssh, from: admin, to: switch, services: [tcp/22], action: allow}"
TO_CONTROLLER = "    - {name: to-controller, from: switch, to: admin, services: [tcp/6653], action: allow}"
LOCKDOWN = "    - {name: lockdown, from: admin, action: drop}"


def _give_the_switch_an_address(lab: Lab) -> None:
    for argv in (["ip", "addr", "add", f"{SWITCH_ADDR}/24", "dev", "mgmt0"], ["ip", "link", "set", "mgmt0", "up"],
                 ["ethtool", "-K", "mgmt0", "tx", "off"]):
        lab.switch_exec(argv, check=True, capture_output=True)


def test_apply_refuses_to_cut_its_own_management_unless_forced(lab_factory, tmp_path):
    lab = lab_factory(ADMIN_PORTS)
    with SwitchDB(lab.db_endpoint) as db:  # first: a bridge's first controller empties its flow table
        db.set_controllers("br0", [f"tcp:{ADMIN_ADDR}:6653"])
    apply(lab, compiled_text(policy(ADMIN_SSH, TO_CONTROLLER, INSIDE_OUT, **MGMT)))
    _give_the_switch_an_address(lab)
    sshd = subprocess.Popen(["ip", "netns", "exec", lab.switch_netns, *PY, "serve", "tcp", "22", "--bind",
                             SWITCH_ADDR, "--timeout", "25"], stdout=subprocess.PIPE, text=True)
    try:
        assert sshd.stdout and "listening" in sshd.stdout.readline()
        assert converse(lab, "admin", "tcp", SWITCH_ADDR, 22)["ok"]
        lockdown = tmp_path / "lockdown.yaml"
        lockdown.write_text(policy(LOCKDOWN, INSIDE_OUT, **MGMT))
        before = flow_table(lab).dump_text()
        runner, db = CliRunner(), ["--db", lab.db_endpoint]

        refused = runner.invoke(main, ["apply", str(lockdown), *db, "--mgmt", SWITCH_ADDR],
                                env={"SSH_CONNECTION": None})
        assert refused.exit_code == 1, refused.output
        assert f"management address {SWITCH_ADDR}:22: it is dropped: rule lockdown ({lockdown}:" in refused.output
        assert f"controller tcp:{ADMIN_ADDR}:6653: it is dropped: the firewall default (drop)" in refused.output

        refused = runner.invoke(main, ["apply", str(lockdown), *db],
                                env={"SSH_CONNECTION": f"{ADMIN_ADDR} 50022 {SWITCH_ADDR} 22"})
        assert refused.exit_code == 1 and "this SSH session from 192.0.2.50 to 192.0.2.1:22" in refused.output
        assert flow_table(lab).dump_text() == before, "a refused apply changes nothing"
        assert converse(lab, "admin", "tcp", SWITCH_ADDR, 22)["ok"]

        forced = runner.invoke(main, ["apply", str(lockdown), *db, "--force", "--mgmt", SWITCH_ADDR])
        assert forced.exit_code == 0, forced.output
        assert not converse(lab, "admin", "tcp", SWITCH_ADDR, 22, timeout=1)["ok"], "the guard was right"
    finally:
        sshd.kill()
        sshd.wait()


def test_a_first_controller_empties_the_table_and_the_switch_fails_closed(lab_factory):
    """OVS flushes a bridge's flows when it gains its first controller or loses its last one
    (bridge.c: had_primary != has_primary). With fail_mode secure nothing passes then, status
    calls it drift, and the next apply puts the flows back."""
    lab = lab_factory(PORTS)
    allow = compiled_text(policy(INSIDE_OUT))
    apply(lab, allow)
    assert ping(lab, "inside", "198.51.100.9")
    with SwitchDB(lab.db_endpoint) as db:
        db.set_controllers("br0", ["tcp:127.0.0.1:1"])  # nothing listens there
    deadline = time.monotonic() + 5
    while flow_table(lab).dump() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flow_table(lab).dump() == []
    assert not ping(lab, "inside", "198.51.100.9", deadline=1), "secure: an empty table passes nothing"
    status = switch_status(target_of(lab), "br0")
    assert status["drifted"] and status["drift"]["add"] > 0 and status["fail_mode"] == "secure"
    apply(lab, allow)
    assert ping(lab, "inside", "198.51.100.9")
