#!/usr/bin/env bash
# scripts/run-tests.sh BUILD - runs every test against the binaries in BUILD (build or build/san):
# the cmocka unit tests beside each module and the integration tests that start a real broker
# and the real services. One runner (pytest) so that its summary line is the last line printed.
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(cd "${1:-$TOP/build}" && pwd)
export SUIDO_BUILD=$BUILD
cd "$TOP"
# Debian's interpreter: the packages installed by scripts/install-deps.sh live there.
exec /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE tests "${@:2}"
