"""The os-ken application: thin event handlers that call controller mode's own functions.

A connection `Hooks.switch_allowed` does not accept (with a `unix:` listen
target, anything that did not come through the relay) is closed as soon as
os-ken sees it, before the handshake, and nothing it sends reaches the hooks;
so is, on a TLS listener (`Hooks.tls_listener`), one without a certificate the
CA verified (os-ken's handshake already refuses those: this keeps it so).
Switch (dis)connections go to `Hooks.switch_state` (which reconciles the flows
in a worker thread, never in os-ken's event thread); packet-ins to
`Hooks.packet_in`, which answers with the frames to send; flow statistics are
requested when metrics are scraped and handed to `Hooks.flow_stats`. Each connected
switch has a `DatapathChannel` (`Hooks.switch_state` gets it): the replies and errors
answering its own requests (bundles, flow and group dumps) go there, not to the hooks.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, ClassVar, Protocol

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    DEAD_DISPATCHER,
    HANDSHAKE_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.ofproto import ofproto_v1_3

from ovsmgr.controller import ofchannel

log = logging.getLogger("ovsmgr.controller")


class Hooks(Protocol):
    tls_listener: bool

    def attach(self, app: OvsmgrApp) -> None: ...

    def switch_allowed(self, address: Any) -> bool: ...

    def switch_state(self, dpid: int, channel: ofchannel.DatapathChannel | None) -> None:
        """The switch connected (with its channel) or went (None)."""

    def packet_in(self, dpid: int, userdata: bytes | None, metadata: bytes | None,
                  frame: bytes) -> tuple[int, bytes] | None: ...

    def flow_stats(self, dpid: int, totals: dict[int, list[int]]) -> None: ...


class OvsmgrApp(app_manager.OSKenApp):
    OFP_VERSIONS: ClassVar[list[int]] = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, ovsmgr_hooks: Hooks, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hooks = ovsmgr_hooks
        self.datapaths: dict[int, Any] = {}
        self.channels: dict[int, ofchannel.DatapathChannel] = {}
        self.partial: dict[int, dict[int, list[int]]] = {}
        self.hooks.attach(self)

    @set_ev_cls(ofp_event.EventOFPStateChange, [HANDSHAKE_DISPATCHER, MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        dp = ev.datapath
        dpid: int | None = dp.id
        if ev.state != DEAD_DISPATCHER:
            refusal = self._refusal(dp)
            if refusal is not None:
                if ev.state == HANDSHAKE_DISPATCHER:
                    log.warning("OpenFlow connection from %s refused: %s", dp.address, refusal)
                ofchannel.refuse(dp)
                return
        if ev.state == MAIN_DISPATCHER and dpid is not None:
            ofchannel.set_packet_in_format(dp)
            old = self.channels.pop(dpid, None)
            if old is not None:
                old.close()
            self.datapaths[dpid] = dp
            self.channels[dpid] = channel = ofchannel.DatapathChannel(dp)
            self.hooks.switch_state(dpid, channel)
        elif dpid is not None and self.datapaths.get(dpid) is dp:
            del self.datapaths[dpid]
            self.channels.pop(dpid).close()
            self.hooks.switch_state(dpid, None)

    @set_ev_cls([ofp_event.EventOFPErrorMsg, ofp_event.EventOFPBarrierReply, ofp_event.EventONFBundleCtrlMsg,
                 ofp_event.EventOFPExperimenter, ofp_event.EventOFPMeterConfigStatsReply,
                 ofp_event.EventOFPMeterStatsReply, ofp_event.EventOFPGroupDescStatsReply], MAIN_DISPATCHER)
    def _reply(self, ev: Any) -> None:
        """Replies and errors for a `DatapathChannel`'s own requests."""
        if self._ours(ev.msg.datapath):
            self.channels[ev.msg.datapath.id].offer(ev.msg)

    @set_ev_cls(ofp_event.EventNXTPacketIn2, MAIN_DISPATCHER)
    def _packet_in(self, ev: Any) -> None:
        msg = ev.msg
        if not self._ours(msg.datapath):
            return
        answer = self.hooks.packet_in(msg.datapath.id, msg.userdata, msg.metadata, msg.data or b"")
        if answer is not None:
            port, frame = answer
            ofchannel.packet_out(msg.datapath, port, frame)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev: Any) -> None:
        if not self._ours(ev.msg.datapath) or self.channels[ev.msg.datapath.id].offer(ev.msg):
            return
        dpid = ev.msg.datapath.id
        totals = self.partial.setdefault(dpid, {})
        ofchannel.add_stats(totals, ev.msg.body)
        if not ofchannel.more_parts(ev.msg):
            self.hooks.flow_stats(dpid, self.partial.pop(dpid))

    def _refusal(self, dp: Any) -> str | None:
        if not self.hooks.switch_allowed(dp.address):
            return "not through the controller's relay"
        if self.hooks.tls_listener and not _verified_certificate(dp.socket):
            return "no TLS certificate verified by the CA"
        return None

    def _ours(self, dp: Any) -> bool:
        """A message from a connection that is the registered one for its datapath id (not one
        refused, or replaced by a newer connection)."""
        return dp.id is not None and self.datapaths.get(dp.id) is dp

    def request_stats(self, dpid: int) -> bool:
        """Ask the switch for our flows' statistics (the reply goes to `Hooks.flow_stats`).
        On demand (a metrics scrape), not polled: parsing 10,000 flows' statistics takes the
        interpreter for long enough to delay runtime changes."""
        dp = self.datapaths.get(dpid)
        if dp is None:
            return False
        ofchannel.request_flow_stats(dp)
        return True


def _verified_certificate(sock: Any) -> bool:
    """Whether a connection is TLS with a peer certificate the handshake verified (`getpeercert`
    is empty when nothing was verified)."""
    try:
        return isinstance(sock, ssl.SSLSocket) and bool(sock.getpeercert())
    except (OSError, ValueError):
        return False
