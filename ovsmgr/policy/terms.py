"""Parsing of the policy's small terms: prefixes, services, port ranges, address ranges.

Each parser raises `TermError` with a message meant for the operator; the
caller attaches the span of the value it came from.
"""

from __future__ import annotations

import difflib
import ipaddress
import re

from ovsmgr.policy.ir import IPAddress, IPNetwork, Limit, Service

ICMP_TYPES: dict[str, int] = {
    "echo-reply": 0,
    "destination-unreachable": 3,
    "source-quench": 4,
    "redirect": 5,
    "echo-request": 8,
    "router-advertisement": 9,
    "router-solicitation": 10,
    "time-exceeded": 11,
    "parameter-problem": 12,
    "timestamp-request": 13,
    "timestamp-reply": 14,
}
ICMPV6_TYPES: dict[str, int] = {
    "destination-unreachable": 1,
    "packet-too-big": 2,
    "time-exceeded": 3,
    "parameter-problem": 4,
    "echo-request": 128,
    "echo-reply": 129,
    "router-solicitation": 133,
    "router-advertisement": 134,
    "neighbor-solicitation": 135,
    "neighbor-advertisement": 136,
    "redirect": 137,
}
PORT_PROTOS = ("tcp", "udp", "sctp")
_DIGITS = re.compile(r"[0-9]{1,6}")


class TermError(ValueError):
    pass


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_PREFIX = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/([0-9]|[12][0-9]|3[0-2]))?")
"""An IPv4 address or prefix as people write it: decimal octets without leading zeros."""


def parse_prefix(text: str) -> IPNetwork:
    """An address (a host prefix) or a prefix whose host bits are zero."""
    fast = _ipv4_prefix(text)
    if fast is not None:
        return fast
    if "%" in text:
        raise TermError(f'"{text}" has an IPv6 zone index (%...), which a flow cannot match')
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise TermError(f'"{text}" is not an IPv4 or IPv6 address or prefix') from None
    raise TermError(f'"{text}" has host bits set (did you mean {loose}?)')


def _ipv4_prefix(text: str) -> ipaddress.IPv4Network | None:
    """`text` as an IPv4 network when it is written the usual way and its host bits are zero,
    else None (the caller parses it with `ipaddress`, which says what is wrong). Parsing the
    usual form from integers is a quarter of ipaddress's price, and policies hold thousands."""
    found = _IPV4_PREFIX.fullmatch(text)
    if found is None:
        return None
    a, b, c, d, length = found.groups()
    address = int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)
    prefixlen = 32 if length is None else int(length)
    if address & (0xFFFF_FFFF >> prefixlen):
        return None  # host bits set
    return ipaddress.IPv4Network((address, prefixlen))


def parse_address(text: str) -> IPAddress:
    if "%" in text:
        raise TermError(f'"{text}" has an IPv6 zone index (%...), which a flow cannot match')
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise TermError(f'"{text}" is not an IPv4 or IPv6 address') from None


def parse_address_range(text: str) -> tuple[IPAddress, IPAddress]:
    """`a.b.c.d` or `a.b.c.d-a.b.c.e`, low first, one family."""
    if "/" in text:
        raise TermError(f'"{text}" is a prefix; translate_to takes an address or a range a.b.c.d-a.b.c.e')
    lo_text, sep, hi_text = text.partition("-")
    lo = parse_address(lo_text.strip())
    hi = parse_address(hi_text.strip()) if sep else lo
    if lo.version != hi.version:
        raise TermError(f'"{text}" mixes IPv4 and IPv6')
    if int(hi) < int(lo):
        raise TermError(f'"{text}" is an empty range (the high end is below the low end)')
    return lo, hi


def parse_port(text: str) -> int:
    if not _DIGITS.fullmatch(text) or (len(text) > 1 and text[0] == "0"):
        raise TermError(f'"{text}" is not a port number{_port_hint(text)}')
    value = int(text)
    if not 1 <= value <= 65535:
        raise TermError(f"port {value} is out of range (1-65535)")
    return value


def _port_hint(text: str) -> str:
    if ":" in text:
        return f" (a port range is written low-high: {text.replace(':', '-')})"
    if "," in text:
        return " (list each port as an item of its own)"
    if _DIGITS.fullmatch(text):
        return " (no leading zeros)"
    return ""


