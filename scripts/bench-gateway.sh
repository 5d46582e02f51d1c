#!/usr/bin/env bash
# scripts/bench-gateway.sh BUILD - part of `make bench`: the field agent's CPU time per polled
# point. suido-gateway polls BENCH_POINTS (2000) Modbus input registers, each every second, from
# the PLC stand-in (tests/field/plc.py --bank) over Modbus TCP, and sends what it reads through the
# gateway library (batched, signed, AES-256-GCM, fsynced outbox) to a bare broker of a generated
# deployment. Two runs side by side, BENCH_GATEWAY_SECONDS (20) each:
#   sent    every reading changes, every one is sent (deadband 0)
#   polled  the same polls with a deadband no change crosses: polling alone (and heartbeats)
# A benchmark, not a test: it prints figures. Last line:
#   bench-gateway: points=N cpu_us_per_point_sent=X cpu_us_per_point_polled=Y ratio=X/Y
#                  cpu_pct_sent=P overruns=O
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(cd "${1:-$TOP/build}" && pwd)
BIN=$BUILD/bin
N=${BENCH_POINTS:-2000}
SECS=${BENCH_GATEWAY_SECONDS:-20}
WORK=$(mktemp -d /tmp/suido-bench-gw.XXXXXX)
chmod 0711 "$WORK"  # the broker's own user (broker/mkconf.sh) must enter it
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ports=$(/usr/bin/python3 -c "
import sys, socket; sys.path.insert(0, '$TOP/tests/integration')
from suite import free_base_port
s = socket.socket(); s.bind(('127.0.0.1', 0))
print(free_base_port(), s.getsockname()[1])")
read -r base plcport <<<"$ports"
SUIDO_BIN=$BIN "$TOP/scripts/mkdeploy.sh" "$WORK/d" --gateways 1 --base-port "$base" >/dev/null
D=$WORK/d
rm -rf "$D/mosquitto/data" && mkdir -p "$D/mosquitto/data"
mosquitto -c "$D/mosquitto/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$base") 2>/dev/null && break; sleep 0.1; done

# a field bundle for gw-0001 from the deployment's files (what `suidoctl gateway provision` writes)
B=$WORK/bundle
mkdir -m 0700 "$B"
G=$D/gateways/gw-0001
cat >"$B/gateway.conf" <<EOF
[gateway]
id = gw-0001
site = bench
kind = pumping
broker = ssl://127.0.0.1:$base
cert = $G/client.crt
key = $G/client.key
sign_key = $G/sign.key
ca = $D/ca/ca.crt
wrap_pub = $D/platform/wrap.pub
EOF

/usr/bin/python3 "$TOP/tests/field/plc.py" --port "$plcport" --bank "$N" >"$WORK/plc.out" 2>"$WORK/plc.log" &
PIDS+=("$!")
for _ in $(seq 100); do grep -q ready "$WORK/plc.out" && break; sleep 0.1; done

map() { # map DEADBAND: N u16 points of the bank, every second
    echo "[device bank]"
    echo "address = tcp:127.0.0.1:$plcport"
    echo "unit_id = 2"
    echo "timeout_ms = 1000"
    for ((i = 0; i < N; i++)); do
        printf '[point p%05d]\ndevice = bank\nregister = input\naddress = %d\nunit = 1\nperiod_ms = 1000\ndeadband = %s\n' "$i" "$i" "$1"
    done
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # run NAME DEADBAND -> "cpu_us_per_point overruns cpu_pct"
    map "$2" >"$WORK/$1.map"
    "$BIN/suido-gateway" --bundle "$B" --map "$WORK/$1.map" --state-dir "$WORK/state-$1" \
        2>"$WORK/$1.log" &
    local pid=$!
    PIDS+=("$pid")
    sleep 3 # connected, the first polls done
    local t0 c0 t1 c1
    t0=$(date +%s.%N); c0=$(ticks "$pid")
    sleep "$SECS"
    t1=$(date +%s.%N); c1=$(ticks "$pid")
    kill -TERM "$pid"; wait "$pid" || true
    local hz; hz=$(getconf CLK_TCK)
    local over; over=$(grep -o 'overruns=[0-9]*' "$WORK/$1.log" | tail -1 | cut -d= -f2)
    /usr/bin/python3 -c "
cpu = ($c1 - $c0) / $hz; wall = $t1 - $t0
print(f'{cpu * 1e6 / ($N * wall):.2f} ${over:-0} {100 * cpu / wall:.1f}')"
}

read -r sent over_sent pct_sent <<<"$(run sent 0)"
read -r polled over_polled _ <<<"$(run polled 1000000)"
echo "bench-gateway: sent: $N points every 1 s, every reading sent: ${sent} us CPU per point, ${pct_sent}% of one core"
echo "bench-gateway: polled: the same polls, nothing crossing the deadband: ${polled} us CPU per point"
ratio=$(/usr/bin/python3 -c "print(f'{$sent / $polled:.2f}' if $polled > 0 else 'n/a')")
echo "bench-gateway: points=$N cpu_us_per_point_sent=$sent cpu_us_per_point_polled=$polled ratio=$ratio cpu_pct_sent=$pct_sent overruns=$((over_sent + over_polled))"
