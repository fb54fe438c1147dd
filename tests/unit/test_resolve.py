"""Resolution and analysis: sets, services, ranges, shadowing, NAT checks, and all of it in one run."""

from __future__ import annotations

import bisect
import ipaddress
import random
from pathlib import Path

import pytest

from ovsmgr.policy import PolicyError, ResolvedPolicy, load_policy, load_policy_text, ruleindex
from ovsmgr.policy.analysis import RuleIndex, covers, overlaps
from ovsmgr.policy.ir import RuleMatch, Service
from ovsmgr.policy.terms import TermError, parse_port_range, parse_service

BASE = """\
version: 1
switch:
  bridge: br0
  ports:
    lan0: {ofport: 1}
    wan0: {ofport: 2}
  links:
    - [lan0, wan0]
zones:
  lan: {ports: [lan0], networks: [10.0.0.0/24]}
  wan: {ports: [wan0]}
"""
BASE_LINES = BASE.count("\n")


def load(extra: str) -> ResolvedPolicy:
    return load_policy_text(BASE + extra, "t.yaml")


def report(extra: str) -> list[str]:
    """Every diagnostic of `BASE + extra` as `LINE:COLUMN: SEVERITY: MESSAGE`, lines counted from `extra`."""
    try:
        diagnostics = load(extra).diagnostics
    except PolicyError as exc:
        diagnostics = tuple(exc.diagnostics)
    return [f"{d.span.line - BASE_LINES}:{d.span.column}: {d.severity.value}: {d.message}" for d in diagnostics]


def rules(*lines: str) -> str:
    return "firewall:\n  rules:\n" + "".join(f"    - {line}\n" for line in lines)


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# --- address sets --------------------------------------------------------------------------------
def test_nested_sets_expand_in_order_without_duplicates() -> None:
    policy = load("""addresses:
  a: [10.0.1.0/24, "@b"]
  b: [10.0.2.0/24, "@c", 10.0.1.0/24]
  c: ["fd00::/64"]
""" + rules('{name: r, from: lan, src: ["@a", 10.0.2.0/24], action: allow}'))
    assert policy.rules[0].match.src == (net("10.0.1.0/24"), net("10.0.2.0/24"), net("fd00::/64"))


@pytest.mark.parametrize(("sets", "expected"), [
    ('  a: ["@a"]\n', ['2:7: error: address sets include each other in a cycle: a -> a']),
    ('  a: ["@b"]\n  b: ["@a"]\n', ['3:7: error: address sets include each other in a cycle: a -> b -> a']),
    ('  a: ["@b"]\n  b: ["@c"]\n  c: [10.0.0.0/8, "@a"]\n',
     ['4:19: error: address sets include each other in a cycle: a -> b -> c -> a']),
])
def test_set_cycles_are_reported_once(sets: str, expected: list[str]) -> None:
    assert report("addresses:\n" + sets) == expected


def test_unknown_nested_set_is_suggested() -> None:
    assert report('addresses:\n  admins: [10.0.0.5]\n  all: ["@admin"]\n') == [
        '3:9: error: unknown address set "@admin" (did you mean "@admins"?)']


def test_a_rule_on_an_empty_set_is_left_out_with_a_warning() -> None:
    policy = load("addresses:\n  none: []\n" + rules('{name: r, from: wan, src: "@none", action: drop}',
                                                      "{name: s, from: wan, action: allow}"))
    assert [r.name for r in policy.rules] == ["s"]
    [warning] = policy.diagnostics
    assert warning.message.startswith('rule "r" matches nothing: its src is empty')


def test_a_rule_on_a_broken_set_is_kept_out_of_the_analysis() -> None:
    # "bad" has a wrong prefix (an error); rule r must not be read as "src: any" and shadow s.
    assert report("addresses:\n  bad: [10.0.0.1/8]\n" + rules('{name: r, from: wan, src: "@bad", action: drop}',
                                                              "{name: s, from: wan, src: 10.1.0.0/16, action: allow}")) == [
        "2:9: error: \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)"]


