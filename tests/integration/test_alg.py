"""Conntrack helpers (`helper: ftp|tftp`): real FTP and TFTP transfers through the switch.

The outside host runs real servers (vsftpd; tftpd-hpa's in.tftpd), the inside host real
clients (Python's ftplib, in passive and in active mode; tftp-hpa's tftp), over the lab's
veths and the policy's pipeline, with and without the masquerade of policies/alg.yaml. Only
the control connections have rules (tcp/21, udp/69): a file arrives whole only if the helper
let its data connection through as related (passive: inside -> the port the server announced;
active: the server -> the port the client announced, which the helper rewrote to
200.200.200.200 through SNAT; TFTP: the server's answers from a new port). The other way, the
outside host fetches from the inside host's FTP pool behind the load-balanced DNAT
200.200.200.21 (the inside host holds both backends' addresses), whose select group's buckets
attach the helper. The same transfers with the `helper:` lines removed must fail, so what
passes is the helper's doing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ovsmgr.lab.ovs import Lab
from ovsmgr.lab.spec import LabPort
from tests.integration.conftest import LabFactory
from tests.integration.switch import apply, compiled_text
from tests.integration.test_dpdk import _dpdk_skip_reason as dpdk_skip_reason

pytestmark = pytest.mark.integration

POLICY = Path(__file__).resolve().parents[2] / "policies" / "alg.yaml"
CLIENT, SERVER = "10.0.0.5", "198.51.100.9"
PORTS = (LabPort("inside", 1, f"{CLIENT}/24"), LabPort("outside", 2, f"{SERVER}/24"))
POOL, BACKENDS = "200.200.200.21", ("10.0.0.10", "10.0.0.11")
"""alg.yaml's ftp-pool: the public address and the backends, both on the inside host."""
PAYLOAD = bytes(range(256)) * 800
"""200 KiB: many data segments, each of which must pass."""
TRANSFER_TIMEOUT = 15.0

FTP_CLIENT = """
import ftplib, hashlib, json, sys
host, mode, name, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
got = bytearray()
try:
    ftp = ftplib.FTP()
    ftp.connect(host, 21, timeout=timeout)
    ftp.login()
    ftp.set_pasv(mode == "passive")
    ftp.retrbinary("RETR " + name, got.extend)
    ftp.quit()
    print(json.dumps({"ok": True, "bytes": len(got), "sha256": hashlib.sha256(got).hexdigest()}))
except Exception as exc:
    print(json.dumps({"ok": False, "bytes": len(got), "error": repr(exc)}))
"""

VSFTPD_CONF = """listen=YES
listen_ipv6=NO
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
ftp_username=ftp
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_min_port=50000
pasv_max_port=50100
port_enable=YES
connect_from_port_20=NO
seccomp_sandbox=NO
secure_chroot_dir={empty}
xferlog_enable=NO
vsftpd_log_file={log}
"""
"""Anonymous downloads from `root` as the user `ftp` (the vsftpd package makes it); vsftpd checks that a PORT command names the control
connection's peer (no `port_promiscuous`), so through SNAT active mode works only if the
helper rewrote the client's address in it."""


def _needs(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/install, group develop)")


def _policy(nat: bool, helpers: bool = True) -> str:
    text = POLICY.read_text()
    if not nat:
        text = text[:text.index("nat:\n")] + text[text.index("conntrack:"):]
    if not helpers:
        text = "".join(line for line in text.splitlines(keepends=True) if "helper:" not in line)
    return text


