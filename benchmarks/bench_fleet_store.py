"""The fleet store at 10, 100 and 1,000 switches: what it holds, what a new generation writes, and
what an agent downloads, in bytes counted on the wire (exact; no timing).

For each size a fresh 3-member Raft store (`StoreCluster`) is filled as `fleet apply` fills it: one
generation and its release to every switch (`write_generation`, `release`), each switch's policy a
shared base (`generate_policy(RULES, "mixed")`) merged with a site file of its own (an address set
and one rule, about 200 bytes). Every client reaches the leader through a byte-counting relay of
this script (a unix socket that copies both ways and counts), so what is counted is the JSON-RPC
each one sends and receives, probes included:

- `agent`: a client watching one switch (`FleetStore(switch=...)`, as `ovsmgr agent` watches);
- `all`: a client watching everything (as `controller --fleet` and `fleet status` do);
- `writer`: the client writing the generations (as `fleet apply` does).

Reported per size: the bytes each watcher received for its first download (until it has the
switch's released policy, or every switch's), then for one change of the base (one rule's port
changed, written and released to every switch: a new generation of the whole fleet); the bytes the
writer sent for that generation's transaction; and the leader's database file (`s1.db`, ...) after
the fill, after the change, and after `ovsdb-server/compact`.

`--relay`: the same agent through an OVSDB relay (`ovsdb-server relay:OVSMGR_Fleet:...`) in front
of the cluster: whether it downloads, writes its observed state, and gets its switch's lock, and
whether a second agent on the relay and a third on the leader are refused it.

    sudo .venv/bin/python benchmarks/bench_fleet_store.py [--sizes 10 100 1000] [--rules 200] [--relay]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from ovsmgr.fleet.state import DATABASE, DesiredSwitch, PolicySource, StoreState
from ovsmgr.fleet.store import FleetStore
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.policy.generate import generate_policy, one_rule_changed

WAIT = 300.0


class CountingRelay:
    """A unix socket that connects each client to `upstream` (a unix socket) and counts the bytes."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path = path
        self.upstream = upstream
        self.down = 0  # server -> client
        self.up = 0  # client -> server
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"unix:{self.path}"

    def reset(self) -> None:
        with self.lock:
            self.down = self.up = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            try:
                server.connect(self.upstream)
            except OSError:  # the member is gone (it crashed): the client sees its connection close
                client.close()
                server.close()
                continue
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def site_file(i: int) -> str:
    return (f"address_sets:\n  site-{i}: [10.{i // 256}.{i % 256}.0/24]\n"
            f"firewall:\n  rules:\n    - {{name: site-{i}, from: inside, src: site-{i}, services: [tcp/{8000 + i % 1000}],"
            " action: allow}\n")


def bases(rules: int) -> list[str]:
    """The base and a copy with one rule's port changed (as bench_fleet.py changes it)."""
    text = generate_policy(rules, "mixed")
    return [text, one_rule_changed(text)]


def desired(size: int, base: str) -> dict[str, DesiredSwitch]:
    out = {}
    for i in range(size):
        files = (("policies/base.yaml", base), (f"sites/s{i}.yaml", site_file(i)))
        digest = hashlib.sha256("\0".join(t for _, t in files).encode()).hexdigest()
        out[f"s{i}"] = DesiredSwitch("br0", None, PolicySource(digest, files))
    return out


def generation(writer: FleetStore, expected: int, switches: dict[str, DesiredSwitch]) -> int:
    new = writer.write_generation(expected, switches, {"state": "bench"})
    writer.release(list(switches), new)
    return new


def has_release(name: str, digest: str) -> Callable[[StoreState], bool]:
    def check(state: StoreState) -> bool:
        row = state.switches.get(name)
        return row is not None and row.release == digest and digest in state.policies
    return check


def all_released(switches: dict[str, DesiredSwitch]) -> Callable[[StoreState], bool]:
    def check(state: StoreState) -> bool:
        return all((row := state.switches.get(n)) is not None and row.release == want.policy.digest
                   and want.policy.digest in state.policies for n, want in switches.items())
    return check


def db_size(cluster: StoreCluster, index: int) -> int:
    return (cluster.dir / f"s{index}.db").stat().st_size


def compact(cluster: StoreCluster, index: int) -> None:
    subprocess.run(["ovs-appctl", "-t", str(cluster.dir / f"s{index}.ctl"), "ovsdb-server/compact", DATABASE],
                   check=True, capture_output=True)


