"""A lab host's VLAN subinterfaces, done in user space: ``dot1q.py IFACE VID=TAP ...``.

A host behind a trunk port needs one interface per VLAN, whose frames leave tagged and which
gets the frames of its VLAN. Linux does that with ``ip link add link eth0 name eth0.20 type vlan
id 20``, but the kernels of these test machines are built without 802.1Q (``CONFIG_VLAN_8021Q``
is not set, and there are no modules to load). So the lab makes each subinterface a TAP device
(``ip tuntap add eth0.20 mode tap``, addressed and routed like any interface) and runs this
relay in the host's namespace: what the host's IP stack sends on a TAP leaves by the parent
with the VLAN's tag pushed; what arrives on the parent tagged with the VLAN goes to the TAP with
the tag popped. Linux takes the tag off every frame it receives and hands it to a packet socket
beside the frame (PACKET_AUXDATA), so the relay reads it there. Untagged frames stay the
parent's own.

Standard library only, run as a script (``python -I -S``), like the traffic agent; it runs until
it is killed (the lab's ``down`` kills what runs in a host's namespace).
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys

ETH_P_ALL, ETH_P_8021Q = 0x0003, 0x8100
SOL_PACKET, PACKET_AUXDATA, PACKET_OUTGOING = 263, 8, 4
TP_STATUS_VLAN_VALID = 1 << 4
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def open_tap(name: str) -> int:
    """Attach to the (persistent) TAP device `name`: frames in and out, no packet information."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def vlan_of(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The VLAN id of the tag Linux took off a received frame, if it had one."""
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= AUXDATA.size:
            status, _, _, _, _, tci, _ = AUXDATA.unpack_from(data)
            if status & TP_STATUS_VLAN_VALID:
                return tci & 0xFFF
    return None


def tagged(frame: bytes, vid: int) -> bytes:
    return frame[:12] + struct.pack("!HH", ETH_P_8021Q, vid) + frame[12:]


def relay(parent: str, taps: dict[int, str]) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((parent, ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    fds = {vid: open_tap(name) for vid, name in taps.items()}
    vids = {fd: vid for vid, fd in fds.items()}
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([sock.fileno(), *fds.values()], [], [])
        for source in ready:
            if source == sock.fileno():
                frame, ancillary, _, address = sock.recvmsg(65535, socket.CMSG_SPACE(AUXDATA.size))
                vid = vlan_of(ancillary)
                if address[2] != PACKET_OUTGOING and vid is not None and vid in fds:
                    os.write(fds[vid], frame)
            else:
                sock.send(tagged(os.read(source, 65535), vids[source]))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print("usage: dot1q.py PARENT VID=TAP ...", file=sys.stderr)
        return 2
    taps = {int(vid): name for vid, _, name in (a.partition("=") for a in argv[1:])}
    relay(argv[0], taps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