def _lab(lab_factory: LabFactory, nat: bool, helpers: bool = True, datapath: str = "netdev") -> Lab:
    lab = lab_factory(PORTS, datapath=datapath)
    for address in BACKENDS:
        lab.exec("inside", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"], check=True)
    apply(lab, compiled_text(_policy(nat, helpers)))
    lab.announce()
    for address in BACKENDS:  # the switch learns the MAC a DNAT'd packet gets from ARP
        out = lab.exec("inside", ["arping", "-U", "-c", "1", "-I", "eth0", "-s", address, address],
                       capture_output=True, text=True, timeout=10)
        assert "Sent 1 probe" in out.stdout, out
    return lab


@contextmanager
def _served(lab: Lab, what: str, host: str = "outside") -> Iterator[Path]:
    """A real server on `host` with PAYLOAD as `data.bin`: vsftpd (`ftp`, on every address of the
    host) or in.tftpd (`tftp`), listening once this returns."""
    with tempfile.TemporaryDirectory(prefix=f"ovsmgr-{what}-") as scratch:
        root = Path(scratch) / "root"
        root.mkdir()
        (root / "data.bin").write_bytes(PAYLOAD)
        os.chmod(scratch, 0o755)
        if what == "ftp":
            (Path(scratch) / "empty").mkdir()
            conf = Path(scratch) / "vsftpd.conf"
            conf.write_text(VSFTPD_CONF.format(root=root, empty=Path(scratch) / "empty",
                                               log=Path(scratch) / "vsftpd.log"))
            argv, port, proto = ["vsftpd", str(conf)], 21, "tcp"
        else:
            # On every address (tftpd-hpa 5.2 exits at once when given --address); IPv4 only, as
            # the lab's IPv4 hosts have IPv6 off.
            argv = ["in.tftpd", "--ipv4", "--foreground", "--listen", "--secure", str(root)]
            port, proto = 69, "udp"
        proc = lab.popen(host, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_listening(lab, host, proc, proto, port)
            yield Path(scratch)
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_listening(lab: Lab, host: str, proc: subprocess.Popen[str], proto: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the {proto}/{port} server exited: {proc.stderr.read() if proc.stderr else ''}")
        listing = lab.exec(host, ["ss", "-lnH", "-t" if proto == "tcp" else "-u"],
                           capture_output=True, text=True).stdout
        if f":{port} " in listing:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {proto}/{port} on the {host} host")


def _ftp(lab: Lab, mode: str, client: str = "inside", server: str = SERVER) -> dict[str, object]:
    argv = [sys.executable, "-c", FTP_CLIENT, server, mode, "data.bin", str(TRANSFER_TIMEOUT)]
    out = lab.exec(client, argv, capture_output=True, text=True, timeout=TRANSFER_TIMEOUT * 4)
    lines = out.stdout.strip().splitlines()
    assert lines, f"the FTP client printed nothing: {out.stderr}"
    return dict(json.loads(lines[-1]))


def _tftp(lab: Lab) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ovsmgr-tftp-get-") as scratch:
        target = Path(scratch) / "got.bin"
        argv = ["timeout", str(TRANSFER_TIMEOUT), "tftp", "-m", "binary", SERVER, "-c", "get", "data.bin",
                str(target)]
        out = lab.exec("inside", argv, capture_output=True, text=True, timeout=TRANSFER_TIMEOUT * 2)
        got = target.read_bytes() if target.exists() else b""
        return {"ok": out.returncode == 0 and got == PAYLOAD, "bytes": len(got),
                "sha256": hashlib.sha256(got).hexdigest(), "output": (out.stdout + out.stderr).strip()}


WHOLE = {"ok": True, "bytes": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()}


@pytest.mark.parametrize("nat", [True, False], ids=["through-snat", "no-nat"])
def test_ftp_passive_and_active_downloads_pass_with_the_ftp_helper(lab_factory: LabFactory, nat: bool) -> None:
    _needs("vsftpd", "ss")
    lab = _lab(lab_factory, nat)
    flows = lab.ofctl(["dump-flows", "table=50"])  # an independent reader sees the helpers
    assert "alg=ftp" in flows and "alg=tftp" in flows, flows
    with _served(lab, "ftp"):
        assert _ftp(lab, "passive") == WHOLE
        assert _ftp(lab, "active") == WHOLE
    related = [line for line in lab.appctl(["dpctl/dump-conntrack", "zone=1"]).splitlines()
               if "tcp" in line and "dport=21)" not in line and "sport=21," not in line]
    assert related, "no data connection in conntrack"
    if nat:
        assert all("200.200.200.200" in line for line in related), related


def test_tftp_download_passes_with_the_tftp_helper_through_snat(lab_factory: LabFactory) -> None:
    _needs("in.tftpd", "tftp", "ss")
    lab = _lab(lab_factory, nat=True)
    with _served(lab, "tftp"):
        got = _tftp(lab)
    assert {k: got[k] for k in ("ok", "bytes", "sha256")} == WHOLE, got["output"]


def test_ftp_through_a_load_balanced_dnat_gets_the_helper_in_the_pools_buckets(lab_factory: LabFactory) -> None:
    """The outside host fetches from the pool's public address, passive and active: the control
    connection goes to a backend through the FTP helper's select group, whose bucket commits it
    with alg=ftp; the helper rewrites the backend's PASV address to the public one, and the data
    connections pass as related, translated like their control connection."""
    _needs("vsftpd", "ss", "arping")
    lab = _lab(lab_factory, nat=True)
    groups = [line for line in lab.ofctl(["dump-groups"]).splitlines() if "group_id=" in line]
    with_alg = [line for line in groups if "alg=ftp" in line]  # an independent reader sees the helper
    assert len(groups) == 2 and len(with_alg) == 1, groups
    assert all(f"nat(dst={address})" in with_alg[0] for address in BACKENDS), with_alg
    transfers = []
    with _served(lab, "ftp", host="inside"):
        for mode in ("passive", "active", "passive", "active"):
            transfers.append((mode, _ftp(lab, mode, client="outside", server=POOL)))
    assert transfers == [(mode, WHOLE) for mode, _ in transfers], transfers
    data = [line for line in lab.appctl(["dpctl/dump-conntrack", "zone=1"]).splitlines()
            if "tcp" in line and "dport=21)" not in line and "sport=21," not in line]
    backends = {address for line in data for address in BACKENDS if f"={address}," in line}
    assert data and backends and all(POOL in line for line in data), data
    print(f"data connections through the pool, served by {sorted(backends)}")


def test_without_the_helpers_the_data_connections_are_dropped(lab_factory: LabFactory) -> None:
    _needs("vsftpd", "in.tftpd", "tftp", "ss", "arping")
    lab = _lab(lab_factory, nat=True, helpers=False)
    with _served(lab, "ftp"):
        passive, active = _ftp(lab, "passive"), _ftp(lab, "active")
    with _served(lab, "ftp", host="inside"):
        pool = _ftp(lab, "passive", client="outside", server=POOL)
    with _served(lab, "tftp"):
        tftp = _tftp(lab)
    assert not passive["ok"] and not active["ok"] and not pool["ok"] and not tftp["ok"], (passive, active, pool, tftp)


def test_ftp_and_tftp_through_snat_on_dpdk(lab_factory: LabFactory) -> None:
    """The DPDK datapath is the userspace one with DPDK's packet I/O: the same helpers."""
    _needs("vsftpd", "in.tftpd", "tftp", "ss")
    reason = dpdk_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = _lab(lab_factory, nat=True, datapath="dpdk")
    assert lab.status()["datapath"] == "dpdk"
    with _served(lab, "ftp"):
        assert (_ftp(lab, "passive"), _ftp(lab, "active")) == (WHOLE, WHOLE)
    with _served(lab, "tftp"):
        got = _tftp(lab)
    assert {k: got[k] for k in ("ok", "bytes", "sha256")} == WHOLE, got["output"]
