"""Conntrack helpers (`helper: ftp|tftp`) in the simulator: the data connections a helper expects
pass as related, committed under the control connection's rule and translated like it; nothing
else does (ovsmgr/sim/helpers.py says what the simulator assumes a helper saw)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ovsmgr.policy import load_policy_text
from ovsmgr.sim import Conversation, SimulatedSwitch

POLICY = Path(__file__).resolve().parents[2] / "policies" / "alg.yaml"
CLIENT, SERVER, PUBLIC = "10.0.0.5", "198.51.100.9", "200.200.200.200"


def _addr(text: str) -> int:
    return int(ipaddress.ip_address(text))


def _conversation(nat: bool = True) -> Conversation:
    text = POLICY.read_text()
    if not nat:
        text = text[:text.index("nat:\n")] + text[text.index("conntrack:"):]
    return Conversation(SimulatedSwitch.from_policy(load_policy_text(text)))


def _control(conversation: Conversation, service: str = "tcp", port: int = 21) -> None:
    out = conversation.send("inside", f"{service},nw_src={CLIENT},nw_dst={SERVER},tp_src=40000,tp_dst={port}")
    assert (out.verdict, out.output) == ("allow", ("outside",))
    back = conversation.reply()
    assert back.verdict == "allow"


@pytest.mark.parametrize("nat", [True, False], ids=["snat", "plain"])
def test_ftp_passive_data_connection_passes_as_related(nat: bool) -> None:
    conversation = _conversation(nat)
    _control(conversation)
    data = conversation.send("inside", f"tcp,nw_src={CLIENT},nw_dst={SERVER},tp_src=40001,tp_dst=50000")
    assert (data.verdict, data.rule, data.output) == ("allow", "ftp-out", ("outside",))
    assert data.packet.src == _addr(PUBLIC if nat else CLIENT)
    assert any("expected by the ftp helper" in e for s in data.steps for e in s.events)
    answer = conversation.reply()
    assert (answer.verdict, answer.output) == ("allow", ("inside",))
    more = conversation.send("inside", f"tcp,nw_src={CLIENT},nw_dst={SERVER},tp_src=40001,tp_dst=50000,"
                                       "tcp_flags=ack")
    assert more.verdict == "allow"


@pytest.mark.parametrize("nat", [True, False], ids=["snat", "plain"])
def test_ftp_active_data_connection_from_the_server_passes(nat: bool) -> None:
    conversation = _conversation(nat)
    _control(conversation)
    seen_as = PUBLIC if nat else CLIENT
    data = conversation.send("outside", f"tcp,nw_src={SERVER},nw_dst={seen_as},tp_src=20,tp_dst=40002")
    assert (data.verdict, data.rule, data.output) == ("allow", "ftp-out", ("inside",))
    assert data.packet.dst == _addr(CLIENT)
    assert conversation.reply().output == ("outside",)


def test_tftp_answer_from_a_new_server_port_passes() -> None:
    conversation = _conversation()
    out = conversation.send("inside", f"udp,nw_src={CLIENT},nw_dst={SERVER},tp_src=40000,tp_dst=69")
    assert out.verdict == "allow"
    data = conversation.send("outside", f"udp,nw_src={SERVER},nw_dst={PUBLIC},tp_src=51000,tp_dst=40000")
    assert (data.verdict, data.rule, data.output) == ("allow", "tftp-out", ("inside",))
    ack = conversation.reply()
    assert (ack.verdict, ack.output) == ("allow", ("outside",))
    assert ack.packet.src == _addr(PUBLIC)


ACTIVE_DATA = f"tcp,nw_src={SERVER},nw_dst={PUBLIC},tp_src=20,tp_dst=40002"
TFTP_ANSWER = f"udp,nw_src={SERVER},nw_dst={PUBLIC},tp_src=51000,tp_dst=40000"


@pytest.mark.parametrize(("before", "data"), [
    (None, ACTIVE_DATA),
    (None, TFTP_ANSWER),
    (f"icmp,nw_src={CLIENT},nw_dst={SERVER}", ACTIVE_DATA),
    (f"udp,nw_src={CLIENT},nw_dst={SERVER},tp_src=40001,tp_dst=69", TFTP_ANSWER),
], ids=["no-control-ftp", "no-control-tftp", "no-helper", "tftp-other-port"])
def test_nothing_else_enters(before: str | None, data: str) -> None:
    """Without a control connection, after a connection of a rule without a helper, or to a port
    the TFTP client did not send from: the data connection is a new one from outside, dropped."""
    conversation = _conversation()
    if before is not None:
        assert conversation.send("inside", before).verdict == "allow"
    assert conversation.send("outside", data).verdict == "drop"


POOL, BACKENDS = "200.200.200.21", ("10.0.0.10", "10.0.0.11")


def _pool_control(conversation: Conversation, sport: int = 40000) -> int:
    """An FTP control connection from outside to the pool; the backend it went to."""
    out = conversation.send("outside", f"tcp,nw_src={SERVER},nw_dst={POOL},tp_src={sport},tp_dst=21")
    assert (out.verdict, out.rule, out.output) == ("allow", "ftp-pool-in", ("inside",))
    assert any("helper ftp" in e for s in out.steps for e in s.events), "the bucket's commit attaches no helper"
    assert conversation.reply().verdict == "allow"
    assert out.packet.dst in {_addr(b) for b in BACKENDS}
    return out.packet.dst


@pytest.mark.parametrize("sport", [40000, 40100, 40200, 40300])
def test_ftp_through_the_load_balanced_pool_passes_passive_and_active(sport: int) -> None:
    """The pool's helper group commits the control connection with the FTP helper, so the passive
    data connection to the public address reaches the same backend, and the active one from the
    backend leaves as the public address."""
    conversation = _conversation()
    backend = _pool_control(conversation, sport)
    passive = conversation.send("outside", f"tcp,nw_src={SERVER},nw_dst={POOL},tp_src={sport + 1},tp_dst=50000")
    assert (passive.verdict, passive.rule, passive.output) == ("allow", "ftp-pool-in", ("inside",))
    assert passive.packet.dst == backend
    assert conversation.reply().output == ("outside",)
    backend_text = str(ipaddress.ip_address(backend))
    active = conversation.send("inside", f"tcp,nw_src={backend_text},nw_dst={SERVER},tp_src=20,tp_dst={sport + 2}")
    assert (active.verdict, active.rule, active.output) == ("allow", "ftp-pool-in", ("outside",))
    assert active.packet.src == _addr(POOL)


def test_the_pool_has_a_group_per_helper_and_flows_pick_it_by_the_rules_helper() -> None:
    """A connection without a helper goes to the plain group, one of the FTP rule to the group whose
    buckets commit with alg=ftp; no group for TFTP, which no connection to tcp/21 can have."""
    from ovsmgr.compiler import compile_policy
    from ovsmgr.compiler.flows import Ct, Group
    from ovsmgr.compiler.pipeline import REG_HELPER

    compiled = compile_policy(load_policy_text(POLICY.read_text()))
    algs = {g.group_id: {a.alg for b in g.buckets for a in b.actions if isinstance(a, Ct)} for g in compiled.groups}
    assert len(algs) == 2 and {frozenset(v) for v in algs.values()} == {frozenset({None}), frozenset({"ftp"})}, algs
    by_helper: dict[int, set[str | None]] = {}
    for flow in compiled.flows:
        for action in flow.actions:
            if isinstance(action, Group):
                helper = flow.match.get(REG_HELPER.reg)
                assert helper is not None, flow
                by_helper[helper.value] = algs[action.group_id]
    assert by_helper == {0: {None}, 21: {"ftp"}}, by_helper
    assert {compiled.rule_ids[gid] for gid in algs} == {"ftp-pool"}
