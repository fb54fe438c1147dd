"""`ovsmgr lab probe`: send real traffic between two lab hosts and say what the switch did."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import click

from ovsmgr.cli.common import echo_json, fail, output_option
from ovsmgr.cli.lab import lab, name_option
from ovsmgr.lab.ovs import Lab, LabError

PROBE = [sys.executable, "-m", "ovsmgr.lab.probe"]


def _host_address(lab_: Lab, port: str) -> str:
    for entry in lab_.status()["ports"]:
        if entry["name"] == port and entry.get("address"):
            return str(entry["address"]).split("/")[0]
    raise LabError(f"lab port {port} has no address")


def _split_dst(dst: str | None, default_addr: str, default_port: int | None) -> tuple[str, int | None]:
    if not dst:
        return default_addr, default_port
    address, sep, port = dst.rpartition(":") if dst.count(":") == 1 else ("", "", "")
    return (address, int(port)) if sep else (dst, default_port)


def probe_once(lab_: Lab, src_port: str, dst_port: str, service: str, dst: str | None,
               src: str | None, timeout: float) -> dict[str, Any]:
    """One real exchange: a server on `dst_port`'s host, a client on `src_port`'s host."""
    proto, _, port_text = service.partition("/")
    if proto not in ("tcp", "udp", "icmp"):
        raise click.BadParameter("SERVICE is tcp/PORT, udp/PORT or icmp")
    listen = int(port_text) if port_text else None
    address, port = _split_dst(dst, _host_address(lab_, dst_port), listen)
    result: dict[str, Any] = {"from": src_port, "to": dst_port, "service": service, "dst": address}
    if proto == "icmp":
        argv = ["ping", "-n", "-q", "-c", "1", "-w", str(max(1, round(timeout))), address] + (["-I", src] if src else [])
        result["passed"] = lab_.exec(src_port, argv, capture_output=True).returncode == 0
        return result
    if listen is None or port is None:
        raise click.BadParameter(f"{service}: give a port, e.g. {proto}/80")
    server = lab_.popen(dst_port, [*PROBE, "serve", proto, str(listen), "--timeout", str(timeout + 5)],
                        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        argv = [*PROBE, "connect", proto, address, str(port), "--timeout", str(timeout)]
        if src:
            argv += ["--src", src]
        out = lab_.exec(src_port, argv, capture_output=True, text=True)
        reply = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.kill()
        server.wait()
    result["passed"] = bool(reply.get("ok"))
    if reply.get("seen_as"):
        result["seen_as"] = f"{reply['seen_as']}:{reply['seen_port']}"
    return result


@lab.command("probe")
@click.argument("src_port", metavar="FROM")
@click.argument("dst_port", metavar="TO")
@click.argument("service")
@click.option("--dst", default=None, metavar="ADDR[:PORT]", help="What the client dials (default: TO's host).")
@click.option("--src", default=None, metavar="ADDR", help="Source address on FROM's host.")
@click.option("--expect", type=click.Choice(["pass", "drop"]), default=None,
              help="Exit 1 unless the traffic passed (pass) or did not (drop).")
@click.option("--timeout", type=float, default=2.0, show_default=True)
@name_option
@output_option
def probe(src_port: str, dst_port: str, service: str, dst: str | None, src: str | None,
          expect: str | None, timeout: float, name: str, output: str) -> None:
    """Send SERVICE (tcp/PORT, udp/PORT, icmp) from host FROM to host TO for real.

    The server on TO reports the address it saw, so translations show.
    """
    try:
        result = probe_once(Lab(name), src_port, dst_port, service, dst, src, timeout)
    except LabError as exc:
        fail(str(exc))
    if output == "json":
        echo_json(result)
    else:
        dialled = result["dst"] + (f":{dst.rpartition(':')[2]}" if dst and ":" in dst else "")
        source = f" from {src}" if src else ""
        seen = f"; arrived as from {result['seen_as']}" if "seen_as" in result else ""
        verdict = "PASSED" if result["passed"] else "DROPPED"
        click.echo(f"{src_port:>6} -> {dst_port:<6} {service:<9} {verdict:<8} dialled {dialled}{source}{seen}")
    if expect is not None and result["passed"] != (expect == "pass"):
        click.echo(f"ovsmgr: expected {expect}", err=True)
        sys.exit(1)
