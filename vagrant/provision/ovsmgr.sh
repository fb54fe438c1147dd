#!/usr/bin/env bash
# ovsmgr in /opt/ovsmgr/venv, `ovsmgr` on PATH, and the repository's policies
# in /etc/ovsmgr/ with `datapath: system` (the repository's run on the
# userspace lab; these machines have the kernel datapath).
#
#   OVSMGR_SRC        the repository (default /vagrant, the synced folder)
#   OVSMGR_WHEELHOUSE install offline from these wheels: vagrant/guest/kernel-test fetched the
#                     run-time part of requirements.lock into it (hashes checked then) and
#                     pins.txt names their versions; the kernel-test image has no network.
#                     ovsmgr itself is its wheel there if it has one (the kernel-test image),
#                     else built from OVSMGR_SRC. The box `make vagrant-box` builds carries one
#                     in /opt/ovsmgr/wheelhouse, used when every pin is in requirements.lock.
#
# Either way the versions are requirements.lock's, the ones scripts/install gives the host.
set -euo pipefail

SRC=${OVSMGR_SRC:-/vagrant}
VENV=/opt/ovsmgr/venv
BOX_WHEELHOUSE=/opt/ovsmgr/wheelhouse

box_wheelhouse() {  # the box's wheelhouse, if it holds exactly requirements.lock's versions
  local pin
  [ -f "$BOX_WHEELHOUSE/pins.txt" ] || return 1
  while read -r pin; do
    if ! grep -qxF -- "$pin \\" "$SRC/requirements.lock"; then
      echo "provision: the box has $pin, requirements.lock does not: installing from the index" \
        "(make vagrant-box builds a box from this lock)" >&2
      return 1
    fi
  done < "$BOX_WHEELHOUSE/pins.txt"
  echo "$BOX_WHEELHOUSE"
}

WHEELHOUSE=${OVSMGR_WHEELHOUSE:-$(box_wheelhouse || true)}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ -n "$WHEELHOUSE" ]; then
  # The box's venv has them already (pip takes a minute to find that out on an emulated CPU).
  if ! cmp -s "$WHEELHOUSE/pins.txt" "$VENV/.ovsmgr-pins"; then
    "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELHOUSE" --no-deps \
      -r "$WHEELHOUSE/pins.txt"
    cp "$WHEELHOUSE/pins.txt" "$VENV/.ovsmgr-pins"
  fi
  if compgen -G "$WHEELHOUSE/ovsmgr-*.whl" >/dev/null; then
    "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELHOUSE" --no-deps ovsmgr
  else  # this checkout, with the locked setuptools the pins brought
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation \
      --force-reinstall "$SRC"
  fi
else
  # The whole lock with its hashes, pip and setuptools first (ovsmgr is built with them).
  installer=$(mktemp)
  python3 "$SRC/scripts/lockfile" --lock "$SRC/requirements.lock" part pip setuptools > "$installer"
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$installer"
  rm -f "$installer"
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps --no-build-isolation \
    -r "$SRC/requirements.lock"
  # A copy, not an editable install: the synced folder may be rsync'd anew under it.
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$SRC"
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