# --- services ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "service"), [
    ("tcp", Service("tcp")),
    ("TCP/80", Service("tcp", (80, 80))),
    ("udp/1024-2048", Service("udp", (1024, 2048))),
    ("sctp/9899", Service("sctp", (9899, 9899))),
    ("icmp", Service("icmp")),
    ("icmp/echo-request", Service("icmp", None, 8)),
    ("icmp/0", Service("icmp", None, 0)),
    ("icmp/3/4", Service("icmp", None, 3, 4)),
    ("icmp/destination-unreachable/4", Service("icmp", None, 3, 4)),
    ("icmpv6/echo-request", Service("icmpv6", None, 128)),
    ("icmpv6/packet-too-big", Service("icmpv6", None, 2)),
    ("icmpv6/neighbor-solicitation", Service("icmpv6", None, 135)),
])
def test_service_forms(text: str, service: Service) -> None:
    assert parse_service(text) == service


@pytest.mark.parametrize(("text", "message"), [
    ("tcp/0", "port 0 is out of range (1-65535)"),
    ("tcp/65536", "port 65536 is out of range (1-65535)"),
    ("tcp/80-", '"80-" is not a port or a port range'),
    ("tcp/-80", '"-80" is not a port or a port range'),
    ("tcp/http", '"http" is not a port number'),
    ("udp/10:20", "a port range is written low-high: 10-20"),
    ("tcp/\u0663", "is not a port number"),
    ("tcp/", 'write tcp for any port, or tcp/<port>'),
    ("icmp/", 'write icmp for any type, or icmp/<type>'),
    ("icmp/256", '"256" is not an icmp type'),
    ("icmp/time-exeeded", 'did you mean "time-exceeded"?'),
    ("icmp/3/256", '"256" is not an icmp code (0-255)'),
    ("icmp/3/", '"" is not an icmp code'),
    ("icmpv6/echo-requst", 'did you mean "echo-request"?'),
    ("gre", "is not a service"),
])
def test_service_mistakes(text: str, message: str) -> None:
    with pytest.raises(TermError, match=None) as exc:
        parse_service(text)
    assert message in str(exc.value)


def test_service_definitions_are_checked_once_whether_used_or_not() -> None:
    assert report("services:\n  unused: [tcp/99999]\n  twice: [udp/0]\n"
                  + rules("{name: a, from: lan, services: [twice], action: allow}",
                          "{name: b, from: wan, services: [twice], action: allow}")) == [
        "2:12: error: port 99999 is out of range (1-65535)",
        "3:11: error: port 0 is out of range (1-65535)",
    ]


def test_names_come_before_literals_and_literals_need_no_definition() -> None:
    policy = load("services:\n  web: [tcp/80, tcp/443]\n" + rules(
        "{name: r, from: lan, services: [web, udp/53, icmp/echo-request, tcp/80], action: allow}"))
    assert [str(s) for s in policy.rules[0].match.services] == ["tcp/80", "tcp/443", "udp/53", "icmp/8"]


