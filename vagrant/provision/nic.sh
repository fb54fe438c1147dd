# Sourced by dut.sh and host.sh: find a NIC by MAC and give it a fixed name, now
# and at every boot. Providers name NICs differently (eth1, ens6, enp0s8), the
# MAC the Vagrantfile gives each data NIC is what stays the same.

nic_by_mac() {  # nic_by_mac MAC: the name of the interface that has it
  local dev
  for dev in /sys/class/net/*; do
    if [ "$(cat "$dev/address" 2>/dev/null)" = "$1" ]; then
      basename "$dev"
      return 0
    fi
  done
  echo "provision: no network interface has MAC $1" >&2
  return 1
}

claim_nic() {  # claim_nic MAC NAME: rename it now; udev renames it at boot (.link file)
  local mac=$1 name=$2 current
  current=$(nic_by_mac "$mac")
  mkdir -p /etc/systemd/network /etc/network/interfaces.d
  printf '[Match]\nMACAddress=%s\n\n[Link]\nName=%s\n' "$mac" "$name" > "/etc/systemd/network/10-ovsmgr-$name.link"
  if [ "$current" != "$name" ]; then
    ip link set dev "$current" down
    ip link set dev "$current" name "$name"
  fi
  ip link set dev "$name" up
}
