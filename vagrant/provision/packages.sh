#!/usr/bin/env bash
# Debian packages of every ovsmgr test machine: the three Vagrant VMs and the
# kernel-test guest image (vagrant/guest/build-image runs this in the image's
# chroot, so what the VMs get is what `make kernel-test` tests).
#
#   packages.sh          install them (apt-get update first)
#   packages.sh --list   print their names, one a line (the image cache key uses them)
set -euo pipefail

PACKAGES=(
  openvswitch-switch          # ovsdb-server, ovs-vswitchd, ovs-vsctl/-ofctl/-appctl, ovs-ctl
  iproute2 kmod procps ethtool
  iputils-ping iputils-arping netcat-openbsd conntrack tcpdump hping3
  netsniff-ng iperf3 nftables # trafgen, iperf3, and nft for the drop rules on gen and sink
  python3 python3-venv        # ovsmgr's virtual environment (/opt/ovsmgr/venv)
  openssh-client ca-certificates
)

if [ "${1:-}" = --list ]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
echo "provision: packages installed: ${PACKAGES[*]}" >&2