def measure(workdir: Path, size: int, texts: list[str], agent_stays: bool) -> dict[str, object]:
    cluster = StoreCluster(workdir / f"store-{size}")
    cluster.start()
    relays: list[CountingRelay] = []
    try:
        leader = cluster.leader() or 1
        upstream = str(cluster.dir / f"s{leader}.sock")
        relays = [CountingRelay(workdir / f"{role}-{size}.sock", upstream) for role in ("writer", "agent", "all")]
        writer_relay, agent_relay, all_relay = relays
        out: dict[str, object] = {"size": size}
        with FleetStore([writer_relay.endpoint], timeout=WAIT) as writer:
            first = desired(size, texts[0])
            gen = generation(writer, 0, first)
            out["fill_sent"] = writer_relay.up
            compact(cluster, leader)
            out["db_filled"] = db_size(cluster, leader)
            name = f"s{size // 2}"
            agent = FleetStore([agent_relay.endpoint], switch=name, timeout=WAIT)
            with FleetStore([all_relay.endpoint], timeout=WAIT) as everything:
                agent.wait(has_release(name, first[name].policy.digest), WAIT)
                everything.wait(all_released(first), WAIT)
                out["agent_initial"], out["all_initial"] = agent_relay.down, all_relay.down
                if not agent_stays:
                    agent.close()
                for relay in relays:
                    relay.reset()
                second = desired(size, texts[1])
                gen = writer.write_generation(gen, second, {"state": "bench"})
                out["change_txn_sent"] = writer_relay.up
                if not _alive(cluster.members[leader - 1].pid):
                    raise RuntimeError(f"the leader s{leader} died on the new generation: see {cluster.dir}/s{leader}.log")
                writer.release(list(second), gen)
                out["release_txn_sent"] = writer_relay.up - int(out["change_txn_sent"])  # type: ignore[call-overload]
                if agent_stays:
                    agent.wait(has_release(name, second[name].policy.digest), WAIT)
                    agent.close()
                out["agent_change"] = agent_relay.down if agent_stays else "-"
                everything.wait(all_released(second), WAIT)
                out["all_change"] = all_relay.down
        out["db_changed"] = db_size(cluster, leader)
        compact(cluster, leader)
        out["db_compacted"] = db_size(cluster, leader)
        return out
    finally:
        for relay in relays:
            relay.close()
        cluster.stop()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def relay_check(workdir: Path, texts: list[str]) -> None:
    """An agent through an OVSDB relay: download, write, lock."""
    cluster = StoreCluster(workdir / "store-relay")
    cluster.start()
    relay_dir = workdir / "relay"
    relay_dir.mkdir()
    source = ",".join(cluster.endpoints)
    subprocess.run(["ovsdb-server", f"--remote=punix:{relay_dir}/relay.sock", f"--unixctl={relay_dir}/relay.ctl",
                    f"--pidfile={relay_dir}/relay.pid", "--detach", "--no-chdir", f"--log-file={relay_dir}/relay.log",
                    "-vconsole:off", f"relay:{DATABASE}:{source}"], check=True)
    relay_pid = int((relay_dir / "relay.pid").read_text())
    endpoint = f"unix:{relay_dir}/relay.sock"
    lock = "ovsmgr_agent_s1"
    try:
        with FleetStore(cluster.endpoints, timeout=30) as writer:
            switches = desired(3, texts[0])
            gen = generation(writer, 0, switches)
            print(f"{'step':58}  result")
            step("agent on the relay, leader_only (as on the members)", lambda: leader_only_client(endpoint))
            with FleetStore([endpoint], switch="s1", lock=lock, timeout=10, leader_only=False) as agent:
                step("agent on the relay: its switch's release downloaded",
                     lambda: agent.wait(has_release("s1", switches["s1"].policy.digest), 10) and "yes")
                step("agent on the relay: holds its lock", lambda: done(agent.wait_lock, 10))
                for where, ends, only in (("another agent on the relay", [endpoint], False),
                                          ("another agent on the leader", cluster.endpoints, True)):
                    with FleetStore(ends, switch="s1", lock=lock, timeout=10, leader_only=only) as other:
                        step(f"{where}: gets the same lock", functools.partial(done, other.wait_lock, 5))
                step("agent on the relay: writes asserting its lock",
                     lambda: done(agent.observe, "s1", served_by="relay-agent"))
            with FleetStore([endpoint], switch="s1", timeout=10, leader_only=False) as plain:
                step("a client on the relay without a lock: writes",
                     lambda: done(plain.observe, "s1", served_by="relay-plain"))
            step("the write is in the cluster",
                 lambda: writer.wait(lambda s: s.switches["s1"].served_by == "relay-plain", 10) and "yes")
            second = desired(3, texts[1])
            gen = generation(writer, gen, second)
            with FleetStore([endpoint], switch="s1", timeout=10, leader_only=False) as agent:
                step("a new generation reaches the agent on the relay",
                     lambda: agent.wait(has_release("s1", second["s1"].policy.digest), 10) and "yes")
    finally:
        subprocess.run(["kill", str(relay_pid)], check=False)
        cluster.stop()


def leader_only_client(endpoint: str) -> str:
    try:
        FleetStore([endpoint], switch="s1", timeout=10).close()
    except Exception as exc:
        return f"no: {exc}"
    return "yes"


def done(action: Callable[..., None], *args: object, **kwargs: object) -> str:
    action(*args, **kwargs)
    return "yes"


def step(what: str, action: Callable[[], object]) -> None:
    try:
        result = action()
    except Exception as exc:
        result = f"no: {type(exc).__name__}: {str(exc)[:150]}"
    print(f"{what:58}  {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--relay", action="store_true")
    parser.add_argument("--agent-leaves", action="store_true",
                        help="close the agent before the change (the store before schema 2.0.0 crashed with it)")
    args = parser.parse_args()
    texts = bases(args.rules)
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-", dir="/tmp"))
    try:
        if args.relay:
            relay_check(workdir, texts)
            return
        print(f"load average {os.getloadavg()[0]:.2f}; base {len(texts[0].encode())} bytes ({args.rules} rules); "
              f"site file about {len(site_file(500).encode())} bytes; bytes counted on the wire")
        rows = [measure(workdir, size, texts, not args.agent_leaves) for size in args.sizes]
        keys = ["fill_sent", "db_filled", "agent_initial", "all_initial", "change_txn_sent", "release_txn_sent",
                "agent_change", "all_change", "db_changed", "db_compacted"]
        print("switches  " + "  ".join(f"{k:>16}" for k in keys))
        for row in rows:
            print(f"{row['size']:8d}  " + "  ".join(f"{row[k]!s:>16}" for k in keys))
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
