"""`ovsmgr apply` as a whole process, against `ovsmgr check` and a raw `ovs-ofctl --bundle`.

For generated policies (`generate_policy(N, "mixed")`, default 10k and 100k rules), on a
lab switch of its own (netdev datapath), three comparisons, each side timed as a whole
process (Python's start, imports, reading the file included), the two sides of a pair
run one after the other with the order swapped every repetition, medians reported:

- full: `ovsmgr apply POLICY` onto an empty flow table with no state and no compile cache
  (cold), and with the compile cache of an earlier apply (warm), against
  `ovs-ofctl -O OpenFlow14 --bundle add-flows MGMT FLOWS`, FLOWS being `ovsmgr compile
  POLICY` (the same flows). Before each side the table is emptied and ovs-vswitchd left
  to digest that, untimed (OVS 3.1 frees deleted flows in its RCU thread, and the next
  push would wait for it; benchmarks/README.md);
- one rule changed: POLICY and a copy with one rule's port changed are applied in turn,
  so every apply changes one rule (the compile cache holds the other); against
  `ovsmgr check` of the same file, and against a raw bundle of exactly the changed flows.

Needs root. `--profile` runs cProfile over one one-rule apply in-process instead.

    sudo .venv/bin/python benchmarks/bench_apply.py [--sizes 10000 100000] [--repetitions 5]
    sudo .venv/bin/python benchmarks/bench_apply.py --profile 10000
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ovsmgr.compiler import compile_policy
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec
from ovsmgr.policy import load_policy
from ovsmgr.policy.generate import generate_policy, one_rule_changed
from ovsmgr.render.ofctl import bundle_text
from ovsmgr.southbound.openflow import InstalledFlow, decode_flow
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.apply import apply_policy
from ovsmgr.switch.plan import desired_flows, make_plan

OVSMGR = str(Path(sys.executable).parent / "ovsmgr")
OFCTL = ["ovs-ofctl", "-O", "OpenFlow14"]


@contextmanager
def bench_lab() -> Iterator[Lab]:
    name = f"b{secrets.token_hex(3)}"
    lab = Lab(name, tempfile.mkdtemp(prefix=f"bench-apply-{name}-", dir="/run"))
    try:
        lab.up(LabSpec("br0", "netdev", [LabPort("inside", 1), LabPort("outside", 2)], name))
        yield lab
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


class Bench:
    def __init__(self, lab: Lab, workdir: Path):
        self.lab, self.workdir = lab, workdir
        self.target = SwitchTarget(lab.db_endpoint, lab.dir, lab.dir, lab=lab.name)
        self.mgmt = self.target.openflow("br0")
        self.db = ["--db", lab.db_endpoint]

    def run(self, argv: Sequence[str], input: str | None = None) -> float:
        """Seconds the command took, as a whole process; it must succeed."""
        start = time.perf_counter()
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
        took = time.perf_counter() - start
        if proc.returncode not in (0, 2):  # plan/check's 2 is not a failure
            raise RuntimeError(f"{' '.join(argv[:3])}: {proc.stderr.strip() or proc.stdout.strip()}")
        return took

    def clear(self, cold: bool) -> None:
        """Empty the flow table and wait for ovs-vswitchd to digest it; `cold`: no state either."""
        subprocess.run([*OFCTL, "del-flows", self.mgmt], check=True, capture_output=True)
        if cold:
            for path in self.lab.dir.glob("ovsmgr-br0.*"):
                path.unlink()
        last, still = self._urcu_cpu(), 0
        while still < 6:
            time.sleep(0.25)
            now = self._urcu_cpu()
            still = still + 1 if now == last else 0
            last = now

    def _urcu_cpu(self) -> int:
        pid = self.lab.status()["daemons"]["ovs-vswitchd"]["pid"]
        for task in Path(f"/proc/{pid}/task").iterdir():
            if (task / "comm").read_text().startswith("urcu"):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                return int(fields[11]) + int(fields[12])
        raise RuntimeError("ovs-vswitchd has no urcu thread")


def policies(workdir: Path, rules: int) -> tuple[Path, Path]:
    """The generated policy, and a copy with one rule's TCP port changed."""
    text = generate_policy(rules, "mixed")
    changed = one_rule_changed(text)
    a, b = workdir / f"p{rules}.yaml", workdir / f"p{rules}-changed.yaml"
    a.write_text(text)
    b.write_text(changed)
    return a, b


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def full_apply(bench: Bench, policy: Path, repetitions: int) -> dict[str, float]:
    flows = bench.workdir / "flows.txt"
    with open(flows, "w") as out:
        subprocess.run([OVSMGR, "compile", str(policy)], stdout=out, check=True)
    times: dict[str, list[float]] = {"cold": [], "warm": [], "raw": []}
    for rep in range(repetitions):
        order = ["cold", "warm", "raw"] if rep % 2 == 0 else ["raw", "warm", "cold"]
        for side in order:
            bench.clear(cold=side == "cold")
            if side == "raw":
                times[side].append(bench.run([*OFCTL, "--bundle", "add-flows", bench.mgmt, str(flows)]))
            else:
                times[side].append(bench.run([OVSMGR, "apply", str(policy), *bench.db]))
    return {k: median(v) for k, v in times.items()}


