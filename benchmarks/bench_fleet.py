"""A fleet rollout: time from `fleet apply` to every switch applied, for 1, 3 and more switches,
as a ratio to one switch measured in the same run.

Three lab switches (each its own OVS in its own namespace) and a 3-member Raft store on
loopback; more switches are more bridges on those three OVS (`br0` is the lab's, `fb1`,
`fb2`, ... are made by the first apply). Every switch gets a generated policy
(`generate_policy(RULES, "mixed")`) with its own bridge name; each rollout alternates
between that policy and a copy with one rule's port changed, so every rollout changes one
rule on every switch (the compile cache holds the rest, as in an operator's day). One
rollout is `run_rollout` in this process (store transactions, every switch's plan,
bundle and record included; Python's start and imports not), canary first, then batches
of `--batch`. Sizes take turns within each repetition; medians reported.

`--served-by controller`: the switches have `controllers:` and one `ovsmgr controller --fleet`
(a process of its own, listening on a unix socket in each lab's directory) serves them all; the
rollout releases each batch and waits until the controller wrote every switch's
`applied_generation` (the controller's compile, its bundle over its OpenFlow connection, its
write to the store), as `fleet apply` does.

    sudo .venv/bin/python benchmarks/bench_fleet.py [--sizes 1 3 6 12] [--rules 200] [--repetitions 3]
        [--served-by pushed|controller]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ovsmgr.fleet.fleetfile import Fleet, load_fleet, load_policies
from ovsmgr.fleet.rollout import run_rollout
from ovsmgr.fleet.store import ROLLOUT_LOCK, FleetStore
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec
from ovsmgr.policy.generate import generate_policy, one_rule_changed

LABS = 3


def switch_names(lab: int, bridges: int) -> list[tuple[str, str]]:
    return [(f"s{lab}-{b}", "br0" if b == 0 else f"fb{b}") for b in range(bridges)]


def controller_socket(lab: Lab) -> Path:
    """Where a lab's OVS reaches the fleet controller (OVS connects to sockets in its own directory only)."""
    return Path(lab.dir) / "fleet-ctl.sock"


def write_fleet(workdir: Path, labs: list[Lab], size: int, rules: int, variant: int, batch: int,
                served: bool = False) -> Fleet:
    """The first `size` switches, round-robin over the labs, all on policy `variant` (0 or 1)."""
    text = generate_policy(rules, "mixed")
    texts = [text, one_rule_changed(text)]
    per_lab = -(-size // LABS)
    chosen = [(lab, name, bridge) for b in range(per_lab) for lab in range(len(labs))
              for name, bridge in switch_names(lab, per_lab)[b:b + 1]][:size]
    rows = []
    for lab, name, bridge in chosen:
        path = workdir / f"{name}-{variant}.yaml"
        path.write_text(texts[variant].replace("bridge: br0", f"bridge: {bridge}", 1))
        controllers = f", controllers: ['unix:{controller_socket(labs[lab])}']" if served else ""
        rows.append(f"  {name}: {{policy: {path.name}, db: '{labs[lab].db_endpoint}'{controllers}}}")
    fleet = workdir / f"fleet-{size}.yaml"
    fleet.write_text(f"version: 1\nstore: [{', '.join(STORE.endpoints)}]\n"
                     f"rollout: {{canary: [{chosen[0][1]}], batch: {batch}}}\nswitches:\n" + "\n".join(rows) + "\n")
    return load_fleet(fleet)


def rollout_seconds(fleet: Fleet) -> float:
    policies = load_policies(fleet)
    with FleetStore(STORE.endpoints, lock=ROLLOUT_LOCK) as store:
        start = time.perf_counter()
        result = run_rollout(fleet, policies, store)
        took = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(f"rollout failed: {[o.error for o in result.outcomes if o.error]}")
    return took


def start_controller(workdir: Path, labs: list[Lab], size: int, rules: int, batch: int) -> subprocess.Popen[bytes]:
    """One fleet controller for every switch of the largest size, active before anything is timed."""
    fleet = write_fleet(workdir, labs, size, rules, 0, batch, served=True)
    listen = [arg for lab in labs for arg in ("--listen", f"unix:{controller_socket(lab)}")]
    log = open(workdir / "controller.log", "ab")  # noqa: SIM115 - the controller's for as long as it runs
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ovsmgr")), "controller", "--fleet", fleet.path, "--name", "bench",
                             *listen], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    with FleetStore(STORE.endpoints) as store:
        while store.state().active_controller != "bench":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fleet controller did not become active:\n"
                                   + (workdir / "controller.log").read_text())
            time.sleep(0.2)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 6, 12])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--served-by", choices=["pushed", "controller"], default="pushed")
    args = parser.parse_args()
    served = args.served_by == "controller"
    global STORE
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir="/tmp"))
    STORE = StoreCluster(workdir / "store")
    labs = [Lab(f"bf{secrets.token_hex(2)}{i}", workdir / f"lab{i}") for i in range(LABS)]
    controller: subprocess.Popen[bytes] | None = None
    try:
        STORE.start()
        for lab in labs:
            lab.up(LabSpec("br0", "netdev", [LabPort("inside", 1), LabPort("outside", 2)], lab.name))
        if served:
            controller = start_controller(workdir, labs, max(args.sizes), args.rules, args.batch)
        for size in args.sizes:  # first apply: bridges made, caches filled (not timed)
            rollout_seconds(write_fleet(workdir, labs, size, args.rules, 0, args.batch, served))
        times: dict[int, list[float]] = {size: [] for size in args.sizes}
        for rep in range(args.repetitions):
            for size in args.sizes:
                times[size].append(rollout_seconds(write_fleet(workdir, labs, size, args.rules, 1 - rep % 2,
                                                               args.batch, served)))
                rollout_seconds(write_fleet(workdir, labs, size, args.rules, rep % 2, args.batch, served))
        base = statistics.median(times[min(args.sizes)])
        print(f"load average {os.getloadavg()[0]:.2f}; {args.rules} rules per switch; batch {args.batch}; "
              f"medians of {args.repetitions}; {args.served_by}")
        print("switches  rollout s  ratio to 1  s per switch")
        for size in args.sizes:
            med = statistics.median(times[size])
            print(f"{size:8d}  {med:9.2f}  {med / base:10.2f}  {med / size:12.2f}")
    finally:
        if controller is not None:
            controller.send_signal(signal.SIGTERM)
            controller.wait(30)
        for lab in labs:
            lab.down()
        STORE.stop()
        shutil.rmtree(workdir, ignore_errors=True)


STORE: StoreCluster
if __name__ == "__main__":
    main()
