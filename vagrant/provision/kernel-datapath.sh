#!/usr/bin/env bash
# Open vSwitch on the kernel datapath: the openvswitch module loaded at boot and
# the system OVS service running, proven by a throw-away bridge that must get
# the kernel datapath (system@ovs-system).
#
# OVSMGR_PROVISION_IMAGE=1 (set by vagrant/guest/build-image): configure only;
# nothing may be loaded or started from a chroot. The guest's test init loads
# the module and starts OVS itself.
set -euo pipefail

mkdir -p /etc/modules-load.d
echo openvswitch > /etc/modules-load.d/openvswitch.conf

if [ "${OVSMGR_PROVISION_IMAGE:-0}" = 1 ]; then
  echo "provision: kernel datapath configured (image build: nothing started)" >&2
  exit 0
fi

modprobe openvswitch
systemctl enable --now openvswitch-switch
ovs-vsctl --timeout=30 show >/dev/null
probe=ovsmgr-probe
ovs-vsctl --timeout=30 --may-exist add-br "$probe" -- set bridge "$probe" datapath_type=system
trap 'ovs-vsctl --timeout=30 --if-exists del-br "$probe"' EXIT
if ! ovs-appctl dpctl/show | grep -q '^system@ovs-system:'; then
  echo "provision: the kernel datapath did not come up:" >&2
  ovs-appctl dpctl/show >&2 || true
  exit 1
fi
echo "provision: Open vSwitch $(ovs-vswitchd --version | awk 'NR==1{print $NF}') on the kernel datapath" >&2
