"""The fleet store on a real 3-member Raft cluster: each policy file kept once, what a client watching
one switch receives, and a store made with the schema before the File table."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ovsmgr.fleet.state import (
    DATABASE,
    SCHEMA_FILE,
    DesiredSwitch,
    PolicySource,
    StoreError,
    StoreState,
)
from ovsmgr.fleet.store import FleetStore
from ovsmgr.lab import netns
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.policy.generate import generate_policy

pytestmark = pytest.mark.integration

NAMES = ("edge-1", "edge-2", "edge-3")
BASE = generate_policy(200, "mixed")


def base(revision: int) -> str:
    return f"# base revision {revision}\n{BASE}"


def site(name: str) -> str:
    return f"firewall:\n  rules:\n    - {{name: {name}, from: inside, services: [tcp/8080], action: allow}}\n"


def fleet_of(revision: int) -> dict[str, DesiredSwitch]:
    """Every switch merges the shared base with a site file of its own."""
    out = {}
    for name in NAMES:
        files = (("base.yaml", base(revision)), (f"{name}.yaml", site(name)))
        digest = hashlib.sha256(repr(files).encode()).hexdigest()
        out[name] = DesiredSwitch("br0", None, PolicySource(digest, files))
    return out


def roll(store: FleetStore, expected: int, switches: dict[str, DesiredSwitch]) -> int:
    generation = store.write_generation(expected, switches, {"state": "test"})
    store.release(list(switches), generation)
    return generation


def released(name: str, digest: str) -> Callable[[StoreState], bool]:
    def check(state: StoreState) -> bool:
        row = state.switches.get(name)
        return row is not None and row.release == digest and digest in state.policies
    return check


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_digests(store: FleetStore) -> set[str]:
    """The File rows this client has (the server sent it)."""
    return {str(row.digest) for row in store.idl.tables["File"].rows.values()}


@pytest.fixture
def cluster() -> Iterator[StoreCluster]:
    store = StoreCluster(Path("/tmp") / f"ovsmgr-store-{secrets.token_hex(3)}")
    try:
        store.start()
        yield store
    finally:
        assert not store.stop()
        shutil.rmtree(store.dir, ignore_errors=True)


def test_a_switch_watcher_gets_only_its_rows_and_a_base_change_writes_the_base_once(cluster: StoreCluster) -> None:
    first, second = fleet_of(1), fleet_of(2)
    with FleetStore(cluster.endpoints) as writer:
        generation = roll(writer, 0, first)
        assert file_digests(writer) == {digest(base(1))} | {digest(site(n)) for n in NAMES}, "one row per file"
        with FleetStore(cluster.endpoints, switch="edge-2") as agent:
            state = agent.wait(released("edge-2", first["edge-2"].policy.digest), 30)
            assert list(state.switches) == ["edge-2"] and list(state.policies) == [first["edge-2"].policy.digest]
            assert state.policies[first["edge-2"].policy.digest].files == first["edge-2"].policy.files
            assert file_digests(agent) == {digest(base(1)), digest(site("edge-2"))}, "only its own files"
            assert len(agent.idl.tables["Policy"].rows) == 1

            roll(writer, generation, second)  # the base changes for every switch
            state = agent.wait(released("edge-2", second["edge-2"].policy.digest), 30)
            assert state.policies[second["edge-2"].policy.digest].files == second["edge-2"].policy.files
            # the IDL drops rows the condition no longer selects once the server says so
            assert agent.wait(lambda _s: file_digests(agent) == {digest(base(2)), digest(site("edge-2"))}, 30)

        state = writer.wait(lambda s: all(released(n, second[n].policy.digest)(s) for n in NAMES), 30)
        assert all(state.policies[second[n].policy.digest].files == second[n].policy.files for n in NAMES)
        # the old base and policies are gone (nothing refers to them), each file is one row
        assert writer.wait(lambda _s: file_digests(writer) == {digest(base(2))} | {digest(site(n)) for n in NAMES}
                           and len(writer.idl.tables["Policy"].rows) == len(NAMES), 30)
    # every member's log holds the new base's text once, though three policies merge it
    for member in cluster.members:
        assert member.pid is not None and Path(f"/proc/{member.pid}").exists(), f"store member s{member.index} died"
        log = (cluster.dir / f"s{member.index}.db").read_bytes()
        assert log.count(b"# base revision 2") == 1, f"s{member.index}: the base text was written more than once"


def old_schema(path: Path) -> Path:
    """The schema before the File table (1.0.0): a policy's file texts in its `sources` column."""
    schema = json.loads(SCHEMA_FILE.read_text())
    schema["version"] = "1.0.0"
    del schema["tables"]["File"]
    for table, columns in (("Policy", ("names", "files", "file_digests")), ("Switch", ("policy_digest", "release_digest"))):
        for column in columns:
            del schema["tables"][table]["columns"][column]
    path.write_text(json.dumps(schema))
    return path


