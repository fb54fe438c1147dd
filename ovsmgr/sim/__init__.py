"""The simulator: packets through a compiled flow set, with a model of conntrack.

`simulate(flowset, packet, conntrack, ports)` runs one packet table by table and
returns a `Trace` (steps, verdict, deciding rule, output ports, translated packet,
and the conntrack state after it). `SimulatedSwitch.from_policy` and
`Conversation` run whole conversations through a compiled policy; `reference.decide`
evaluates a policy's first-match meaning directly; `scenarios` runs scenario tables.
"""

from ovsmgr.sim.conntrack import (
    Connection,
    ConnKey,
    Conntrack,
    CtRequest,
    CtResult,
    format_ct_state,
    run_ct,
)
from ovsmgr.sim.engine import MAX_TABLE_VISITS, Pipeline, run_packet, simulate
from ovsmgr.sim.flowtable import FlowTables, Hit
from ovsmgr.sim.forwarding import NormalForwarding, normal_forwarding
from ovsmgr.sim.packet import (
    Inner,
    Packet,
    PacketSpecError,
    format_packet,
    icmp_error_for,
    packet_fields,
    parse_packet,
    reply_of,
)
from ovsmgr.sim.reference import Decision, decide
from ovsmgr.sim.scenarios import ScenarioError, ScenarioTable, load_table, run_scenario
from ovsmgr.sim.session import Conversation, SimulatedSwitch, SwitchState
from ovsmgr.sim.trace import Delivery, Step, Trace, Verdict, format_trace

__all__ = [
    "MAX_TABLE_VISITS",
    "ConnKey",
    "Connection",
    "Conntrack",
    "Conversation",
    "CtRequest",
    "CtResult",
    "Decision",
    "Delivery",
    "FlowTables",
    "Hit",
    "Inner",
    "NormalForwarding",
    "Packet",
    "PacketSpecError",
    "Pipeline",
    "ScenarioError",
    "ScenarioTable",
    "SimulatedSwitch",
    "Step",
    "SwitchState",
    "Trace",
    "Verdict",
    "decide",
    "format_ct_state",
    "format_packet",
    "format_trace",
    "icmp_error_for",
    "load_table",
    "normal_forwarding",
    "packet_fields",
    "parse_packet",
    "reply_of",
    "run_ct",
    "run_packet",
    "run_scenario",
    "simulate",
]
