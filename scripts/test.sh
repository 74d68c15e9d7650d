#!/usr/bin/env bash
# Install whatever the test suite needs on a fresh machine, then run it.
#   bash scripts/test.sh [pytest args]
# Installs: qemu-utils (apt; the oracle the tests compare against), the pinned
# Kaitai Struct compiler (npm; for the stale-parser test), the package with its
# test extras (pip).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
    echo "== installing qemu-utils"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq qemu-utils >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
    echo "== installing nodejs"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d tools/ksc/node_modules/kaitai-struct-compiler ]; then
    echo "== installing kaitai-struct-compiler (npm)"
    npm ci --prefix tools/ksc --no-audit --no-fund --loglevel=error
fi
echo "== installing qforensics"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
echo "== qemu-img: $(qemu-img --version | head -1)"
exec python3 -m pytest "$@"
