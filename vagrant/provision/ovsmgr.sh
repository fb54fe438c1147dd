#!/usr/bin/env bash
# ovsmgr in /opt/ovsmgr/venv, `ovsmgr` on PATH, and the repository's policies
# in /etc/ovsmgr/ with `datapath: system` (the repository's run on the
# userspace lab; these machines have the kernel datapath).
#
#   OVSMGR_SRC        the repository (default /vagrant, the synced folder)
#   OVSMGR_WHEELHOUSE install offline from these wheels: vagrant/guest/kernel-test fetched the
#                     run-time part of requirements.lock into it (hashes checked then) and
#                     pins.txt names their versions; the kernel-test image has no network
#
# Either way the versions are requirements.lock's, the ones scripts/install gives the host.
set -euo pipefail

SRC=${OVSMGR_SRC:-/vagrant}
VENV=/opt/ovsmgr/venv

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ -n "${OVSMGR_WHEELHOUSE:-}" ]; then
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$OVSMGR_WHEELHOUSE" --no-deps \
    -r "$OVSMGR_WHEELHOUSE/pins.txt"
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$OVSMGR_WHEELHOUSE" --no-deps ovsmgr
else
  # The whole lock with its hashes, pip and setuptools first (ovsmgr is built with them).
  installer=$(mktemp)
  python3 "$SRC/scripts/lockfile" --lock "$SRC/requirements.lock" part pip setuptools > "$installer"
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$installer"
  rm -f "$installer"
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps --no-build-isolation \
    -r "$SRC/requirements.lock"
  # A copy, not an editable install: the synced folder may be rsync'd anew under it.
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation --upgrade "$SRC"
fi
"$VENV/bin/python" -m pip check >/dev/null  # nothing ovsmgr needs is missing
ln -sf "$VENV/bin/ovsmgr" /usr/local/bin/ovsmgr

mkdir -p /etc/ovsmgr
for policy in "$SRC"/policies/*.yaml; do
  sed -E 's/^(  datapath:) (netdev|dpdk)$/\1 system/' "$policy" > "/etc/ovsmgr/$(basename "$policy")"
done
if grep -l '^  datapath: \(netdev\|dpdk\)$' /etc/ovsmgr/*.yaml; then
  echo "provision: the policies above still name a userspace datapath" >&2
  exit 1
fi
echo "provision: $("$VENV/bin/ovsmgr" --version), policies in /etc/ovsmgr" >&2
