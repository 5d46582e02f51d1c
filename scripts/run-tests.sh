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
# Temporary folders under the build: the broker runs as its own user (broker/mkconf.sh), which
# must enter the test deployments, and pytest's default base folder is reset to 0700 by every
# pytest that starts on the machine.
exec /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE --basetemp "$BUILD/pytest-tmp" tests "${@:2}"
