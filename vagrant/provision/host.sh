#!/usr/bin/env bash
# gen and sink, the hosts on either side of dut: the data NIC (found by MAC) is
# renamed data0 and gets its address and on-link routes to the far side's
# networks, so traffic to them crosses dut's bridge (one L2 segment through the
# switch, as in the embedded lab). With --authorized-key, dut's bench key may log
# in as root.
#
#   host.sh --mac MAC --address ADDR/PREFIX [--route PREFIX ...] [--authorized-key PUBLIC_KEY]
set -euo pipefail

mac= address= key=
routes=()
while (($#)); do
  case $1 in
    --mac) mac=${2,,}; shift 2 ;;
    --address) address=$2; shift 2 ;;
    --route) routes+=("$2"); shift 2 ;;
    --authorized-key) key=$2; shift 2 ;;
    *) echo "host.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$mac" ] && [ -n "$address" ] || { echo "host.sh: --mac and --address are required" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=provision/nic.sh
. "$HERE/nic.sh"

claim_nic "$mac" data0
ip addr flush dev data0
ip addr add "$address" dev data0
for route in "${routes[@]}"; do
  ip route replace "$route" dev data0
done
{
  echo "# Written by vagrant/provision/host.sh: the data NIC, towards dut."
  echo "allow-hotplug data0"
  echo "iface data0 inet static"
  echo "    address $address"
  for route in "${routes[@]}"; do echo "    up ip route replace $route dev data0"; done
} > /etc/network/interfaces.d/ovsmgr-data

if [ -n "$key" ]; then
  install -d -m 700 /root/.ssh
  touch /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
  grep -qxF "$(cat "$key")" /root/.ssh/authorized_keys || cat "$key" >> /root/.ssh/authorized_keys
fi
echo "provision: data0 ($mac) $address${routes:+, on-link routes ${routes[*]}}" >&2
