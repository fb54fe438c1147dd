"""Certificates for a lab, made with Open vSwitch's `ovs-pki` as docs/fleet.md tells an operator to.

`Pki(directory)` makes a CA in `directory/pki` (`ovs-pki init`); `identity(name)` a key and a
certificate it signed, `directory/NAME-privkey.pem` and `NAME-cert.pem`; `identities(names)` several
at once: the RSA keys, which take the time, are made side by side (`ovs-pki req`), then signed one
after the other (`ovs-pki sign`: the CA's serial and index are one file each).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from ovsmgr.lab.spec import LabError
from ovsmgr.southbound.tls import TlsFiles

TIMEOUT = 120.0


class Pki:
    """An `ovs-pki` CA in `directory` (made, or used again when it is there)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.ca_cert.exists():
            self._run("init", "--force")

    def _argv(self, *args: str) -> list[str]:
        return ["ovs-pki", f"--dir={self.dir / 'pki'}", f"--log={self.dir / 'pki.log'}", *args]

    def _run(self, *args: str) -> None:
        try:
            subprocess.run(self._argv(*args), cwd=self.dir, check=True, capture_output=True, text=True,
                           timeout=TIMEOUT)
        except FileNotFoundError:
            raise LabError("ovs-pki is not installed (apt-get install -y openvswitch-common)") from None
        except subprocess.CalledProcessError as exc:
            raise LabError(f"ovs-pki {' '.join(args)} failed: {(exc.stderr or '').strip()} "
                           f"(log: {self.dir / 'pki.log'})") from None
        except subprocess.TimeoutExpired:
            raise LabError(f"ovs-pki {' '.join(args)} did not finish in {TIMEOUT:g} s") from None

    @property
    def ca_cert(self) -> Path:
        return self.files_in(self.dir, "").ca_cert

    def files(self, name: str) -> TlsFiles:
        return self.files_in(self.dir, name)

    @staticmethod
    def files_in(directory: Path, name: str) -> TlsFiles:
        """Where `identity(name)` of the CA in `directory` puts its files."""
        return TlsFiles(directory / f"{name}-privkey.pem", directory / f"{name}-cert.pem",
                        directory / "pki" / "switchca" / "cacert.pem")

    def identity(self, name: str) -> TlsFiles:
        """A key and a certificate for `name`, signed by this CA (made again if they exist)."""
        return self.identities([name])[name]

    def identities(self, names: Sequence[str]) -> dict[str, TlsFiles]:
        for name in names:
            files = self.files(name)
            for path in (files.private_key, files.certificate, self.dir / f"{name}-req.pem"):
                path.unlink(missing_ok=True)
        requests = [subprocess.Popen(self._argv("req", name, "--unique", "--batch"), cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    for name in names]
        problems = []
        for name, proc in zip(names, requests, strict=True):
            try:
                _, err = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                problems.append(f"ovs-pki req {name} failed: {err.strip()}")
        if problems:
            raise LabError("; ".join(problems) + f" (log: {self.dir / 'pki.log'})")
        for name in names:
            self._run("sign", name, "switch", "--batch")
        return {name: self.files(name) for name in names}
