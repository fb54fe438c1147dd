"""TLS: the store's Raft cluster over ssl:, a switch's OpenFlow listener over pssl:, certificates
from `ovs-pki`; a peer whose certificate the CA did not sign is refused, in both directions."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.lab import netns
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.ovs import Lab
from ovsmgr.southbound.openflow import OpenFlowError, SwitchConnection, SwitchFlowTable
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.tls import TlsFiles, configure
from tests.support.pki import Pki

from .test_fleet import PORTS, passes, policy

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
