"""Certificates for TLS tests, made with `ovs-pki` as docs/fleet.md tells an operator to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ovsmgr.southbound.tls import TlsFiles


class Pki:
    """An `ovs-pki` CA in `directory`; `identity(name)` signs a key and certificate with it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run("init", "--force")

    def _run(self, *args: str) -> None:
        subprocess.run(["ovs-pki", f"--dir={self.dir / 'pki'}", f"--log={self.dir / 'pki.log'}", *args],
                       cwd=self.dir, check=True, capture_output=True, timeout=120)

    @property
    def ca_cert(self) -> Path:
        return self.dir / "pki" / "switchca" / "cacert.pem"

    def identity(self, name: str) -> TlsFiles:
        self._run("req+sign", name, "switch", "--force", "--unique", "--batch")
        return TlsFiles(self.dir / f"{name}-privkey.pem", self.dir / f"{name}-cert.pem", self.ca_cert)
