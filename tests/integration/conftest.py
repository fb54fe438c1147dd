"""Fixtures for tests against a real ovs-vswitchd in lab namespaces (root only)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest

from ovsmgr.lab.ovs import Datapath, Lab, LabError, LabPort, LabSpec

TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-ofctl", "ovs-appctl", "ip",
         "ethtool", "sysctl")

# Two hosts in different subnets: they reach each other only through the lab's
# on-link default routes, which is what NAT/firewall policies rely on.
TWO_PORTS = (LabPort("lan0", 1, "10.0.0.10/24"), LabPort("wan0", 2, "192.168.1.10/24"))

LabFactory = Callable[..., Lab]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, ovs-vswitchd)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install -y openvswitch-switch ethtool)"
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Remember whether the test body failed, so the fixture can keep the lab's logs."""
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    """``make(ports=TWO_PORTS, datapath="netdev", bridge="br0", up=True) -> Lab``.

    Each lab gets a unique name (``t<hex>``) and its own short directory under
    /tmp (unix socket paths are limited to 107 bytes). Every lab made is taken
    down afterwards, whatever the test did; a failed test keeps the directory
    (with the OVS logs) and says where it is.
    """
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(ports: tuple[LabPort, ...] | list[LabPort] = TWO_PORTS, datapath: Datapath = "netdev",
             bridge: str = "br0", up: bool = True) -> Lab:
        name = f"t{secrets.token_hex(3)}"
        lab = Lab(name, tempfile.mkdtemp(prefix=f"ovsmgr-{name}-", dir="/tmp"))
        labs.append(lab)
        if up:
            lab.up(LabSpec(bridge, datapath, list(ports), name))
        return lab

    yield make
    errors: list[str] = []
    for lab in labs:
        try:
            lab.down()
        except LabError as exc:
            errors.append(str(exc))
        if request.node.stash.get(_FAILED, False):
            print(f"lab {lab.name}: logs kept in {lab.dir}")
        else:
            shutil.rmtree(lab.dir, ignore_errors=True)
    assert not errors, f"lab teardown failed: {errors}"
