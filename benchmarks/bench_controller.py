"""Controller mode: reaction time from an API call until the dataplane obeys, with real packets.

For policies of 100 and 10,000 rules (`generate_policy(N, "mixed")` with a
`blocklist` drop rule on top, referencing an address set), a controller runs
against a lab switch while a probe stream crosses it: UDP datagrams from the
inside host to the outside host every 0.5 ms, each from its own source port, so
each is a new connection the firewall judges (``ovsmgr.lab.probe stream-send``).
Then, repeatedly, the probe's source address is added to the blocklist through
the API, and removed again:

- block: from the API call until the last probe datagram that still passed
  was sent (later ones are all dropped);
- unblock: from the API call until the first datagram that passed was sent.

Times are CLOCK_MONOTONIC, one clock for all namespaces; resolution is the
probe interval. Reported: p50 and p95 per size and direction, the controller's
own time per change (validate, recompile, bundle through ovs-ofctl, state file),
and the 10k/100 ratio of the p95s. Each size gets a fresh lab (no conntrack
entries left over). Needs root.

    sudo .venv/bin/python benchmarks/bench_controller.py [--trials 20] [--sizes 100 10000]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ovsmgr.controller.client import ApiClient
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec
from ovsmgr.policy.generate import generate_policy

OVSMGR = str(Path(sys.executable).parent / "ovsmgr")
PROBE = [sys.executable, "-m", "ovsmgr.lab.probe"]
INSIDE, OUTSIDE = "10.0.0.10", "198.51.100.9"
INTERVAL = 0.0005
SETTLE = 0.3


def bench_policy(rules: int) -> str:
    return generate_policy(rules, "mixed").replace(
        "firewall:\n  default: drop\n  rules:\n",
        "addresses:\n  blocklist: [192.0.2.1]\nfirewall:\n  default: drop\n  rules:\n"
        '    - {name: blocklist, from: inside, src: "@blocklist", action: drop}\n')


@contextmanager
def lab_with_controller(policy: Path) -> Iterator[tuple[Lab, ApiClient]]:
    name = f"b{secrets.token_hex(3)}"
    lab = Lab(name, tempfile.mkdtemp(prefix=f"ovsmgr-{name}-", dir="/tmp"))
    proc = None
    try:
        lab.up(LabSpec("br0", "netdev", [LabPort("inside", 1, f"{INSIDE}/24"),
                                         LabPort("outside", 2, f"{OUTSIDE}/24")], name))
        log = open(lab.dir / "controller.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([OVSMGR, "controller", str(policy), "--db", lab.db_endpoint], stderr=log,
                                stdout=subprocess.DEVNULL)
        paths = ControllerPaths(lab.dir, "br0")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (lab.dir / "controller.log").read_text()
            info = paths.read_info()
            if info and info.get("pid") == proc.pid and ApiClient.for_paths(paths).call("GET", "/v1/status")["connected"]:
                break
            time.sleep(0.2)
        yield lab, ApiClient.for_paths(paths)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


def run_size(rules: int, trials: int, workdir: Path) -> dict[str, Any]:
    policy = workdir / f"bench-{rules}.yaml"
    policy.write_text(bench_policy(rules))
    with lab_with_controller(policy) as (lab, client):
        duration = 10.0 + trials * 2 * (SETTLE + 0.5)  # ended early, once the changes are done
        recv = lab.popen("outside", [*PROBE, "stream-recv", "9000", "--duration", str(duration + 3)],
                         stdout=subprocess.PIPE, text=True)
        assert recv.stdout is not None and "listening" in recv.stdout.readline()
        send = lab.popen("inside", [*PROBE, "stream-send", OUTSIDE, "9000", "--interval", str(INTERVAL),
                                    "--duration", str(duration)], stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        calls: list[tuple[str, float, float]] = []
        for _ in range(trials):
            for verb in ("add", "remove"):
                started = time.monotonic()
                result = client.call("POST", f"/v1/sets/blocklist/{verb}", {"addresses": [INSIDE]})
                calls.append((verb, started, result["seconds"]))
                time.sleep(SETTLE)
        send.terminate()
        send.wait(30)
        time.sleep(0.2)
        recv.terminate()
        out, _ = recv.communicate(timeout=60)
    received = sorted(json.loads(line)["sent"] for line in out.splitlines() if '"seq"' in line)
    return summarise(rules, calls, received)


def summarise(rules: int, calls: list[tuple[str, float, float]], sent_times: list[float]) -> dict[str, Any]:
    block, unblock = [], []
    for index, (verb, started, _) in enumerate(calls):
        until = calls[index + 1][1] if index + 1 < len(calls) else started + SETTLE - 0.05
        window = [t for t in sent_times if started <= t < until]
        if verb == "add":
            block.append((max(window) - started) if window else 0.0)
        else:
            assert window, (f"{rules} rules: no probe passed after an unblock at {started:.3f} "
                            f"(received {len(sent_times)}, {sent_times[:1]}..{sent_times[-1:]}; calls {calls[:3]})")
            unblock.append(min(window) - started)
    own = [seconds for _, _, seconds in calls]
    return {"rules": rules, "block": stats(block), "unblock": stats(unblock), "both": stats(block + unblock),
            "controller": stats(own)}


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1), "n": len(ordered)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ovsmgr-bench-controller-"))
    results = [run_size(n, args.trials, workdir) for n in args.sizes]
    print(f"{'rules':>7}  {'direction':<10} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}  (n)")
    for result in results:
        for key in ("block", "unblock", "both", "controller"):
            s = result[key]
            print(f"{result['rules']:>7}  {key:<10} {s['p50_ms']:>7} {s['p95_ms']:>7} {s['max_ms']:>7}  ({s['n']})")
    if len(results) >= 2:
        low, high = results[0]["both"]["p95_ms"], results[-1]["both"]["p95_ms"]
        print(f"p95 ratio {results[-1]['rules']}/{results[0]['rules']} rules: {high / low:.2f}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
