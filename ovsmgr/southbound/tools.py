"""The one way ovsmgr calls an Open vSwitch tool: a timeout, one error type, the command named.

Flows travel over OpenFlow (`southbound.openflow`) and the database over OVSDB
(`southbound.ovsdb`); what is left is `ovs-vswitchd`'s own control commands
(`dpctl/...`: conntrack zones and limits, which OVS 3.1 keeps out of OVSDB).
`appctl` speaks their JSON-RPC protocol on the daemon's control socket through
the `ovs` library, as `ovs-appctl` does, without forking it. `run_tool` forks a
command-line tool for the few callers that need one (lab set-up, benchmark
baselines that *are* the tool).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Mapping, Sequence

from ovsmgr.southbound.ovslib import jsonrpc, ovs, stream

DEFAULT_TIMEOUT = 30.0


class OvsToolError(Exception):
    """An OVS tool or control command failed or timed out; the message names the command."""


def run_tool(argv: Sequence[str], *, input: str | None = None, timeout: float = DEFAULT_TIMEOUT,
             env: Mapping[str, str] | None = None) -> str:
    """Run an OVS command-line tool and return its standard output."""
    command = " ".join(argv)
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                              env=dict(env) if env is not None else None, check=False)
    except subprocess.TimeoutExpired as exc:
        raise OvsToolError(f"{command}: no answer within {timeout:g} s") from exc
    except OSError as exc:
        raise OvsToolError(f"{command}: {exc}") from exc
    if proc.returncode != 0:
        raise OvsToolError(f"{command} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def appctl(target: str, command: str, *args: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """`ovs-appctl -t TARGET COMMAND ARGS...` over the daemon's control socket (a path)."""
    shown = f"ovs-appctl -t {target} {command} {' '.join(args)}".rstrip()
    deadline = time.monotonic() + timeout
    error, conn_stream = stream.Stream.open_block(stream.Stream.open(f"unix:{target}"), int(timeout * 1000))
    if error:
        raise OvsToolError(f"{shown}: cannot connect: {os.strerror(error)}")
    conn = jsonrpc.Connection(conn_stream)
    try:
        reply = transact(conn, jsonrpc.Message.create_request(command, list(args)), deadline, shown)
    finally:
        conn.close()
    if reply.error is not None:
        raise OvsToolError(f"{shown} failed: {str(reply.error).strip()}")
    return str(reply.result)


def transact(conn: jsonrpc.Connection, request: jsonrpc.Message, deadline: float, shown: str) -> jsonrpc.Message:
    """`Connection.transact_block` with a deadline (the library's waits for ever)."""
    error = conn.send(request)
    while not error:
        conn.run()
        error, reply = conn.recv()
        if reply is not None and reply.id == request.id:
            return reply
        if error == errno.EAGAIN:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OvsToolError(f"{shown}: no answer within the timeout")
            poller = ovs.poller.Poller()
            conn.wait(poller)
            conn.recv_wait(poller)
            poller.timer_wait(int(remaining * 1000) + 1)
            poller.block()
            error = 0
    raise OvsToolError(f"{shown}: {os.strerror(error) if error > 0 else 'connection closed'}")
