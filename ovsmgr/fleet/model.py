"""The fleet file (docs/fleet.md) as frozen pydantic models: shape only.

What needs more than one value (canary names that must be switches, unique datapath ids,
endpoints that must use TLS) is checked by `ovsmgr.fleet.fleetfile`, and each switch's policy
by the policy front end itself.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SwitchName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")]
"""A fleet switch's name: it names the switch's rows in the store, its lab and its state directory."""
Endpoint = Annotated[str, Field(min_length=5, max_length=200)]
"""`ssl:HOST:PORT` or `unix:PATH` (plain `tcp:` is refused by the fleet checks, with a reason)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Tls(_Frozen):
    """ovsmgr's own identity on every TLS connection (store, switches, controllers)."""

    private_key: str
    certificate: str
    ca_cert: str = Field(description="PEM file with the CA certificate(s) peers must be signed by.")


class Rollout(_Frozen):
    canary: list[SwitchName] = Field(default_factory=list, description="Switches applied first, one by one.")
    batch: Annotated[int, Field(ge=1, le=10000)] = Field(default=1, description="Switches applied together after the canaries.")
    stop_on_failure: bool = Field(default=True, description="Stop at the first switch that fails; else skip it.")
    confirm: Annotated[int, Field(ge=1, le=3600)] | None = Field(
        default=None, description="Seconds: each switch rolls back by itself unless its health is confirmed in time.")
    timeout: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=60, description="Seconds a switch may take to apply before it counts as failed.")


class FleetSwitch(_Frozen):
    policy: Annotated[list[str], Field(min_length=1)] | str = Field(
        description="Policy files (merged in this order), relative to the fleet file.")
    datapath_id: Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{1,16}$")] | None = None
    db: Endpoint | None = Field(default=None, description="The switch's OVSDB: ssl:HOST:PORT or unix:PATH.")
    openflow: Endpoint | None = Field(
        default=None, description="The bridge's passive OpenFlow listener (pssl: on the switch): ssl:HOST:PORT.")
    controllers: list[Endpoint] | None = Field(
        default=None, description="Controllers that serve this switch (ssl:HOST:PORT); default: the fleet's.")
    group: SwitchName | None = Field(
        default=None, description="The fleet controllers that serve it: those run with --group GROUP "
                                  "(default: those run without --group).")
    agent: bool = Field(
        default=False, description="Served by `ovsmgr agent --switch NAME` on its own host, never by fleet controllers.")


class FleetFile(_Frozen):
    version: Literal[1]
    store: Annotated[list[Endpoint], Field(min_length=1)] | None = Field(
        default=None, description="The clustered OVSDB store's members (ssl:HOST:PORT); a fleet lab provides its own.")
    tls: Tls | None = None
    state_dir: str | None = Field(
        default=None, description="Where each switch's applied record is kept (a directory per switch), relative "
        "to the fleet file; default $OVSMGR_STATE_DIR/fleet or /var/lib/ovsmgr/fleet.")
    rollout: Rollout = Field(default_factory=Rollout)
    controllers: list[Endpoint] = Field(
        default_factory=list, description="Controllers of every switch (ssl:HOST:PORT); none: ovsmgr pushes.")
    switches: Annotated[dict[SwitchName, FleetSwitch], Field(min_length=1)]


ModelPath = tuple[str | int, ...]
SECTIONS: dict[ModelPath, type[BaseModel]] = {(): FleetFile, ("tls",): Tls, ("rollout",): Rollout}
