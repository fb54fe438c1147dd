#!/usr/bin/env bash
# Debian packages of every ovsmgr test machine: the three Vagrant VMs and the kernel-test guest
# image (vagrant/guest/build-image runs this in the image's chroot). They are the `switch` group
# of scripts/install, the list the host and CI's pristine root install too: one list, tested
# everywhere.
#
#   packages.sh          install them
#   packages.sh --list   print their names, one a line (the image cache key uses them)
#
# OVSMGR_SRC: the repository (default: the one this script is in; /vagrant in the VMs).
set -euo pipefail

SRC=${OVSMGR_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
if [ "${1:-}" = --list ]; then
  exec bash "$SRC/scripts/install" --list switch
fi
bash "$SRC/scripts/install" --packages-only switch
echo "provision: packages installed: $(bash "$SRC/scripts/install" --list switch | tr '\n' ' ')" >&2
