"""The policy language (see docs/policy.md) as frozen pydantic models.

These models check shape: keys, types and enumerations. Meaning (names that
must exist, prefixes that must parse, rules that shadow each other) is checked
by `ovsmgr.policy.resolve`, which also turns this model into the resolved form
the compiler consumes. The JSON Schema that editors use is generated from here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")]
"""Names of zones, ports, sets, services and rules: identifiers an operator can type and grep."""

AddressList = Annotated[
    str | list[str],
    Field(description='An address, a prefix, "@set", or a list of them.'),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)


class Port(_Frozen):
    """A bridge port the policy speaks of, by the OpenFlow port number it must have."""

    ofport: Annotated[int, Field(ge=1, le=65279, description="OpenFlow port number (ofport_request).")]
    interface: str | None = Field(
        default=None, description="Interface ovsmgr adds to the bridge under this port's name."
    )
    type: Literal["system", "internal", "dpdk", "afxdp", "tap"] | None = Field(
        default=None, description="OVS interface type; system when omitted."
    )
    devargs: str | None = Field(default=None, description="DPDK device arguments (type: dpdk).")


class Switch(_Frozen):
    """The bridge this policy describes and the ports it speaks of."""

    bridge: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$", description="OVS bridge name.")]
    datapath: Literal["system", "netdev", "dpdk"] = Field(
        default="system", description="system: kernel datapath; netdev: userspace; dpdk: userspace with DPDK."
    )
    fail_mode: Literal["secure", "standalone"] = Field(
        default="secure", description="standalone fails open (a warning): without a controller OVS switches all."
    )
    forwarding: Literal["ports", "normal"] = Field(
        default="ports", description="ports: the static links below; normal: OVS NORMAL (MAC learning)."
    )
    ports: dict[Name, Port] = Field(default_factory=dict, description="Bridge ports by name.")
    links: list[Annotated[list[Name], Field(min_length=2, max_length=2)]] = Field(
        default_factory=list,
        description="forwarding: ports only; traffic in one port of a pair leaves by the other.",
    )
    mac: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")] | None = Field(
        default=None,
        description="MAC the switch answers ARP with for NAT-owned addresses (default: derived from the bridge name).",
    )


class Zone(_Frozen):
    """A named group of ports; rules speak of zones, not ports."""

    ports: list[Name] = Field(default_factory=list, description="The ports of the zone (at least one).")
    networks: list[str] = Field(
        default_factory=list,
        description="Prefixes behind the zone; with forwarding: normal they decide the `to` zone.",
    )
    vlan: Annotated[int, Field(ge=1, le=4094)] | None = Field(
        default=None,
        description="The zone is this VLAN on its ports (802.1Q id 1..4094; forwarding: ports); without it, "
        "untagged frames. A port may be in several zones, one per VLAN.",
    )


Action = Literal["allow", "drop", "reject"]


class FirewallRule(_Frozen):
    """One firewall rule; the first rule that matches a new connection decides."""

    name: Name
    from_: Name = Field(alias="from", description="Zone the packet enters from.")
    to: Name | None = Field(default=None, description="Zone the packet leaves by.")
    src: AddressList | None = None
    dst: AddressList | None = None
    services: list[str] | None = Field(
        default=None, description="Service names or literal proto/port items; omitted: any."
    )
    action: Action = Field(description="allow (stateful unless stateful: false), drop (silently) or reject.")
    stateful: bool = Field(default=True, description="allow only: replies and related packets pass by themselves.")
    log: bool = Field(default=False, description="Log each match (rate-limited).")
    helper: Literal["ftp", "tftp"] | None = Field(
        default=None,
        description="Conntrack helper (ALG) for the connections this stateful allow rule opens: ftp (tcp "
                    "services) or tftp (udp services); their related data connections pass, also through NAT.",
    )
    limit: str | None = Field(
        default=None, description="Packets of the rule above this rate are dropped (an OpenFlow meter): "
                                  "N/s or N/m packets, Nkbit/s or Nmbit/s.")
    enabled: bool = Field(default=True, description="A disabled rule is kept but compiles to nothing.")
    shadow: bool = Field(default=False, description="Not enforced: matches are counted and logged as if it were; "
                                                    "the rules below it decide.")
    description: str | None = None


class Firewall(_Frozen):
    default: Action = Field(default="drop", description="What happens to new connections no rule matches.")
    rules: list[FirewallRule] = Field(default_factory=list)


PortNumber = Annotated[int, Field(ge=1, le=65535)]


class Backend(_Frozen):
    """One server of a load-balanced dnat rule."""

    address: str = Field(description="The server's address, of the IP version the rule matches.")
    port: PortNumber | None = Field(default=None, description="Its port; omitted: the port the connection was made to.")
    weight: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=1, description="Its share of new connections, relative to the other backends' weights."
    )


class HealthCheck(_Frozen):
    """Extension, controller mode: TCP connects to each backend; one that fails `failures` times in a
    row gets no new connections until a connect succeeds again."""

    interval: Annotated[int, Field(ge=1, le=3600)] = Field(default=5, description="Seconds between checks.")
    timeout: Annotated[int, Field(ge=1, le=60)] = Field(default=2, description="Seconds a connect may take.")
    failures: Annotated[int, Field(ge=1, le=100)] = Field(
        default=2, description="Failed checks in a row that take a backend out."
    )


class NatRule(_Frozen):
    """Address translation of connections the firewall allows; allows nothing by itself."""

    name: Name
    type: Literal["snat", "dnat", "static"] = Field(
        description="snat: rewrite the source; dnat: the destination; static: 1:1 both ways."
    )
    from_: Name = Field(alias="from", description="The zone connections come from (static: the inside zone).")
    to: Name | None = Field(default=None, description="The zone they leave by (static: the outside zone).")
    src: AddressList | None = None
    dst: AddressList | None = None
    services: list[str] | None = None
    translate_to: str | None = Field(
        default=None, description="An address or a range a.b.c.d-a.b.c.e (a dnat with backends has none)."
    )
    backends: list[Backend] | None = Field(
        default=None, description="dnat: servers to spread connections over by weight, instead of translate_to."
    )
    health_check: HealthCheck | None = Field(
        default=None, description="dnat with backends, controller mode: take a backend that fails TCP connects out."
    )
    ports: int | str | None = Field(
        default=None, description="snat: source port range low-high (or one port)."
    )
    port: PortNumber | None = Field(default=None, description="dnat: new destination port.")
    limit: str | None = Field(
        default=None, description="New connections the rule translates above this rate are dropped (an "
                                  "OpenFlow meter on their first packets): N/s or N/m.")
    enabled: bool = True
    description: str | None = None


TIMEOUT_KEYS = (
    "tcp_syn_sent", "tcp_syn_recv", "tcp_established", "tcp_fin_wait", "tcp_close_wait", "tcp_last_ack",
    "tcp_time_wait", "tcp_close", "tcp_syn_sent2", "tcp_retransmit", "tcp_unack", "udp_first", "udp_single",
    "udp_multiple", "icmp_first", "icmp_reply",
)
"""The keys of OVS's CT_Timeout_Policy, spelled as OVS spells them (docs/datapaths.md says which
datapath uses which)."""

Seconds = Annotated[int, Field(ge=1, le=4294967295)]


class ConntrackTimeouts(_Frozen):
    """The zone's conntrack timeout policy (OVS CT_Timeout_Policy), in seconds; unset keys keep the
    datapath's defaults."""

    tcp_syn_sent: Seconds | None = None
    tcp_syn_recv: Seconds | None = None
    tcp_established: Seconds | None = None
    tcp_fin_wait: Seconds | None = None
    tcp_close_wait: Seconds | None = None
    tcp_last_ack: Seconds | None = None
    tcp_time_wait: Seconds | None = None
    tcp_close: Seconds | None = None
    tcp_syn_sent2: Seconds | None = None
    tcp_retransmit: Seconds | None = None
    tcp_unack: Seconds | None = None
    udp_first: Seconds | None = None
    udp_single: Seconds | None = None
    udp_multiple: Seconds | None = None
    icmp_first: Seconds | None = None
    icmp_reply: Seconds | None = None

    def as_dict(self) -> dict[str, int]:
        """The keys that are set, in OVS's order."""
        return {key: value for key in TIMEOUT_KEYS if (value := getattr(self, key)) is not None}


