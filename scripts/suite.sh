#!/usr/bin/env bash
# scripts/suite.sh - runs the whole suite on this machine: Mosquitto, every service and the
# gateway simulator, on the deployment in ./run (made on first use by scripts/mkdeploy.sh).
#
#   scripts/suite.sh run [--detach]   start everything; print a status line every second until
#                                     Ctrl-C (which stops every process), or return at once
#   scripts/suite.sh stop             stop a detached suite
#   scripts/suite.sh status           one status line
#
# Environment: SUIDO_RUN (deployment folder, default ./run), SUIDO_GATEWAYS (20),
# SUIDO_PORT (broker port, 8883), SUIDO_RATE (batches/s per gateway, 1), SUIDO_BATCH (16).
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${SUIDO_RUN:-$TOP/run}
BIN=${SUIDO_BIN:-$TOP/build/bin}
GATEWAYS=${SUIDO_GATEWAYS:-20}
PORT=${SUIDO_PORT:-8883}
RATE=${SUIDO_RATE:-1}
BATCH=${SUIDO_BATCH:-16}
PIDS=$RUN/pids
LOG=$RUN/log

say() { printf 'suite: %s\n' "$*"; }
die() { printf 'suite: error: %s\n' "$*" >&2; exit 1; }

metric() { # file name -> value (0 if absent)
    local f="$RUN/state/metrics/$1.prom"
    [[ -f "$f" ]] || { echo 0; return; }
    awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }' "$f"
}
sum_metric() { # glob-prefix name
    local total=0 f v
    for f in "$RUN"/state/metrics/$1*.prom; do
        [[ -f "$f" ]] || continue
        v=$(awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }' "$f")
        total=$((total + v))
    done
    echo "$total"
}

status_line() {
    printf '%s received=%s verified=%s rejected=%s alerts=%s archived=%s readings=%s\n' \
        "$(date +%H:%M:%S)" \
        "$(metric ingest suido_ingest_received_total)" \
        "$(metric verify suido_verify_verified_total)" \
        "$(metric verify suido_verify_rejected_all_total)" \
        "$(metric archive suido_archive_alerts_total)" \
        "$(metric archive suido_archive_batches_total)" \
        "$(metric archive suido_archive_readings_total)"
}

start() { # name command...
    local name=$1; shift
    "$@" >>"$LOG/$name.log" 2>&1 &
    echo $! >"$PIDS/$name.pid"
}