def one_rule(bench: Bench, a: Path, b: Path, repetitions: int) -> dict[str, float]:
    bench.clear(cold=True)
    bench.run([OVSMGR, "apply", str(a), *bench.db])
    bench.run([OVSMGR, "apply", str(b), *bench.db])  # the cache now holds both versions' rules
    changes = changed_flows(a, b)
    times: dict[str, list[float]] = {"apply": [], "check": [], "raw": []}
    current = b
    for rep in range(repetitions):
        nxt = a if current == b else b
        sides = ["apply", "check"] if rep % 2 == 0 else ["check", "apply"]
        for side in sides:
            if side == "apply":
                times["apply"].append(bench.run([OVSMGR, "apply", str(nxt), *bench.db]))
            else:
                times["check"].append(bench.run([OVSMGR, "check", str(nxt)]))
        raw = changes[(current, nxt)]
        times["raw"].append(_raw_change(bench, raw))
        current = nxt
    return {k: median(v) for k, v in times.items()}


def _raw_change(bench: Bench, change: tuple[str, str]) -> float:
    """The raw bundle of just the changed flows, and back (untimed), so the table stays ovsmgr's."""
    forward, back = change
    took = bench.run([*OFCTL, "--bundle", "add-flows", bench.mgmt, "-"], input=forward)
    bench.run([*OFCTL, "--bundle", "add-flows", bench.mgmt, "-"], input=back)
    return took


def changed_flows(a: Path, b: Path) -> dict[tuple[Path, Path], tuple[str, str]]:
    """ovs-ofctl bundle text of the change a -> b and b -> a (and each one's way back)."""
    flows = {p: desired_flows(compile_policy(load_policy([p])).flows) for p in (a, b)}

    def text(old: Path, new: Path) -> str:
        plan = make_plan([InstalledFlow(mod, 0, 0) for mod in flows[old].values()], flows[new])
        adds = [decode_flow(m) for m in [*plan.add, *(n for _, n in plan.change)]]
        return bundle_text([f for f in adds if f], [f for s in plan.delete if (f := decode_flow(s.mod))])

    return {(a, b): (text(a, b), text(b, a)), (b, a): (text(b, a), text(a, b))}


def profile(bench: Bench, a: Path, b: Path) -> None:
    bench.clear(cold=True)
    apply_policy(load_policy([a]), bench.target)
    policy = load_policy([b])
    profiler = cProfile.Profile()
    profiler.runcall(apply_policy, policy, bench.target)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--profile", type=int, metavar="RULES")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ovsmgr-bench-apply-"))
    try:
        with bench_lab() as lab:
            bench = Bench(lab, workdir)
            if args.profile:
                profile(bench, *policies(workdir, args.profile))
                return 0
            print(f"load average before: {os.getloadavg()[0]:.2f}")
            print("| rules | full apply cold s | warm s | raw bundle s | cold / raw | warm / raw | "
                  "one-rule apply s | check s | raw change s | apply / check | apply / raw |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for rules in args.sizes:
                a, b = policies(workdir, rules)
                full = full_apply(bench, a, args.repetitions)
                one = one_rule(bench, a, b, args.repetitions)
                print(f"| {rules:,} | {full['cold']:.2f} | {full['warm']:.2f} | {full['raw']:.2f} | "
                      f"{full['cold'] / full['raw']:.1f}x | {full['warm'] / full['raw']:.1f}x | "
                      f"{one['apply']:.2f} | {one['check']:.2f} | {one['raw']:.3f} | "
                      f"{one['apply'] / one['check']:.2f}x | {one['apply'] / one['raw']:.0f}x |", flush=True)
            print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
