#!/usr/bin/env bash
# Installs every Debian package suido needs to build, run and test. Shared by `make run`,
# `make test` and .ci/run; idempotent and quiet when everything is already present.
set -euo pipefail

PKGS=(
  build-essential pkg-config
  openssl libssl-dev
  mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev
  libpaho-mqtt-dev libpaho-mqtt1.3
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  libzmq3-dev libczmq-dev
  libsqlite3-dev sqlite3
  libpq-dev postgresql
  libmicrohttpd-dev libgnutls28-dev
  prometheus
  libcmocka-dev libjansson-dev libcsv-dev libgsl-dev liboath-dev libargon2-dev
  # the PLC stand-in (tests/field/plc.py): pymodbus imports pyserial-asyncio (and so pyserial),
  # which Debian only recommends
  libmodbus-dev libseccomp-dev libcap-ng-dev python3-pymodbus python3-serial-asyncio mbpoll
  python3 python3-pytest python3-paho-mqtt python3-zmq python3-cryptography python3-protobuf
  python3-yaml
  procps psmisc iproute2
  chromium chromium-driver python3-selenium
  debootstrap
  # the lint of the shell scripts (shellcheck compose/*.sh scripts/*.sh)
  shellcheck
  clang libclang-rt-14-dev
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root or install them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start a system-wide broker on port 1883 and a Prometheus on 9090; suido
# runs its own (the tests scrape with a Prometheus of their own configuration), so the packaged
# services are stopped and disabled (only those).
for svc in mosquitto prometheus; do
  printf '%s\n' "${missing[@]}" | grep -qx "$svc" || continue
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    invoke-rc.d "$svc" stop >/dev/null 2>&1 || true
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done
