#!/usr/bin/env bash
# dut, the device under test: its two data NICs (found by MAC, whatever the
# provider named them) are renamed `inside` (the gen side) and `outside` (the
# sink side) and become ports 1 and 2 of br0, a bridge on the kernel datapath
# that fails secure: nothing passes until a policy is applied. The policies in
# /etc/ovsmgr (provision/ovsmgr.sh) name exactly these ports:
#
#   ovsmgr apply /etc/ovsmgr/seed-firewall.yaml
#
# With --bench-key, root on dut can `ssh gen` and `ssh sink` (over the
# management network, never the data path) to drive the load for `ovsmgr bench`.
#
#   dut.sh --inside-mac MAC --outside-mac MAC [--bridge br0]
#          [--bench-key PRIVATE_KEY --host NAME=ADDRESS ...]
set -euo pipefail

bridge=br0 inside_mac= outside_mac= bench_key=
hosts=()
while (($#)); do
  case $1 in
    --inside-mac) inside_mac=${2,,}; shift 2 ;;
    --outside-mac) outside_mac=${2,,}; shift 2 ;;
    --bridge) bridge=$2; shift 2 ;;
    --bench-key) bench_key=$2; shift 2 ;;
    --host) hosts+=("$2"); shift 2 ;;
    *) echo "dut.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$inside_mac" ] && [ -n "$outside_mac" ] || { echo "dut.sh: --inside-mac and --outside-mac are required" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=provision/nic.sh
. "$HERE/nic.sh"

claim_nic "$inside_mac" inside
claim_nic "$outside_mac" outside
cat > /etc/network/interfaces.d/ovsmgr-ports <<EOF
# Written by vagrant/provision/dut.sh: ports of $bridge, no addresses.
allow-hotplug inside
iface inside inet manual
allow-hotplug outside
iface outside inet manual
EOF

# The same settings ovsmgr gives a bridge it creates (ovsmgr/southbound/ovsdb.py).
ovs-vsctl --timeout=30 --may-exist add-br "$bridge" -- set bridge "$bridge" datapath_type=system \
  fail_mode=secure protocols=OpenFlow10,OpenFlow13,OpenFlow14,OpenFlow15
ovs-vsctl --timeout=30 --may-exist add-port "$bridge" inside -- set interface inside ofport_request=1
ovs-vsctl --timeout=30 --may-exist add-port "$bridge" outside -- set interface outside ofport_request=2
for port in inside:1 outside:2; do
  got=$(ovs-vsctl --timeout=30 get interface "${port%:*}" ofport)
  [ "$got" = "${port#*:}" ] || { echo "dut.sh: ${port%:*} is ofport $got, not ${port#*:}" >&2; exit 1; }
done

if [ -n "$bench_key" ]; then
  install -d -m 700 /root/.ssh
  install -m 600 "$bench_key" /root/.ssh/ovsmgr-bench
  : > /root/.ssh/config.ovsmgr
  for entry in "${hosts[@]}"; do
    printf 'Host %s\n  HostName %s\n  User root\n  IdentityFile /root/.ssh/ovsmgr-bench\n  StrictHostKeyChecking accept-new\n' \
      "${entry%%=*}" "${entry#*=}" >> /root/.ssh/config.ovsmgr
  done
  touch /root/.ssh/config
  grep -q '^Include config.ovsmgr$' /root/.ssh/config || sed -i '1i Include config.ovsmgr' /root/.ssh/config
fi
echo "provision: dut: $bridge (datapath system, fail_mode secure): inside=ofport 1, outside=ofport 2" >&2
