"""A fleet store for a lab: a Raft cluster of ovsdb-servers on this host's loopback.

The first member is made with `ovsdb-tool create-cluster`, the others with `ovsdb-tool
join-cluster` (the way a site builds its store, docs/fleet.md). Members talk Raft over
`tcp:127.0.0.1:PORT` (`ssl:` when the cluster has TLS files) and take clients on a unix socket
each (`DIR/sN.sock`) and, with TLS, on `pssl:PORT:127.0.0.1`. `cluster.json` in the directory
records ports and pids as soon as they exist, so another process can stop the cluster, and a
test can kill one member (the leader, say) and start it again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovsmgr.fleet.state import DATABASE, SCHEMA_FILE
from ovsmgr.lab import netns
from ovsmgr.lab.spec import LabError
from ovsmgr.southbound.tls import TlsFiles
from ovsmgr.switch.statefile import atomic_write

STATE_FILE = "cluster.json"
FORM_TIMEOUT = 30.0
"""Seconds the members get to elect a leader and all join."""


@dataclass
class Member:
    index: int
    raft_port: int
    client_port: int
    pid: int | None = None


class StoreCluster:
    """`members` ovsdb-servers holding the fleet database as one Raft cluster, in `directory`."""

    def __init__(self, directory: str | Path, members: int = 3, tls: TlsFiles | None = None,
                 schema: Path = SCHEMA_FILE) -> None:
        self.dir = Path(directory)
        self.tls = tls
        self.schema = schema
        """The schema the cluster is created with (another than ovsmgr's: a store an older ovsmgr made)."""
        saved = self._load()
        if saved:
            self.members = [Member(**m) for m in saved["members"]]
            self.tls = TlsFiles(*(Path(p) for p in saved["tls"])) if saved.get("tls") else None
        else:
            self.members = [Member(i, netns.free_port(), netns.free_port()) for i in range(1, members + 1)]

    # -- where things are ----------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """How clients reach the members: TLS when the cluster has TLS files, else unix sockets."""
        if self.tls is not None:
            return [f"ssl:127.0.0.1:{m.client_port}" for m in self.members]
        return [f"unix:{self.dir}/s{m.index}.sock" for m in self.members]

    def _raft(self, member: Member) -> str:
        return f"{'ssl' if self.tls else 'tcp'}:127.0.0.1:{member.raft_port}"

    def _ctl(self, member: Member) -> str:
        return f"{self.dir}/s{member.index}.ctl"

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / STATE_FILE).read_text()))
        except FileNotFoundError:
            return {}

    def _save(self) -> None:
        tls = [str(p) for p in (self.tls.private_key, self.tls.certificate, self.tls.ca_cert)] if self.tls else None
        atomic_write(self.dir / STATE_FILE, json.dumps(
            {"members": [vars(m) for m in self.members], "tls": tls}))

    # -- start and stop ------------------------------------------------------------------------
    def start(self) -> None:
        """Create the cluster and start every member; LabError (what started stays recorded)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        first = self.members[0]
        for member in self.members:
            db = self.dir / f"s{member.index}.db"
            db.unlink(missing_ok=True)
            if member is first:
                netns.run(["ovsdb-tool", "create-cluster", str(db), str(self.schema), self._raft(member)])
            else:
                netns.run(["ovsdb-tool", "join-cluster", str(db), DATABASE, self._raft(member), self._raft(first)])
            self.start_member(member.index)
        self.wait_formed()

    def start_member(self, index: int) -> None:
        """Start (again) member `index`'s ovsdb-server on its database file."""
        member = self.members[index - 1]
        pidfile = self.dir / f"s{index}.pid"
        pidfile.unlink(missing_ok=True)
        argv = ["ovsdb-server", f"--remote=punix:{self.dir}/s{index}.sock", f"--unixctl={self._ctl(member)}",
                f"--pidfile={pidfile}", "--detach", "--no-chdir", f"--log-file={self.dir}/s{index}.log",
                "-vconsole:off"]
        if self.tls is not None:
            argv += [f"--remote=pssl:{member.client_port}:127.0.0.1", f"--private-key={self.tls.private_key}",
                     f"--certificate={self.tls.certificate}", f"--ca-cert={self.tls.ca_cert}"]
        netns.run([*argv, str(self.dir / f"s{index}.db")])
        member.pid = int(pidfile.read_text().strip())
        self._save()

    def stop_member(self, index: int) -> list[str]:
        member = self.members[index - 1]
        if member.pid is None:
            return []
        problem = netns.stop_process(member.pid, str(self.dir), f"store member s{index}")
        if problem:
            return [problem]
        member.pid = None
        self._save()
        return []

    def stop(self) -> list[str]:
        """Stop every member; the problems, if any. Idempotent."""
        return [e for m in self.members for e in self.stop_member(m.index)]

    # -- watching ------------------------------------------------------------------------------
    def member_status(self, index: int) -> str:
        """`cluster/status` of one member, as ovs-appctl prints it ("" when it does not answer)."""
        from ovsmgr.southbound.tools import OvsToolError, appctl

        try:
            return appctl(self._ctl(self.members[index - 1]), "cluster/status", DATABASE, timeout=5)
        except OvsToolError:
            return ""

    def leader(self) -> int | None:
        """The index of the member that is leader now, as the members see it."""
        for member in self.members:
            if member.pid is not None and "Role: leader" in self.member_status(member.index):
                return member.index
        return None

    def wait_formed(self, timeout: float = FORM_TIMEOUT) -> int:
        """Wait until every running member has joined and one leads; the leader's index."""
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.pid is not None]
            joined = all("Status: cluster member" in self.member_status(m.index) for m in running)
            leader = self.leader() if joined else None
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise LabError(f"the store cluster in {self.dir} did not form in {timeout:g} s "
                               f"(logs: {self.dir}/s*.log)")
            time.sleep(0.1)
