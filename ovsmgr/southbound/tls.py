"""TLS for every connection ovsmgr makes or takes: OVSDB (`ssl:`), OpenFlow (`ssl:`), and the
controller's listener (`pssl:`).

One identity per process, as in Open vSwitch's own tools: `configure(TlsFiles)` sets the
private key, certificate and CA certificate once, for the `ovs` library's streams (OVSDB through
ovsdbapp, the fleet store) and for ovsmgr's own OpenFlow connections (`client_context`). Peers are
always verified against the CA certificate: a peer whose certificate no CA of the file signed is
refused, and so is a peer with no certificate. Host names are not checked, as Open vSwitch does not
check them: certificates from `ovs-pki` name an entity, not a host; what is trusted is the CA.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovsmgr.southbound.ovslib import stream


class TlsError(Exception):
    """TLS files missing or unusable, or a connection that needs TLS made without it."""


@dataclass(frozen=True)
class TlsFiles:
    private_key: Path
    certificate: Path
    ca_cert: Path
    """One or more CA certificates (PEM, concatenated): peers are trusted if one of them signed theirs."""

    def problems(self) -> list[str]:
        """What is wrong with the files (each one named), checked before anything connects."""
        out = []
        for what, path in (("private key", self.private_key), ("certificate", self.certificate),
                           ("CA certificate", self.ca_cert)):
            if not path.is_file():
                out.append(f"TLS {what} {path} does not exist")
            elif not os.access(path, os.R_OK):
                out.append(f"TLS {what} {path} is not readable")
        if not out:
            try:
                _context(self, ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError) as exc:
                out.append(f"TLS files {self.private_key}, {self.certificate}, {self.ca_cert} do not load: {exc}")
        return out


_configured: TlsFiles | None = None


def configure(files: TlsFiles) -> None:
    """Use `files` for every TLS connection of this process; TlsError if they are not usable."""
    global _configured
    problems = files.problems()
    if problems:
        raise TlsError("; ".join(problems))
    stream.Stream.ssl_set_private_key_file(str(files.private_key))
    stream.Stream.ssl_set_certificate_file(str(files.certificate))
    stream.Stream.ssl_set_ca_cert_file(str(files.ca_cert))
    _configured = files


def configured() -> TlsFiles | None:
    return _configured


def _context(files: TlsFiles, protocol: int, kind: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    ctx = kind(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(files.ca_cert))
    ctx.load_cert_chain(str(files.certificate), str(files.private_key))
    return ctx


class ServerContext(ssl.SSLContext):
    """A listener's context (`ServerContext.of`): the identity of `TlsFiles`, a client certificate
    required and verified against its CA, TLS 1.2 or newer. Each `wrap_socket` (a connection taken)
    gives the client `HANDSHAKE_SECONDS` to finish its handshake, and a refused one (no
    certificate, one the CA did not sign, no TLS at all) is reported to `refused(peer, reason)`
    before the error is raised and the connection closed."""

    refused: Callable[[str, str], None]

    @classmethod
    def of(cls, files: TlsFiles, refused: Callable[[str, str], None]) -> ServerContext:
        ctx = _context(files, ssl.PROTOCOL_TLS_SERVER, cls)
        assert isinstance(ctx, ServerContext)
        ctx.refused = refused
        return ctx

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        try:
            host, port = sock.getpeername()[:2]
            peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except (OSError, ValueError):
            peer = "a peer gone already"
        sock.settimeout(HANDSHAKE_SECONDS)
        try:
            return super().wrap_socket(sock, *args, **kwargs)
        except (OSError, ValueError) as exc:
            self.refused(peer, handshake_reason(exc))
            with contextlib.suppress(OSError):
                sock.close()
            raise


HANDSHAKE_SECONDS = 10.0
"""How long a client connecting to a TLS listener has to finish its handshake."""


def handshake_reason(exc: BaseException) -> str:
    """A failed handshake as an operator reads it: "certificate verify failed: unable to get local
    issuer certificate", "peer did not return a certificate" (not the C source position)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, TimeoutError):
        return f"no handshake within {HANDSHAKE_SECONDS:g} s"
    return str(exc) or type(exc).__name__


def client_context() -> ssl.SSLContext:
    """A client context with the configured identity; TlsError when none is configured."""
    if _configured is None:
        raise TlsError("an ssl: connection needs TLS files (a fleet file's tls:)")
    return _context(_configured, ssl.PROTOCOL_TLS_CLIENT)


def needs_tls(endpoint: str) -> bool:
    return endpoint.startswith(("ssl:", "pssl:"))


def handshake_problem(endpoint: str, timeout: float) -> str | None:
    """Why a TLS connection to `endpoint` (`ssl:HOST:PORT`) fails, in the handshake's own words
    (None: it does not fail). The `ovs` library says only "protocol error"; an operator needs to
    hear "certificate verify failed" or "unknown ca"."""
    host, _, port = endpoint.partition(":")[2].rpartition(":")
    try:
        ctx = client_context()
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock, \
                ctx.wrap_socket(sock) as tls_sock:
            tls_sock.settimeout(timeout)
            with contextlib.suppress(TimeoutError):
                tls_sock.recv(1)  # TLS 1.3: a server refusing our certificate says so after the handshake
    except ssl.SSLError as exc:
        return f"TLS refused: {exc.reason or exc}"
    except (OSError, ValueError, TlsError) as exc:
        return str(exc)
    return None
