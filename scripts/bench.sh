#!/usr/bin/env bash
# scripts/bench.sh BUILD - `make bench`: the simulator at full speed through the whole suite and,
# in the same run, through the bare broker to a plain subscriber, with the same gateways,
# message sizes (readings per batch), TLS and QoS 1. A benchmark, not a test: it prints figures.
#
# Last line:
#   bench: readings_per_s=R msgs_per_s=M raw_broker_msgs_per_s=B ratio=M/B p50_ms=X p99_ms=Y
# R and M count what the archive committed and acknowledged end to end (publish to ack, the
# gateways' own count); p50/p99 are publish-to-ack latencies seen by the gateways when the suite
# runs at half that throughput (the saturated latencies, which measure queueing, are printed
# on the line before). B is the bare broker fed by suido-bench-pub (one prepared payload of the
# simulator's message size, so that the generator, not signing and encrypting, is cheap); the
# simulator through the bare broker is printed too, each run with its processes' CPU. The lines
# before give each process's CPU per batch during the full-speed suite run (from /proc), and the
# pipeline's sum (ingest, verify, profile, anomaly, archive). Settings: BENCH_GATEWAYS (20),
# BENCH_SECONDS (15), BENCH_BATCH (32 readings per message), BENCH_ENCRYPT (1),
# BENCH_POSTGRESQL (1: the full-speed run again with the archive on a local PostgreSQL 15
# started for it, as root, printed beside the SQLite figure with their ratio; 0: skipped).
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(cd "${1:-$TOP/build}" && pwd)
BIN=$BUILD/bin
GW=${BENCH_GATEWAYS:-20}
SECS=${BENCH_SECONDS:-15}
BATCH=${BENCH_BATCH:-32}
ENC=${BENCH_ENCRYPT:-1}
WORK=$(mktemp -d /tmp/suido-bench.XXXXXX)
chmod 0711 "$WORK"  # the broker's own user (broker/mkconf.sh) must enter it
PIDS=()
PGROOT=""
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n $PGROOT ]]; then
        runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PGROOT/data" -m immediate \
            -w stop >/dev/null 2>&1 || true
        rm -rf "$PGROOT"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

