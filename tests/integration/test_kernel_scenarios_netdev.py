"""The kernel-test scenario suite on the userspace (netdev) datapath, on this host.

``make kernel-test`` runs tests/kernel/scenarios.py on the kernel datapath in a QEMU
guest. This runs the same suite with ``--datapath netdev``: a private ovsdb-server and
ovs-vswitchd in a network namespace of their own (tests/kernel/netdev.py), the
repository's policies as they are (``datapath: netdev``), the same scenarios, the same
checks. Every scenario must pass and report exactly the facts tests/kernel/expected.py
lists for netdev: the kernel's, except the differences docs/datapaths.md explains.

The scenarios that show a difference between the datapaths run on the DPDK datapath too
(``--datapath dpdk``: the DPDK build of ovs-vswitchd, every port a DPDK af_packet device),
where they must report what expected.py lists for dpdk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovsmgr.lab.instance import DPDK_VSWITCHD, reserve_hugepages
from ovsmgr.lab.spec import LabError
from tests.kernel.expected import expected_facts, scenarios_with_differences
from tests.kernel.scenarios import SCENARIOS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAG = "kt-host:"
TIME_LIMIT = 300.0
"""Each run; about a minute on an idle 2-core machine: generous, CI's machine is shared."""
TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl", "ip",
         "ethtool", "arping", "ping")


def run_suite(datapath: str, only: list[str] | None = None
              ) -> tuple[dict[str, str], dict[str, dict[str, object]], str, float]:
    """(outcome per scenario, facts per scenario, the output, seconds)."""
    if os.geteuid() != 0:
        pytest.skip("the scenario suite needs root (network namespaces, ovs-vswitchd)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/install)")
    started = time.monotonic()
    argv = [sys.executable, "-m", "tests.kernel.scenarios", "--datapath", datapath, "--tag", TAG]
    proc = subprocess.run([*argv, *(["--only", *only] if only else [])], cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    outcomes: dict[str, str] = {}
    facts: dict[str, dict[str, object]] = {}
    for line in proc.stdout.splitlines():
        found = re.match(rf"{re.escape(TAG)} (PASS|FAIL|FACTS) (\S+)(?: \(.*?\):)? ?(.*)$", line)
        if found is None:
            continue
        if found[1] == "FACTS":
            facts[found[2]] = json.loads(found[3])
        else:
            outcomes[found[2]] = found[1]
    return outcomes, facts, output, elapsed


def check_results(datapath: str, names: list[str], only: list[str] | None = None) -> None:
    outcomes, facts, output, elapsed = run_suite(datapath, only)
    results = "\n".join(line for line in output.splitlines() if line.startswith(TAG))
    assert outcomes == dict.fromkeys(names, "PASS"), output[-6000:]
    for name in names:
        assert facts.get(name) == expected_facts(name, datapath), f"{name}:\n{results}"
    assert re.search(rf"^{re.escape(TAG)} {len(names)} passed, 0 failed$", output, re.M), results
    assert elapsed < TIME_LIMIT, f"the {datapath} suite took {elapsed:.0f} s (limit {TIME_LIMIT:.0f} s)"
    print(f"{results}\n{datapath}: {elapsed:.0f} s")


def test_every_scenario_passes_on_netdev_with_the_expected_facts() -> None:
    check_results("netdev", list(SCENARIOS))


def test_the_datapath_differences_on_dpdk() -> None:
    if not os.access(DPDK_VSWITCHD, os.X_OK):
        pytest.skip(f"no DPDK build of ovs-vswitchd at {DPDK_VSWITCHD} (scripts/install)")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the DPDK switch pins its PMD thread to CPU 1: needs 2 CPUs")
    if os.geteuid() == 0:
        try:
            reserve_hugepages()
        except LabError as exc:
            pytest.skip(f"no hugepages for DPDK: {exc}")
    names = scenarios_with_differences()
    check_results("dpdk", names, names)