# --- port ranges -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [("80", (80, 80)), ("1024-65535", (1024, 65535)), (" 1 - 2 ", (1, 2))])
def test_port_ranges(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


def test_ranges_cover_and_overlap() -> None:
    wide, narrow, port = Service("tcp", (1, 1023)), Service("tcp", (20, 25)), Service("tcp", (22, 22))
    assert wide.covers(narrow) and wide.covers(port) and not narrow.covers(wide)
    assert Service("tcp", (20, 30)).overlaps(Service("tcp", (30, 40)))
    assert not Service("tcp", (20, 29)).overlaps(Service("tcp", (30, 40)))
    assert not Service("udp", (1, 65535)).overlaps(port)
    assert Service("tcp").covers(wide) and not wide.covers(Service("tcp"))


# --- shadowed rules ------------------------------------------------------------------------------------
def test_shadowed_rule_names_the_earliest_covering_rule() -> None:
    assert report(rules("{name: first, from: lan, services: [tcp/1-1024], action: allow}",
                        "{name: second, from: lan, action: allow}",
                        "{name: late, from: lan, src: 10.0.0.5, services: [tcp/22], action: drop}")) == [
        '5:7: warning: rule "late" can never match: the earlier rule "first" (t.yaml:14:7) matches every packet it does']


@pytest.mark.parametrize("later", [
    "{name: b, from: lan, services: [tcp/22, udp/53], action: drop}",   # udp/53 is not covered
    "{name: b, from: wan, services: [tcp/22], action: drop}",           # another zone
    "{name: b, from: lan, src: 10.0.0.0/8, services: [tcp/22], action: drop}",  # wider source
    '{name: b, from: lan, src: "fd00::1", services: [tcp/22], action: drop}',   # another family
])
def test_partly_covered_rules_are_not_shadowed(later: str) -> None:
    assert report(rules("{name: a, from: lan, src: 10.0.0.0/24, services: [tcp/1-1024], action: allow}", later)) == []


def test_a_rule_with_to_does_not_cover_one_without() -> None:
    assert report(rules("{name: a, from: lan, to: wan, action: allow}", "{name: b, from: lan, action: drop}")) == []
    assert report(rules("{name: a, from: lan, action: allow}", "{name: b, from: lan, to: wan, action: drop}"))[0].startswith(
        '4:7: warning: rule "b" can never match: the earlier rule "a"')


def test_disabled_rules_shadow_nothing() -> None:
    assert report(rules("{name: a, from: lan, action: allow, enabled: false}", "{name: b, from: lan, action: drop}")) == []


def test_icmp_types_and_codes_in_shadowing() -> None:
    assert report(rules("{name: a, from: wan, services: [icmp/destination-unreachable], action: allow}",
                        "{name: b, from: wan, services: [icmp/3/4], action: allow}",
                        "{name: c, from: wan, services: [icmp/echo-request], action: allow}")) == [
        '4:7: warning: rule "b" can never match: the earlier rule "a" (t.yaml:14:7) matches every packet it does']


def _random_match(rng: random.Random) -> RuleMatch:
    prefixes = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.2.0.0/16", "10.1.2.128/25",
                "fd00::/8", "fd00:1::/32", "fd00:1::5/128"]
    services = [Service("tcp"), Service("tcp", (22, 22)), Service("tcp", (1, 1024)), Service("tcp", (80, 80)),
                Service("tcp", (1000, 65535)), Service("tcp", (20, 25)), Service("udp", (53, 53)),
                Service("udp", (100, 2000)), Service("icmp"), Service("icmp", None, 3), Service("icmp", None, 3, 4),
                Service("icmpv6", None, 128)]

    def some(pool: list, k: int) -> tuple:  # type: ignore[type-arg]
        return tuple(rng.sample(pool, rng.randint(0, k)))

    return RuleMatch(rng.choice(["lan", "wan"]), rng.choice([None, "lan", "wan"]),
                     tuple(net(p) for p in some(prefixes, 3)), tuple(net(p) for p in some(prefixes, 2)),
                     some(services, 3))


@pytest.mark.parametrize("seed", range(6))
def test_rule_index_never_misses_a_covering_or_overlapping_rule(seed: int) -> None:
    rng = random.Random(seed)
    index = RuleIndex()
    added: list[RuleMatch] = []
    for n in range(300):
        match = _random_match(rng)
        cover = {id(m) for m, _ in index.candidates(match)}
        overlap = {id(m) for m, _ in index.candidates(match, overlap=True)}
        assert {id(m) for m in added if covers(m, match)} <= cover
        assert {id(m) for m in added if overlaps(m, match)} <= overlap
        order = [payload for _, payload in index.candidates(match)]
        assert order == sorted(order)  # earliest first, so messages name the first covering rule
        index.add(match, n)
        added.append(match)
    assert len(index) == 300


