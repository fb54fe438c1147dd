"""`ovsmgr trace` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ovsmgr.cli.trace import trace

ROOT = Path(__file__).resolve().parents[2]
SEED_NAT = str(ROOT / "policies" / "seed-nat.yaml")
GATEWAY = str(ROOT / "policies" / "gateway.yaml")
OUT = "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443"


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and stdout, or stdout and stderr together when the command failed."""
    result = CliRunner().invoke(trace, list(args))
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_text_shows_the_walk_with_rule_names() -> None:
    code, out = invoke(SEED_NAT, "--in", "inside", OUT)
    assert code == 0, out
    assert "table 40 FILTER" in out and "[inside-out]" in out and "[masquerade]" in out
    assert "verdict: allow by rule inside-out, output outside" in out
    assert "nw_src=200.200.200.200" in out


def test_json_of_a_conversation_describes_the_last_packet() -> None:
    code, out = invoke(SEED_NAT, "--in", "inside", OUT, "--then", "reply", "-o", "json")
    assert code == 0, out
    result = json.loads(out)
    assert (result["verdict"], result["rule"], result["output"]) == ("allow", "inside-out", ["inside"])
    assert result["packet"]["nw_dst"] == "10.0.0.5"
    assert [p["verdict"] for p in result["conversation"]] == ["allow", "allow"]
    assert result["conversation"][0]["packet"]["nw_src"] == "200.200.200.200"


def test_then_accepts_a_port_and_a_spec() -> None:
    code, out = invoke(GATEWAY, "--in", "wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_dst=22",
                       "--then", "wan0:tcp,nw_src=198.51.100.66,nw_dst=200.200.200.200,tp_dst=8080", "-o", "json")
    assert code == 0, out
    result = json.loads(out)
    assert [(p["verdict"], p["rule"]) for p in result["conversation"]] == [
        ("reject", "no-ssh-from-wan"), ("drop", "drop-blocklist")]


def test_a_packets_file_is_a_conversation(tmp_path: Path) -> None:
    packets = tmp_path / "talk.txt"
    packets.write_text(f"# a conversation\ninside {OUT}\nreply\nerror   # not really\n")
    code, out = invoke(SEED_NAT, "--packets", str(packets), "-o", "json")
    assert code == 0, out
    result = json.loads(out)
    assert len(result["conversation"]) == 3
    assert result["in"] == "inside" and result["ct_state"].startswith("+trk+rel")


def test_mistakes_are_reported() -> None:
    code, out = invoke(SEED_NAT, OUT)
    assert code == 2 and "--in PORT" in out
    code, out = invoke(SEED_NAT, "--in", "lan0", OUT)
    assert code == 1 and "unknown port 'lan0'" in out
    code, out = invoke(SEED_NAT, "--in", "inside", "tcp,nw_src=10.0.0.5")
    assert code == 1 and "needs nw_dst" in out
    code, out = invoke(SEED_NAT, "--in", "outside", "tcp,nw_src=1.1.1.1,nw_dst=2.2.2.2,tp_dst=9", "--then", "reply")
    assert code == 1 and "say which port answers" in out
    code, out = invoke(SEED_NAT, "--in", "inside", OUT, "--then", "sideways")
    assert code == 2
