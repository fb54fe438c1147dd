"""Reaching one bridge's flow table: an OpenFlow connection, opened after OVSDB made it reachable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ovsmgr.southbound.openflow import SwitchConnection, SwitchFlowTable
from ovsmgr.southbound.target import SwitchTarget


@contextmanager
def flow_table(target: SwitchTarget, bridge: str) -> Iterator[SwitchFlowTable]:
    """The bridge's flow table over a connection of its own, closed afterwards."""
    with SwitchConnection(target.openflow(bridge)) as connection:
        yield SwitchFlowTable(connection)
