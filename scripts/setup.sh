#!/usr/bin/env bash
# Set up kmlbench from nothing on Debian 12, as root: system packages, a
# virtualenv with the harness, and the user-space KML library.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Everything the harness runs on the host: QEMU, fio, the guest's userland
# (busybox, dropbear), the kernel tarball and what building it needs, and
# what building a static fio for the guest from Debian's source needs;
# chromium renders the HTML report in the tests (no browser download).
PACKAGES=(
  qemu-system-x86 qemu-utils fio busybox-static dropbear-bin openssh-client
  linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev
  cpio xz-utils lz4 kmod perl git ca-certificates dpkg-dev libaio-dev zlib1g-dev
  python3 python3-venv python3-dev
  chromium
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# The user-space KML library, from the same C sources as the kernel's.
.venv/bin/python -c 'from kmlbench.kml.build import build_libkml; print("setup: libkml:", build_libkml())'
echo "setup: ready (.venv/bin/kmlbench)"