base=$(/usr/bin/python3 -c "
import sys; sys.path.insert(0, '$TOP/tests/integration')
from suite import free_base_port; print(free_base_port())")
SUIDO_BIN=$BIN "$TOP/scripts/mkdeploy.sh" "$WORK/d" --gateways "$GW" --base-port "$base" --shards 1 >/dev/null
D=$WORK/d
URI="ssl://localhost:$base"
encflag=(); [[ $ENC == 1 ]] && encflag=(--encrypt)

broker() {
    rm -rf "$D/mosquitto/data" && mkdir -p "$D/mosquitto/data"
    mosquitto -c "$D/mosquitto/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
    BROKER=$!
    PIDS+=("$BROKER")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$base") 2>/dev/null && return; sleep 0.1; done
    echo "bench: broker did not start" >&2; exit 1
}
json() { /usr/bin/python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
TCK=$(getconf CLK_TCK)
# CPU seconds a running process has used (user + system), from /proc
cpu_of() { awk -v t="$TCK" '{ sub(/^.*\) /, ""); printf "%.3f\n", ($12 + $13) / t }' "/proc/$1/stat"; }
# Runs a command in the foreground; its CPU seconds (user + system, children included) to file $1
cpu_run() {
    /usr/bin/python3 -c '
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime:.3f}\n")
sys.exit(rc)' "$@"
}
us_per() { /usr/bin/python3 -c "import sys; print(f'{($2 - $1) * 1e6 / max(1, $3):.0f}')"; }

# ---- 1. bare broker: a load generator -> Mosquitto -> plain subscriber ----------------------
# $1: sim (the simulator, as the suite gets it) or pub (suido-bench-pub, the simulator's message
# size prepared once). Prints "msgs_per_s gen_cpu_us broker_cpu_us sub_cpu_us" (per message).
bare_broker() {
    broker
    "$BIN/suido-bench-sub" --broker "$URI" --deploy "$D" --out "$WORK/raw-$1.json" \
        2>>"$WORK/sub.log" &
    SUB=$!; PIDS+=("$SUB")
    sleep 1
    local b0 s0 b1 s1 n
    b0=$(cpu_of "$BROKER"); s0=$(cpu_of "$SUB")
    if [[ $1 == sim ]]; then
        cpu_run "$WORK/gen-$1.cpu" "$BIN/suido-gateway-sim" --broker "$URI" --deploy "$D" \
            --rate 0 --batch "$BATCH" "${encflag[@]}" --duration "$SECS" --quiet \
            --report "$WORK/raw-sim-report.json"
    else
        cpu_run "$WORK/gen-$1.cpu" "$BIN/suido-bench-pub" --broker "$URI" --deploy "$D" \
            --gateways "$GW" --size "$MSG_BYTES" --seconds "$SECS" >"$WORK/pub.json"
    fi
    sleep 1
    b1=$(cpu_of "$BROKER"); s1=$(cpu_of "$SUB")
    kill -TERM "$SUB"; wait "$SUB" || true
    kill -TERM "$BROKER"; wait "$BROKER" || true
    n=$(json "$WORK/raw-$1.json" "d['messages']")
    echo "$(json "$WORK/raw-$1.json" "d['msgs_per_s']") $(us_per 0 "$(cat "$WORK/gen-$1.cpu")" "$n")" \
         "$(us_per "$b0" "$b1" "$n") $(us_per "$s0" "$s1" "$n")"
}
read -r RAW_SIM RAW_SIM_GEN RAW_SIM_BROKER RAW_SIM_SUB <<<"$(bare_broker sim)"
MSG_BYTES=$(json "$WORK/raw-sim.json" "round(d['bytes'] / max(1, d['messages']))")
read -r RAW RAW_GEN RAW_BROKER RAW_SUB <<<"$(bare_broker pub)"

# ---- 2. whole suite: simulator -> broker -> ingest -> verify -> profile -> anomaly/archive -----
broker
declare -A PID_OF
STAGES=(registry archive anomaly-0 profile verify ingest)
for s in "${STAGES[@]}"; do
    b=suido-$s; [[ $s == anomaly-* ]] && b=suido-anomaly
    "$BIN/$b" -c "$D/etc/$s.conf" >>"$WORK/$s.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$s]=$!
    [[ $s == archive ]] && ARCHIVE=$!
done
PID_OF[broker]=$BROKER
for _ in $(seq 100); do
    grep -q '^suido_ingest_connected 1' "$D/state/metrics/ingest.prom" 2>/dev/null && break; sleep 0.1
done
declare -A CPU0
for s in "${!PID_OF[@]}"; do CPU0[$s]=$(cpu_of "${PID_OF[$s]}"); done
cpu_run "$WORK/suite-sim.cpu" "$BIN/suido-gateway-sim" --broker "$URI" --deploy "$D" --rate 0 \
    --batch "$BATCH" "${encflag[@]}" --duration "$SECS" --wait-acks 30 --quiet \
    --report "$WORK/suite-sim.json"
acked=$(json "$WORK/suite-sim.json" "d['acked_batches']")
cpuline="bench: cpu_us_per_batch sim=$(us_per 0 "$(cat "$WORK/suite-sim.cpu")" "$acked")"
pipeline=0
for s in broker ingest verify profile anomaly-0 archive registry; do
    us=$(us_per "${CPU0[$s]}" "$(cpu_of "${PID_OF[$s]}")" "$acked")
    cpuline+=" $s=$us"
    [[ $s == broker || $s == registry ]] || pipeline=$((pipeline + us))
done
cpuline+=" pipeline=$pipeline (ingest+verify+profile+anomaly+archive)"
total=$(json "$WORK/suite-sim.json" "d['total_s']")
sat_p50=$(json "$WORK/suite-sim.json" "d['latency_ms']['p50']")
sat_p99=$(json "$WORK/suite-sim.json" "d['latency_ms']['p99']")

# ---- 3. latency below saturation: the same suite paced at half the throughput just measured ---
# (at full speed the latency is the queue in front of the slowest stage, not the path itself)
rate=$(/usr/bin/python3 -c "import sys; print(max(0.1, round(0.5 * $acked / $total / $GW, 2)))")
"$BIN/suido-gateway-sim" --broker "$URI" --deploy "$D" --rate "$rate" --batch "$BATCH" "${encflag[@]}" \
    --duration 10 --wait-acks 30 --quiet --report "$WORK/paced-sim.json"
p50=$(json "$WORK/paced-sim.json" "d['latency_ms']['p50']")
p99=$(json "$WORK/paced-sim.json" "d['latency_ms']['p99']")
# ---- 4. (BENCH_POSTGRESQL=1) the full-speed run again, the archive on PostgreSQL --------------
pgline=""
if [[ ${BENCH_POSTGRESQL:-1} == 1 ]]; then
    PGROOT=$(/usr/bin/python3 -c "
import sys; sys.path.insert(0, '$TOP/tests/integration')
import pg; p = pg.PostgreSQL(); p.write_conninfo('$WORK/archive.pg'); print(p.root)")
    kill -TERM "$ARCHIVE"; wait "$ARCHIVE" || true
    sed -i "s|^commit_ms = 50\$|&\npostgresql = $WORK/archive.pg|" "$D/etc/archive.conf"
    "$BIN/suido-archive" -c "$D/etc/archive.conf" >>"$WORK/archive-pg.log" 2>&1 &
    PIDS+=("$!")
    sleep 2
    "$BIN/suido-gateway-sim" --broker "$URI" --deploy "$D" --rate 0 --batch "$BATCH" "${encflag[@]}" \
        --duration "$SECS" --wait-acks 30 --quiet --report "$WORK/pg-sim.json"
    pgline=$(/usr/bin/python3 -c "
pg = $(json "$WORK/pg-sim.json" "d['acked_batches']") / $(json "$WORK/pg-sim.json" "d['total_s']")
lite = $acked / $total
print(f'bench: archive on postgresql msgs_per_s={pg:.0f} (sqlite msgs_per_s={lite:.0f})'
      f' postgresql_to_sqlite_ratio={pg / lite if lite else 0:.3f}')")
fi
echo "bench: settings gateways=$GW seconds=$SECS readings_per_msg=$BATCH encrypt=$ENC qos=1 tls=yes"
echo "bench: bare broker, simulator as generator: msgs_per_s=$RAW_SIM cpu_us_per_msg" \
     "simulator=$RAW_SIM_GEN broker=$RAW_SIM_BROKER subscriber=$RAW_SIM_SUB"
echo "bench: bare broker, suido-bench-pub as generator ($MSG_BYTES-byte messages):" \
     "msgs_per_s=$RAW cpu_us_per_msg generator=$RAW_GEN broker=$RAW_BROKER subscriber=$RAW_SUB"
echo "bench: suite acked_batches=$acked in ${total}s (saturated: p50_ms=$sat_p50 p99_ms=$sat_p99)"
echo "$cpuline"
echo "bench: latency measured at $rate batches/s per gateway (half the measured throughput)"
[[ -n $pgline ]] && echo "$pgline"
/usr/bin/python3 - "$acked" "$total" "$RAW" "$p50" "$p99" "$BATCH" <<'PY'
import sys
acked, total, raw, p50, p99, batch = sys.argv[1:]
m = float(acked) / float(total)
raw = float(raw)
print(f"bench: readings_per_s={m * int(batch):.0f} msgs_per_s={m:.0f} raw_broker_msgs_per_s={raw:.0f} "
      f"ratio={m / raw if raw else 0:.3f} p50_ms={float(p50 or 0):.1f} p99_ms={float(p99 or 0):.1f}")
PY