def test_a_store_made_before_the_file_table_is_refused_then_converted_in_place(tmp_path: Path) -> None:
    cluster = StoreCluster(Path("/tmp") / f"ovsmgr-store-{secrets.token_hex(3)}", schema=old_schema(tmp_path / "v1.ovsschema"))
    try:
        cluster.start()
        sources = [["base.yaml", base(1)], ["edge-1.yaml", site("edge-1")]]
        ops = [DATABASE, {"op": "insert", "table": "Fleet", "row": {"generation": 1}},
               {"op": "insert", "table": "Policy", "uuid-name": "p",
                "row": {"digest": "old-digest", "sources": json.dumps(sources), "runtime": ""}},
               {"op": "insert", "table": "Switch", "row": {
                   "name": "edge-1", "bridge": "br0", "policy": ["named-uuid", "p"], "desired_generation": 1,
                   "release": ["named-uuid", "p"], "released_generation": 1}}]
        leader = cluster.leader()
        endpoint = f"unix:{cluster.dir}/s{leader}.sock"
        subprocess.run(["ovsdb-client", "transact", endpoint, json.dumps(ops)], check=True, capture_output=True)

        with pytest.raises(StoreError) as refused:
            FleetStore(cluster.endpoints, timeout=10)
        message = str(refused.value)
        assert "schema version 1.0.0" in message and f"ovsdb-client convert unix:{cluster.dir}/s" in message, message
        command = message.split("`")[1].split()
        subprocess.run(command, check=True, capture_output=True, timeout=60)  # as the message says

        with FleetStore(cluster.endpoints) as store:
            state = store.state()
            assert state.generation == 1 and state.switches["edge-1"].release == "old-digest"
            assert state.policies["old-digest"].files == tuple(tuple(f) for f in sources), "the converted row's files"
            roll(store, 1, {"edge-1": fleet_of(2)["edge-1"]})  # the next generation is written with File rows
            state = store.wait(lambda s: "old-digest" not in s.policies, 10)
            assert file_digests(store) == {digest(base(2)), digest(site("edge-1"))}
    finally:
        assert not cluster.stop()
        shutil.rmtree(cluster.dir, ignore_errors=True)


def start_relay(directory: Path, sources: list[str]) -> int:
    """An OVSDB relay of the fleet database in `directory` (`relay.sock`); its pid."""
    directory.mkdir()
    netns.run(["ovsdb-server", f"--remote=punix:{directory}/relay.sock", f"--unixctl={directory}/relay.ctl",
               f"--pidfile={directory}/relay.pid", "--detach", "--no-chdir", f"--log-file={directory}/relay.log",
               "-vconsole:off", f"relay:{DATABASE}:{','.join(sources)}"])
    return int((directory / "relay.pid").read_text())


def test_an_ovsdb_relay_named_as_the_store_is_refused_saying_why(cluster: StoreCluster) -> None:
    relay, lost = cluster.dir / "relay", cluster.dir / "lost"
    pids = {relay: start_relay(relay, cluster.endpoints),
            lost: start_relay(lost, [f"unix:{cluster.dir}/nothing.sock"])}  # never reaches a cluster: no schema
    try:
        for where in (relay, lost):
            with pytest.raises(StoreError, match=f"unix:{where}/relay.sock: is an OVSDB relay; name the store's members"):
                FleetStore([f"unix:{where}/relay.sock"], timeout=10)
        with FleetStore([f"unix:{relay}/relay.sock", *cluster.endpoints], timeout=10) as store:  # the members serve
            assert roll(store, 0, fleet_of(1)) == 1
    finally:
        assert all(netns.stop_process(pid, str(where), "the relay") is None for where, pid in pids.items())