wait_port() {
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Stops every process of the suite, in the order that loses nothing (the simulator first, so
# that its outbox keeps what the services have not acknowledged; the broker last), saying which
# one it waits for. Each gets 5 s after SIGTERM, then SIGKILL.
stop_all() {
    [[ -d "$PIDS" ]] || return 0
    local order="gateway-sim monitor sparkplug ingest verify profile anomaly-* gate archive registry mosquitto" n f pid
    for n in $order; do
        for f in "$PIDS"/$n.pid; do
            [[ -f "$f" ]] || continue
            pid=$(cat "$f" 2>/dev/null) || continue
            rm -f "$f"
            kill -0 "$pid" 2>/dev/null || continue
            printf 'suite: stopping %s ...' "$(basename "$f" .pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL "$pid" 2>/dev/null || true
                printf ' killed after 5 s\n'
            else
                printf ' done\n'
            fi
        done
    done
}

# The processes that exited since started (each "name" once), from the pid files.
exited() {
    local f pid
    for f in "$PIDS"/*.pid; do
        pid=$(cat "$f" 2>/dev/null) || continue # gone meanwhile: stopped by make stop
        kill -0 "$pid" 2>/dev/null || basename "$f" .pid
    done
}

# Stops everything after a process exited on its own, showing the end of its log; exits 1.
fail_exited() {
    local n
    for n in "$@"; do
        printf 'suite: error: %s exited; the end of %s:\n' "$n" "$LOG/$n.log" >&2
        tail -n 5 "$LOG/$n.log" 2>/dev/null | sed 's/^/    /' >&2
    done
    stop_all
    die "the suite is stopped because a process exited (fix the cause, then make run again)"
}

# The deployment's first operator, "admin": made once, with a random password kept in
# run/admin.password and the TOTP secret in run/admin.totp (both 0600).
first_operator() {
    [[ -f "$RUN/admin.totp" ]] && { say "operator: admin (password in $RUN/admin.password, TOTP secret in $RUN/admin.totp)"; return 0; }
    local pw i out
    pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    for i in $(seq 1 50); do
        out=$(printf '%s\n' "$pw" | "$BIN/suidoctl" -c "$RUN/etc/suidoctl.conf" --json \
              operator add admin --role admin 2>/dev/null) && break
        sleep 0.1
    done
    [[ -n "${out:-}" ]] || { say "could not create the first operator (see $LOG/registry.log)"; return 0; }
    (umask 077; printf '%s\n' "$pw" >"$RUN/admin.password"
     printf '%s\n' "$out" | sed -n 's/.*"totp_secret":"\([A-Z2-7]*\)".*/\1/p' >"$RUN/admin.totp")
    say "first operator: admin, password in $RUN/admin.password, TOTP secret $(cat "$RUN/admin.totp")"
    say "  log in: build/bin/suidoctl login admin --password-file $RUN/admin.password --totp <code>"
}

running() { [[ -f "$PIDS/mosquitto.pid" ]] && kill -0 "$(cat "$PIDS/mosquitto.pid")" 2>/dev/null; }

cmd_run() {
    local detach=0
    [[ "${1:-}" == "--detach" ]] && detach=1
    running && die "a suite is already running in $RUN (stop it with: make stop)"
    # made anew when missing, or made before the registry sealed TOTP seeds (keys are kept)
    if ! grep -q '^seal_key' "$RUN/etc/registry.conf" 2>/dev/null; then
        [[ ! -f "$RUN/broker.port" ]] || PORT=$(cat "$RUN/broker.port")
        "$TOP/scripts/mkdeploy.sh" "$RUN" --gateways "$GATEWAYS" --base-port "$PORT"
    fi
    PORT=$(cat "$RUN/broker.port")
    mkdir -p "$PIDS" "$LOG"
    local s
    for s in registry ingest verify profile archive gate monitor; do
        [[ -f "$RUN/etc/$s.conf" ]] || continue # a deployment made before the monitor existed
        "$BIN/suido-$s" -c "$RUN/etc/$s.conf" -n >/dev/null
    done
    local sparkplug=0
    if [[ -f "$RUN/etc/sparkplug.conf" && -f "$RUN/sparkplug.map" ]]; then
        "$BIN/suido-sparkplug" -c "$RUN/etc/sparkplug.conf" -n >/dev/null
        sparkplug=1
    fi
    # the broker, once its saved persistence is known to be whole (broker/start/main.c)
    start mosquitto "$BIN/suido-broker-start" "$RUN/mosquitto/mosquitto.conf"
    wait_port "$PORT" || { stop_all; die "broker did not start (see $LOG/mosquitto.log)"; }
    start registry "$BIN/suido-registry" -c "$RUN/etc/registry.conf"
    start archive "$BIN/suido-archive" -c "$RUN/etc/archive.conf"
    for f in "$RUN"/etc/anomaly-*.conf; do
        s=$(basename "$f" .conf)
        start "$s" "$BIN/suido-anomaly" -c "$f"
    done
    start gate "$BIN/suido-gate" -c "$RUN/etc/gate.conf"
    [[ -f "$RUN/etc/monitor.conf" ]] && start monitor "$BIN/suido-monitor" -c "$RUN/etc/monitor.conf"
    start profile "$BIN/suido-profile" -c "$RUN/etc/profile.conf"
    start verify "$BIN/suido-verify" -c "$RUN/etc/verify.conf"
    start ingest "$BIN/suido-ingest" -c "$RUN/etc/ingest.conf"
    # the Sparkplug host, once a map names the edge nodes it serves (docs/sparkplug.md)
    [[ $sparkplug == 0 ]] || start sparkplug "$BIN/suido-sparkplug" -c "$RUN/etc/sparkplug.conf"
    sleep 0.5
    local simlog_at=0
    [[ ! -f "$LOG/gateway-sim.log" ]] || simlog_at=$(stat -c %s "$LOG/gateway-sim.log")
    start gateway-sim "$BIN/suido-gateway-sim" --broker "ssl://localhost:$PORT" --deploy "$RUN" \
        --rate "$RATE" --batch "$BATCH" --encrypt --state-dir "$RUN/state/gateway-sim"
    first_operator
    # every process must still be up once the simulator has had time to load its gateways
    sleep 1
    local gone
    gone=$(exited)
    [[ -z "$gone" ]] || fail_exited $gone
    # gateways the simulator skipped (disposed or revoked), as it said in its log
    tail -c +$((simlog_at + 1)) "$LOG/gateway-sim.log" | sed -n 's/^suido-gateway-sim: \(skipping .*\)/suite: gateway-sim: \1/p'
    say "broker: ssl://localhost:$PORT (TLS only, client certificates from $RUN/ca)"
    say "PKI: $RUN/{ca,gateways,services,platform}  logs: $LOG  databases: $RUN/state/*/"
    if [[ -f "$RUN/etc/monitor.conf" ]]; then
        local mport
        mport=$(sed -n 's/^bind = .*:\([0-9]*\)$/\1/p' "$RUN/etc/monitor.conf")
        say "monitor: https://localhost:$mport/ (certificate from $RUN/ca/ca.crt: trust it in the browser)"
        say "  log in as admin: password in $RUN/admin.password, code from the TOTP secret in $RUN/admin.totp"
    else
        say "monitor: this deployment predates it; delete $RUN to make one with it"
    fi
    if [[ $detach == 1 ]]; then
        say "running in the background; stop with: make stop"
        return 0
    fi
    trap 'echo; say "stopping"; stop_all; say "stopped"; exit 0' INT TERM
    say "Ctrl-C stops every process"
    while true; do
        sleep 1
        # `make stop` from another terminal removed every pid file: that is a stop, not a failure
        if [[ ! -f "$PIDS/mosquitto.pid" ]] && ! compgen -G "$PIDS/*.pid" >/dev/null; then
            say "stopped (make stop)"
            exit 0
        fi
        status_line
        gone=$(exited)
        [[ -z "$gone" ]] || fail_exited $gone
    done
}

case "${1:-}" in
    run) shift; cmd_run "$@" ;;
    stop) stop_all; say "stopped" ;;
    status) status_line ;;
    *) echo "usage: scripts/suite.sh run [--detach] | stop | status" >&2; exit 2 ;;
esac
