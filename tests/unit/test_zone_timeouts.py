"""conntrack.timeouts on a switch: refused before anything is pushed where the datapath lacks them."""

from __future__ import annotations

from typing import Any, cast

import pytest

from ovsmgr.policy import load_policy_text
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.settings import ApplyError, check_switch_support, sync_zone_timeouts
from tests.support.policies import two_ports

POLICY = two_ports("conntrack: {zone: 4, timeouts: {udp_first: 7, tcp_established: 600}}")
TARGET = SwitchTarget("unix:/nonexistent/db.sock", "/nonexistent", "/nonexistent")


class Datapaths:
    """The two SwitchDB methods the check and the sync use, over a dict of zone policies."""

    def __init__(self, capabilities: dict[str, str]) -> None:
        self.capabilities = capabilities
        self.zones: dict[tuple[str, int], dict[str, int]] = {}
        self.calls: list[str] = []

    def datapath_capabilities(self, dp_type: str, owner: str) -> dict[str, str]:
        self.calls.append(f"capabilities {dp_type}")
        return self.capabilities

    def set_zone_timeouts(self, dp_type: str, zone: int | None, timeouts: dict[str, int], owner: str) -> None:
        self.calls.append(f"set {dp_type} {zone}")
        self.zones = {} if zone is None else {(dp_type, zone): timeouts}


def _db(fake: Datapaths) -> SwitchDB:
    return cast(SwitchDB, cast(Any, fake))


def test_a_datapath_without_timeout_policies_is_refused_with_a_clear_error() -> None:
    fake = Datapaths({"ct_timeout": "false", "ct_zone": "true"})
    with pytest.raises(ApplyError, match=r"cannot apply conntrack timeout policies .*ct_timeout is false"):
        check_switch_support(_db(fake), load_policy_text(POLICY), TARGET)
    assert fake.zones == {}


def test_a_datapath_that_reports_no_capabilities_is_refused_too() -> None:
    fake = Datapaths({})
    with pytest.raises(ApplyError, match="ct_timeout is not reported"):
        check_switch_support(_db(fake), load_policy_text(POLICY), TARGET)


def test_the_zone_gets_the_policys_timeouts_and_loses_them_with_it() -> None:
    fake = Datapaths({"ct_timeout": "true"})
    policy = load_policy_text(POLICY)
    check_switch_support(_db(fake), policy, TARGET)
    sync_zone_timeouts(_db(fake), policy, TARGET)
    assert fake.zones == {("netdev", 4): {"tcp_established": 600, "udp_first": 7}}
    sync_zone_timeouts(_db(fake), load_policy_text(two_ports("conntrack: {zone: 4}")), TARGET)
    assert fake.zones == {}


def test_the_sync_refuses_too_when_the_controller_writes_settings() -> None:
    fake = Datapaths({"ct_timeout": "false"})
    with pytest.raises(ApplyError, match="ct_timeout is false"):
        sync_zone_timeouts(_db(fake), load_policy_text(POLICY), TARGET)
    assert fake.zones == {}


def test_a_policy_without_timeouts_asks_the_datapath_nothing() -> None:
    fake = Datapaths({})
    check_switch_support(_db(fake), load_policy_text(two_ports("")), TARGET)
    assert fake.calls == []