@pytest.mark.parametrize("seed", range(4))
def test_sorted_entries_answer_as_one_sorted_list(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index's buckets (made small here, so that they split often) give the entries of one
    sorted list between any two bounds, in order."""
    monkeypatch.setattr(ruleindex, "BUCKET", 4)
    rng = random.Random(seed)
    entries = ruleindex._SortedEntries()
    flat: list[tuple[int, int, int]] = []
    for i in range(400):
        entry = (rng.randrange(100), rng.randrange(40), i)
        entries.add(entry)
        bisect.insort(flat, entry)
        if rng.random() < 0.7:
            continue  # some entries wait to be sorted in by a later lookup
        low, high = sorted((rng.randrange(-5, 105), rng.randrange(-5, 105)))
        lo_key, hi_key = (low, -1, -1), (high, 1 << 8, 1 << 62)
        window = entries.between(lo_key, hi_key, lambda _a, b: b >= 20)
        expected = flat[bisect.bisect_left(flat, lo_key) : bisect.bisect_right(flat, hi_key)]
        assert len(window) == len(expected)
        assert list(window) == [j for _a, b, j in expected if b >= 20]
    entries.between((0, 0, 0), (0, 0, 0), lambda _a, _b: True)
    assert [e for bucket in entries.buckets for e in bucket] == flat
    assert all(len(bucket) <= 8 for bucket in entries.buckets)


# --- NAT ----------------------------------------------------------------------------------------------
def test_every_nat_rule_translating_to_a_blocked_address_is_reported() -> None:
    out = report(rules("{name: bogons, from: wan, dst: 200.200.200.0/24, action: drop}",
                       "{name: evil, from: wan, src: 198.51.100.0/24, action: reject}") + """nat:
  - {name: a, type: snat, from: lan, to: wan, src: 10.0.0.0/25, translate_to: 200.200.200.200}
  - {name: b, type: snat, from: lan, to: wan, src: 10.0.0.128/25, translate_to: 198.51.100.7}
  - {name: c, type: dnat, from: wan, dst: 203.0.113.10, services: [tcp/80], translate_to: 10.0.0.9}
""")
    assert out == [
        '6:5: error: snat rule "a" translates to 200.200.200.200, which rule "bogons" (t.yaml:14:7) blocks as dst',
        '7:5: error: snat rule "b" translates to 198.51.100.7, which rule "evil" (t.yaml:15:7) blocks as src',
    ]


def test_a_translation_range_reaching_into_a_blocked_prefix_is_reported() -> None:
    out = report(rules("{name: bogon, from: wan, dst: 200.200.200.64/26, action: drop}")
                 + "nat:\n  - {name: a, type: snat, from: lan, translate_to: 200.200.200.1-200.200.200.70}\n")
    assert out == ['5:5: error: snat rule "a" translates to 200.200.200.1-200.200.200.70, which rule "bogon" '
                   '(t.yaml:14:7) blocks as dst']


def test_nat_overlap_is_per_kind() -> None:
    nat = """nat:
  - {name: out, type: snat, from: lan, translate_to: 200.200.200.200}
  - {name: fwd, type: dnat, from: lan, dst: 10.0.0.1, translate_to: 10.0.0.2}
  - {name: fwd2, type: dnat, from: lan, dst: 10.0.0.0/24, services: [tcp/80], translate_to: 10.0.0.3}
  - {name: fwd3, type: dnat, from: wan, dst: 10.0.0.0/24, translate_to: 10.0.0.4}
"""
    assert report(nat) == ['4:5: error: dnat rule "fwd2" overlaps dnat rule "fwd" (t.yaml:14:5): a connection '
                           "matching both would be translated by the first only"]


# --- everything in one run -----------------------------------------------------------------------------
def test_shape_name_and_meaning_errors_in_one_run() -> None:
    out = report(rules("{name: a, from: lan, action: accept}",
                       "{name: b, from: lann, action: allow}",
                       "{name: c, from: lan, src: 10.0.0.1/8, services: [tcp/0], action: allow, log: no}") + """nat:
  - {name: a, type: snat, from: wan, translate_to: 10.0.0.256}
""")
    assert out == [
        '3:36: error: firewall.rules[0].action: expected one of allow, drop, reject, got "accept"',
        '4:23: error: unknown zone "lann" (did you mean "lan"?)',
        '5:33: error: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)',
        "5:56: error: port 0 is out of range (1-65535)",
        '5:84: error: firewall.rules[2].log: expected true or false, got "no" (YAML 1.1 spellings like '
        "yes/no/on/off are not booleans here)",
        '7:12: error: rule name "a" is used twice (also at t.yaml:14:14)',
        '7:52: error: "10.0.0.256" is not an IPv4 or IPv6 address',
    ]


def test_no_cascade_from_what_the_shape_pass_pruned() -> None:
    # A port, a zone, a set and a service each have a shape error. Nothing that uses them is told
    # they do not exist, and the rule that uses them is kept out of the shadowing analysis.
    text = """version: 1
switch:
  bridge: br0
  ports:
    lan0: {ofport: 1}
    dmz0: {ofport: "2"}
  links:
    - [lan0, dmz0]
zones:
  lan: {ports: [lan0]}
  dmz: {ports: dmz0}
addresses:
  admins: 10.0.0.5
  more: ["@admins"]
services:
  web: tcp/80
firewall:
  rules:
    - {name: a, from: dmz, to: lan, src: "@more", services: [web], action: allow}
    - {name: b, from: lan, action: allow}
"""
    with pytest.raises(PolicyError) as exc:
        load_policy_text(text, "t.yaml")
    assert [f"{d.span.line}:{d.span.column}: {d.message}" for d in exc.value.diagnostics] == [
        '6:20: switch.ports.dmz0.ofport: expected an integer, got "2" (a number in quotes, or with a tag, '
        "is text: write plain digits)",
        '11:16: zones.dmz.ports: expected a list, got "dmz0" (write [dmz0])',
        '13:11: addresses.admins: expected a list, got "10.0.0.5" (write [10.0.0.5])',
        '16:8: services.web: expected a list, got "tcp/80" (write [tcp/80])',
    ]


def test_an_empty_list_item_does_not_stop_the_other_checks() -> None:
    assert report("firewall:\n  rules:\n    -\n    - {name: a, from: lann, action: allow}\n") == [
        "3:6: error: firewall.rules[0]: expected a mapping, got an empty value",
        '4:23: error: unknown zone "lann" (did you mean "lan"?)',
    ]


def test_a_rule_that_lost_a_key_is_kept_out_of_the_analysis() -> None:
    # Without its (bad) services, rule a would read as "any" and shadow b.
    assert report(rules("{name: a, from: lan, services: tcp/22, action: drop}", "{name: b, from: lan, action: allow}")) == [
        '3:38: error: firewall.rules[0].services: expected a list, got "tcp/22" (write [tcp/22])']


# --- merging --------------------------------------------------------------------------------------------
def test_merged_files_keep_their_own_spans(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE + rules("{name: a, from: lan, action: allow}"))
    (tmp_path / "site.yaml").write_text("firewall:\n  rules:\n    - {name: b, from: wan, services: [tcp/22], action: drop}\n"
                                        "addresses:\n  admins: [10.0.0.5]\n")
    policy = load_policy([tmp_path / "base.yaml", tmp_path / "site.yaml"])
    assert [(r.name, r.index, r.span.file.endswith("site.yaml"), r.span.line) for r in policy.rules] == [
        ("a", 0, False, 14), ("b", 1, True, 3)]


def test_names_defined_twice_across_files_name_both_places(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE)
    (tmp_path / "b.yaml").write_text("zones:\n  wan: {ports: [wan0]}\nswitch:\n  ports:\n    lan0: {ofport: 9}\n")
    with pytest.raises(PolicyError) as exc:
        load_policy([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert [(Path(d.span.file).name, d.span.line, d.message.split(" (also at ")[0]) for d in exc.value.diagnostics] == [
        ("b.yaml", 2, 'zone "wan" is defined twice'), ("b.yaml", 5, 'port "lan0" is defined twice')]
    assert all("a.yaml:" in d.message for d in exc.value.diagnostics)


def test_merging_values_of_different_kinds_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE + "firewall:\n  rules: nothing\n")
    (tmp_path / "b.yaml").write_text("firewall:\n  rules: [{name: a, from: lan, action: allow}]\nnat: {}\n")
    (tmp_path / "c.yaml").write_text("nat: []\n")
    with pytest.raises(PolicyError) as exc:
        load_policy([tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"])
    messages = [d.message for d in exc.value.diagnostics]
    assert any(m.startswith('setting "firewall.rules" is given twice') for m in messages)
    assert any(m.startswith('section "nat" is given twice') for m in messages)


def test_the_same_file_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE)
    policy = load_policy([tmp_path / "a.yaml", tmp_path / "." / "a.yaml"])
    assert [d.message.split(" (")[0] for d in policy.diagnostics] == ["the file is given twice"]


# --- the resolved form ------------------------------------------------------------------------------------
def test_resolved_rules_keep_order_index_and_span() -> None:
    policy = load(rules("{name: a, from: lan, to: wan, services: [tcp/80], action: allow}",
                        "{name: off, from: lan, action: drop, enabled: false}",
                        "{name: b, from: wan, dst: 10.0.0.0/24, action: reject, log: true, stateful: false}"))
    assert [(r.name, r.index, r.action, r.log, r.stateful, r.span.line) for r in policy.rules] == [
        ("a", 0, "allow", False, True, 14), ("b", 2, "reject", True, False, 16)]
    assert policy.rules[0].match == RuleMatch("lan", "wan", (), (), (Service("tcp", (80, 80)),))
    assert policy.links == {"lan0": "wan0", "wan0": "lan0"}
    assert policy.ports["lan0"].zone == "lan" and policy.zones["lan"].networks == (net("10.0.0.0/24"),)
