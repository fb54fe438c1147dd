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

    sudo .venv/bin/python benchmarks/bench_fleet.py [--sizes 1 3 6 12] [--rules 200] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ovsmgr.fleet.fleetfile import Fleet, load_fleet, load_policies
from ovsmgr.fleet.rollout import run_rollout
from ovsmgr.fleet.store import ROLLOUT_LOCK, FleetStore
from ovsmgr.lab.cluster import StoreCluster
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec
from ovsmgr.policy.generate import generate_policy

LABS = 3


def switch_names(lab: int, bridges: int) -> list[tuple[str, str]]:
    return [(f"s{lab}-{b}", "br0" if b == 0 else f"fb{b}") for b in range(bridges)]


def write_fleet(workdir: Path, labs: list[Lab], size: int, rules: int, variant: int, batch: int) -> Fleet:
    """The first `size` switches, round-robin over the labs, all on policy `variant` (0 or 1)."""
    text = generate_policy(rules, "mixed")
    line = next(row for row in text.splitlines() if "services: [tcp/" in row)
    port = int(line.split("services: [tcp/")[1].split("]")[0])
    texts = [text, text.replace(line, line.replace(f"tcp/{port}]", f"tcp/{port - 1}]"), 1)]
    per_lab = -(-size // LABS)
    chosen = [(lab, name, bridge) for b in range(per_lab) for lab in range(len(labs))
              for name, bridge in switch_names(lab, per_lab)[b:b + 1]][:size]
    rows = []
    for lab, name, bridge in chosen:
        path = workdir / f"{name}-{variant}.yaml"
        path.write_text(texts[variant].replace("bridge: br0", f"bridge: {bridge}", 1))
        rows.append(f"  {name}: {{policy: {path.name}, db: '{labs[lab].db_endpoint}'}}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 6, 12])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    global STORE
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir="/tmp"))
    STORE = StoreCluster(workdir / "store")
    labs = [Lab(f"bf{secrets.token_hex(2)}{i}", workdir / f"lab{i}") for i in range(LABS)]
    try:
        STORE.start()
        for lab in labs:
            lab.up(LabSpec("br0", "netdev", [LabPort("inside", 1), LabPort("outside", 2)], lab.name))
        for size in args.sizes:  # first apply: bridges made, caches filled (not timed)
            rollout_seconds(write_fleet(workdir, labs, size, args.rules, 0, args.batch))
        times: dict[int, list[float]] = {size: [] for size in args.sizes}
        for rep in range(args.repetitions):
            for size in args.sizes:
                times[size].append(rollout_seconds(write_fleet(workdir, labs, size, args.rules, 1 - rep % 2,
                                                               args.batch)))
                rollout_seconds(write_fleet(workdir, labs, size, args.rules, rep % 2, args.batch))
        base = statistics.median(times[min(args.sizes)])
        print(f"load average {os.getloadavg()[0]:.2f}; {args.rules} rules per switch; batch {args.batch}; "
              f"medians of {args.repetitions}")
        print("switches  rollout s  ratio to 1  s per switch")
        for size in args.sizes:
            med = statistics.median(times[size])
            print(f"{size:8d}  {med:9.2f}  {med / base:10.2f}  {med / size:12.2f}")
    finally:
        for lab in labs:
            lab.down()
        STORE.stop()
        shutil.rmtree(workdir, ignore_errors=True)


STORE: StoreCluster
if __name__ == "__main__":
    main()
