#!/usr/bin/env bash
# Install whatever the test suite needs on a fresh machine, then run it.
#   bash scripts/test.sh [pytest args]
# Installs: qemu-utils (apt; the oracle the tests compare against), chromium and
# chromium-driver (apt; the browser tests of the HTML report, driven by selenium),
# e2fsprogs, gdisk, dosfstools, mtools, xfsprogs, btrfs-progs, ntfs-3g (apt; guest disks
# with real partition tables and file systems for the recovery tests, built without mounting),
# the pinned Kaitai Struct compiler (npm; for the stale-parser test), the package
# with its test extras (pip: pytest, hypothesis, selenium). Each apt package is
# installed only when its command is missing, with one `apt-get update` for all.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || missing+=(qemu-utils)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# guest disks with real partition tables and file systems, for the recovery tests (never mounted)
command -v mke2fs >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v sgdisk >/dev/null 2>&1 || missing+=(gdisk)
command -v mkfs.vfat >/dev/null 2>&1 || missing+=(dosfstools)
command -v mcopy >/dev/null 2>&1 || missing+=(mtools)
command -v mkfs.xfs >/dev/null 2>&1 || missing+=(xfsprogs)
command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
command -v mkntfs >/dev/null 2>&1 || missing+=(ntfs-3g)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (apt)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d tools/ksc/node_modules/kaitai-struct-compiler ]; then
    echo "== installing kaitai-struct-compiler (npm)"
    npm ci --prefix tools/ksc --no-audit --no-fund --loglevel=error
fi
echo "== installing qforensics"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
echo "== qemu-img: $(qemu-img --version | head -1)"
echo "== chromium: $(chromium --version 2>/dev/null | head -1)"
exec python3 -m pytest "$@"
