"""TLS: the store's Raft cluster over ssl:, a switch's OpenFlow listener over pssl:, an agent's
OpenFlow listener over ssl: (`--listen ssl:`), certificates from `ovs-pki`; a peer whose
certificate the CA did not sign is refused, in both directions."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.lab import netns
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.ovs import Lab
from ovsmgr.lab.pki import Pki
from ovsmgr.southbound.openflow import OpenFlowError, SwitchConnection, SwitchFlowTable
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.tls import TlsFiles, configure

from .controller_helpers import OVSMGR, eventually
from .test_fleet import PORTS, passes, policy
from .test_fleet_controller import controller_roles

pytestmark = pytest.mark.integration


def tls_block(files: TlsFiles) -> str:
    return f"tls: {{private_key: {files.private_key}, certificate: {files.certificate}, ca_cert: {files.ca_cert}}}\n"


def test_the_store_over_tls_serves_a_rollout_and_refuses_unknown_certificates(
        lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    pki, rogue = Pki(tmp_path / "pki"), Pki(tmp_path / "rogue")
    store = StoreCluster(Path("/tmp") / f"ovsmgr-store-{secrets.token_hex(3)}", tls=pki.identity("store"))
    lab = lab_factory(PORTS)
    (tmp_path / "edge.yaml").write_text(policy(8080))
    ours = pki.identity("ovsmgr")
    body = (f"store: [{', '.join(store.endpoints)}]\nswitches:\n"
            f"  edge-1: {{policy: edge.yaml, db: '{lab.db_endpoint}'}}\n")

    def fleet_file(files: TlsFiles) -> str:
        path = tmp_path / "fleet.yaml"
        path.write_text("version: 1\n" + tls_block(files) + body)
        return str(path)

    try:
        store.start()
        assert all(e.startswith("ssl:") for e in store.endpoints)
        result = CliRunner().invoke(main, ["fleet", "apply", fleet_file(ours)])
        assert result.exit_code == 0, result.output
        assert passes(lab, 8080)
        unknown_client = TlsFiles(rogue.identity("intruder").private_key, rogue.dir / "intruder-cert.pem",
                                  ours.ca_cert)
        unknown_store = TlsFiles(ours.private_key, ours.certificate, rogue.ca_cert)
        for files in (unknown_client, unknown_store):
            result = CliRunner().invoke(main, ["fleet", "status", fleet_file(files), "-o", "json"])
            assert result.exit_code == 1, result.output
            assert "cannot reach the fleet store" in result.output and "TLS refused" in result.output
        result = CliRunner().invoke(main, ["fleet", "status", fleet_file(ours), "-o", "json"])
        assert result.exit_code == 0 and json.loads(result.output)[0]["applied_generation"] == 1
    finally:
        assert not store.stop()
        shutil.rmtree(store.dir, ignore_errors=True)


def _connect_in(lab: Lab, target: str, deadline: float) -> list[str]:
    """The flows read over `target` from inside the switch's namespace (the listener is on its
    loopback), waiting while ovs-vswitchd has not opened the listener yet."""
    with netns.entered(lab.switch_netns):
        while True:
            try:
                with SwitchConnection(target) as conn:
                    return [str(s.cookie) for s in SwitchFlowTable(conn).read(ours_only=False)]
            except OpenFlowError as exc:
                if "refused" not in str(exc).lower() or time.monotonic() > deadline:
                    raise


def test_openflow_over_tls_refuses_an_unknown_certificate(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    pki, rogue = Pki(tmp_path / "pki"), Pki(tmp_path / "rogue")
    lab = lab_factory(PORTS)
    switch = pki.identity("switch")
    with SwitchDB(lab.db_endpoint) as db:
        db.set_ssl(str(switch.private_key), str(switch.certificate), str(switch.ca_cert))
        db.set_controllers("br0", ["pssl:16653:127.0.0.1"])
    ours = pki.identity("ovsmgr")
    configure(ours)
    _connect_in(lab, "ssl:127.0.0.1:16653", time.monotonic() + 20)
    configure(TlsFiles(rogue.identity("intruder").private_key, rogue.dir / "intruder-cert.pem", ours.ca_cert))
    with pytest.raises(OpenFlowError):
        _connect_in(lab, "ssl:127.0.0.1:16653", 0)
    configure(TlsFiles(ours.private_key, ours.certificate, rogue.ca_cert))
    with pytest.raises(OpenFlowError, match=re.escape("ssl:127.0.0.1:16653")):
        _connect_in(lab, "ssl:127.0.0.1:16653", 0)
    configure(ours)
    _connect_in(lab, "ssl:127.0.0.1:16653", time.monotonic() + 5)


# --- an agent on the switch's host, listening on TLS ----------------------------------------------------------

@contextmanager
def tls_agent(lab: Lab, tmp_path: Path, ours: TlsFiles, switch_tls: TlsFiles, rollout_timeout: int = 15
              ) -> Iterator[tuple[str, str, Path, subprocess.Popen[bytes]]]:
    """`ovsmgr agent --listen ssl:127.0.0.1:PORT` for switch edge-1 (its policy: tcp/8080 from inside)
    run in the lab switch's network namespace, i.e. on the switch's own host, with `ours` as the
    fleet file's tls: and `switch_tls` in the switch's SSL table; a one-member store reached by its
    unix socket. Yields the fleet file, the bridge's controller target, the agent's log and process."""
    store = StoreCluster(Path("/tmp") / f"ovsmgr-store-{secrets.token_hex(3)}", members=1)
    with netns.entered(lab.switch_netns):
        target = f"ssl:127.0.0.1:{netns.free_port()}"
    (tmp_path / "edge.yaml").write_text(policy(8080))
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\n" + tls_block(ours) + f"store: [{', '.join(store.endpoints)}]\n"
                    f"rollout: {{timeout: {rollout_timeout}}}\nswitches:\n"
                    f"  edge-1: {{policy: edge.yaml, db: '{lab.db_endpoint}', controllers: ['{target}'], agent: true}}\n")
    with SwitchDB(lab.db_endpoint) as db:  # ovs-vsctl set-ssl, on the switch
        db.set_ssl(str(switch_tls.private_key), str(switch_tls.certificate), str(switch_tls.ca_cert))
    log = tmp_path / "agent.log"
    try:
        store.start()
        with open(log, "ab") as err:
            proc = subprocess.Popen(["ip", "netns", "exec", lab.switch_netns, OVSMGR, "agent", "--fleet", str(path),
                                     "--switch", "edge-1", "--name", "agent-1", "--listen", target],
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert eventually(lambda: "is active" in log.read_text(), 30), log.read_text()
            yield str(path), target, log, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
    finally:
        assert not store.stop()
        shutil.rmtree(store.dir, ignore_errors=True)


def our_flows(lab: Lab) -> list[str]:
    return [line for line in lab.ofctl(["dump-flows"]).splitlines() if "cookie=0xf5a" in line]


def test_an_agent_listening_on_tls_serves_its_switch(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    lab = lab_factory(PORTS)
    with tls_agent(lab, tmp_path, pki.identity("ovsmgr"), pki.identity("switch")) as (path, target, log, proc):
        result = CliRunner().invoke(main, ["fleet", "apply", path])
        assert result.exit_code == 0, result.output + log.read_text()
        # the bridge was pointed at the agent (its controllers:) and connected over TLS
        assert eventually(lambda: controller_roles(lab) == {target: "master"}, 15), (controller_roles(lab),
                                                                                    log.read_text())
        assert our_flows(lab)
        assert passes(lab, 8080) and not passes(lab, 9090), "the released policy: tcp/8080 from inside only"
        assert not passes(lab, 8080, source="outside")
        assert "refused" not in log.read_text() and proc.poll() is None


def test_an_agent_listening_on_tls_refuses_a_switch_the_ca_did_not_sign(
        lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    pki, rogue = Pki(tmp_path / "pki"), Pki(tmp_path / "rogue")
    lab = lab_factory(PORTS)
    rogue.identity("switch")
    # the switch trusts our CA (so it takes the agent's certificate), but its own another CA signed
    switch = TlsFiles(tmp_path / "rogue" / "switch-privkey.pem", tmp_path / "rogue" / "switch-cert.pem", pki.ca_cert)
    with tls_agent(lab, tmp_path, pki.identity("ovsmgr"), switch, rollout_timeout=3) as (path, target, log, proc):
        result = CliRunner().invoke(main, ["fleet", "apply", path])
        assert result.exit_code == 1, result.output  # released to the agent; the switch never connected
        with SwitchDB(lab.db_endpoint) as db:
            assert db.get_controllers("br0") == [target], "the agent pointed the bridge at itself"
        refused = "refused: TLS handshake failed: certificate verify failed"
        assert eventually(lambda: refused in log.read_text(), 20), log.read_text()
        # a client with no certificate at all is refused too
        with netns.entered(lab.switch_netns):
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname = False
            client.load_verify_locations(str(pki.ca_cert))
            host, port = target.removeprefix("ssl:").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as sock, pytest.raises(ssl.SSLError), \
                    client.wrap_socket(sock) as tls_sock:
                tls_sock.recv(1)  # TLS 1.3: the server says so after the client's handshake
        assert eventually(lambda: "refused: TLS handshake failed: peer did not return a certificate"
                          in log.read_text(), 10), log.read_text()
        assert controller_roles(lab) == {}
        assert our_flows(lab) == [], "nothing written to a switch that was refused"
        assert lab.switch_exec(["ovs-vsctl", f"--db={lab.db_endpoint}", "get", "Bridge", "br0", "fail_mode"],
                               capture_output=True, text=True, check=True).stdout.strip() == "secure"
        assert not passes(lab, 8080), "fail_mode secure, no flows: nothing is forwarded"
        assert proc.poll() is None
