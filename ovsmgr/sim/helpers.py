"""Conntrack helpers (ALGs) in the simulator: the connections an FTP or TFTP helper expects.

OVS's helpers read the control connection (FTP's PORT, PASV, EPRT, EPSV; a TFTP request) and
expect the data connection it announces; that connection's packets are `+rel` and carry the
control connection's ct_mark, and a commit with `nat` gives it the control connection's
translation (the helper rewrote the announcement to match). The simulator has no payloads, so
it takes the announcement as made when the control connection is committed with a helper:

- ftp: a TCP connection, any ports, from the client to the server's address (passive mode),
  or from the server to the address the client appears as (active mode; through SNAT, the
  translated address);
- tftp: UDP from the server's address, any port, to the client's address and port as the
  server sees them (the answer to a read or write request comes from a new port).

The helper is the one of the commit that created the connection, wherever it is: a NAT flow's
or the bucket of a load-balanced DNAT's select group (a pool has a group per helper).
An expectation is taken by the first connection committed with it, as in OVS; a connection
that matches one but is not committed is `+new+rel` and leaves it in place. A real helper
expects only what it parsed (one port), so the simulator lets through more than a switch
would, never less: tests/integration/test_alg.py shows real transfers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ovsmgr.sim.fields import PROTO_TCP, PROTO_UDP

if TYPE_CHECKING:
    from ovsmgr.sim.conntrack import Connection, ConnKey


@dataclass(frozen=True, order=True)
class Expected:
    """A connection a helper expects in `zone`, from `src` to `dst` (`dport` None: any port)."""

    zone: int
    proto: int
    src: int
    dst: int
    dport: int | None
    master: ConnKey
    """The control connection's original tuple, to find it (and its mark)."""
    reverse: bool
    """The data connection goes from the control connection's server to its client."""

    def matches(self, zone: int, proto: int, src: int, dst: int, dport: int) -> bool:
        return (zone, proto, src, dst) == (self.zone, self.proto, self.src, self.dst) \
            and self.dport in (None, dport)


def expectations(helper: str, zone: int, conn: Connection) -> tuple[Expected, ...]:
    """What a helper expects of the control connection `conn` (just committed)."""
    original, reply, master = conn.original, conn.reply, conn.original
    if helper == "ftp":
        return (Expected(zone, PROTO_TCP, original.src, original.dst, None, master, False),
                Expected(zone, PROTO_TCP, reply.src, reply.dst, None, master, True))
    return (Expected(zone, PROTO_UDP, reply.src, reply.dst, reply.dport, master, True),)


def related_translation(expected: Expected, master: Connection, key: ConnKey) -> tuple[ConnKey, frozenset[str]]:
    """The translated tuple and NAT kinds of a related connection `key` committed with `nat`: the
    control connection's translation, in the data connection's direction."""
    changes: dict[str, int] = {}
    if "src" in master.nat:  # the client appears as master.reply.dst
        if expected.reverse:
            changes["dst"] = master.original.src
        else:
            changes["src"] = master.reply.dst
    if "dst" in master.nat:  # the server is really master.reply.src
        if expected.reverse:
            changes["src"] = master.original.dst
        else:
            changes["dst"] = master.reply.src
    return dataclasses.replace(key, **changes), frozenset(changes)