def parse_port_range(text: str) -> tuple[int, int]:
    """`80` or `1024-65535`."""
    lo_text, sep, hi_text = text.partition("-")
    if not lo_text.strip() or (sep and not hi_text.strip()):
        raise TermError(f'"{text}" is not a port or a port range (like 80 or 1024-65535)')
    lo = parse_port(lo_text.strip())
    hi = parse_port(hi_text.strip()) if sep else lo
    if hi < lo:
        raise TermError(f'"{text}" is an empty port range (the high end is below the low end)')
    return lo, hi


_LIMIT = re.compile(r"^\s*([0-9]+)\s*(kbit|mbit)?\s*/\s*(s|m)\s*$")
MAX_METER_RATE = 0xFFFF_FFFF
"""An OpenFlow meter band's rate is 32 bits (packets or kilobits per second)."""


def parse_limit(text: str) -> Limit:
    """`500/s`, `600/m` (packets), `64kbit/s`, `10mbit/s`; as an OpenFlow meter counts: whole packets
    or kilobits per second."""
    found = _LIMIT.match(text)
    if found is None:
        raise TermError(f'"{text}" is not a rate: write N/s or N/m (packets), or Nkbit/s or Nmbit/s')
    count, unit, per = int(found[1]), found[2], found[3]
    if count == 0:
        raise TermError(f'"{text}" is a rate of 0: a rule that passes nothing is action: drop')
    if unit and per == "m":
        raise TermError(f'"{text}": a bandwidth is per second (kbit/s or mbit/s)')
    if unit:
        rate, kind = count * (1000 if unit == "mbit" else 1), "kbps"
    elif per == "m":
        if count % 60:
            raise TermError(f'"{text}" is {count / 60:.3g} packets a second, and an OpenFlow meter counts whole '
                            f"packets a second: write a multiple of 60/m, or N/s")
        rate, kind = count // 60, "pktps"
    else:
        rate, kind = count, "pktps"
    if rate > MAX_METER_RATE:
        raise TermError(f'"{text}" is above what an OpenFlow meter can count ({MAX_METER_RATE} a second)')
    return Limit(kind, rate, text.strip())  # type: ignore[arg-type]


def parse_service(text: str) -> Service:
    """`tcp`, `tcp/80`, `udp/1024-2048`, `icmp/echo-request`, `icmp/3/4`, `icmpv6/128`."""
    proto, sep, rest = text.strip().partition("/")
    proto = proto.lower()
    if sep and not rest and looks_like_service_literal(proto):
        what = "port" if proto in PORT_PROTOS else "type"
        raise TermError(f'"{text}" ends in "/": write {proto} for any {what}, or {proto}/<{what}>')
    if proto in PORT_PROTOS:
        return Service(proto, parse_port_range(rest) if rest else None)  # type: ignore[arg-type]
    if proto in ("icmp", "icmpv6"):
        if not rest:
            return Service(proto)  # type: ignore[arg-type]
        names = ICMP_TYPES if proto == "icmp" else ICMPV6_TYPES
        type_text, code_sep, code_text = rest.partition("/")
        icmp_type = _icmp_number(type_text, names, proto, "type")
        code = _icmp_number(code_text, {}, proto, "code") if code_sep else None
        return Service(proto, None, icmp_type, code)  # type: ignore[arg-type]
    raise TermError(
        f'"{text}" is not a service: expected tcp|udp|sctp[/port[-port]] or icmp|icmpv6[/type[/code]]'
    )


def _icmp_number(text: str, names: dict[str, int], proto: str, what: str) -> int:
    if text in names:
        return names[text]
    if _DIGITS.fullmatch(text) and int(text) <= 255 and (text == "0" or text[0] != "0"):
        return int(text)
    if not names:
        raise TermError(f'"{text}" is not an {proto} {what} (0-255)')
    close = difflib.get_close_matches(text, list(names), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise TermError(f'"{text}" is not an {proto} {what} (a name like echo-request, or 0-255){hint}')


def looks_like_service_literal(text: str) -> bool:
    head = text.partition("/")[0].lower()
    return head in (*PORT_PROTOS, "icmp", "icmpv6")
