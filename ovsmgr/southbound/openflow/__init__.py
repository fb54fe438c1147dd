"""OpenFlow to a bridge, without `ovs-ofctl`: ovsmgr's flows as OpenFlow 1.4 messages.

- `oxm`, `actions`: ovsmgr's flow model to the wire and back, in Open vSwitch's canonical form;
- `messages`: the messages a push needs (flow_mod, bundle control/add, flow statistics, errors);
- `groups`: select groups (group_mod, group descriptions), kept beside the flows as entries;
- `channel`: the exchanges (one atomic bundle, a flow dump) over any channel to a switch;
- `connection`: a short-lived connection to a bridge (apply, plan, status, restore);
- `table`: a bridge's flow table as plan and apply see it.

The controller speaks the same messages over its os-ken datapath connection.
"""

from ovsmgr.southbound.openflow.channel import BundleOp, BundleRefused, Channel, OpenFlowError
from ovsmgr.southbound.openflow.connection import SwitchConnection
from ovsmgr.southbound.openflow.groups import encode_group, is_group
from ovsmgr.southbound.openflow.messages import FlowMod, encode_flow
from ovsmgr.southbound.openflow.table import (
    FlowTable,
    InstalledFlow,
    SwitchFlowTable,
    decode_flow,
    describe,
    is_managed,
)

__all__ = [
    "BundleOp", "BundleRefused", "Channel", "FlowMod", "FlowTable", "InstalledFlow", "OpenFlowError",
    "SwitchConnection", "SwitchFlowTable", "decode_flow", "describe", "encode_flow", "encode_group", "is_group",
    "is_managed",
]