class Conntrack(_Frozen):
    zone: Annotated[int, Field(ge=1, le=65535)] = Field(default=1, description="Conntrack zone of this bridge.")
    max_connections: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Per-zone limit.")
    invalid: Literal["drop", "allow"] = Field(default="drop", description="What happens to ct_state=+inv packets.")
    cut_on_rule_removal: bool = Field(
        default=True, description="Established connections the new policy denies stop passing."
    )
    timeouts: ConntrackTimeouts | None = Field(
        default=None, description="The zone's conntrack timeout policy in seconds (OVS CT_Timeout_Policy)."
    )
    nat_zone: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="The second zone, where a connection a dnat rule translated is translated again "
        "by an snat rule (default: zone + 1, or zone - 1 for 65535)."
    )


class Policy(_Frozen):
    """One bridge's policy, after several files have been merged by name."""

    version: Literal[1]
    switch: Switch
    zones: dict[Name, Zone] = Field(default_factory=dict)
    addresses: dict[Name, list[str]] = Field(default_factory=dict)
    services: dict[Name, list[str]] = Field(default_factory=dict)
    firewall: Firewall = Field(default_factory=Firewall)
    nat: list[NatRule] = Field(default_factory=list)
    conntrack: Conntrack = Field(default_factory=Conntrack)


def policy_json_schema() -> dict[str, object]:
    schema = Policy.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://ovsmgr.dev/schema/ovsmgr-policy.schema.json"
    schema["title"] = "ovsmgr policy (version 1)"
    return schema
