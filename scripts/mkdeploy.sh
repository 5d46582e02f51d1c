#!/usr/bin/env bash
# scripts/mkdeploy.sh - lays out one complete suido deployment on this machine: the PKI
# (keys/mkpki.sh), the gateway inventory, the data profile, the broker configuration
# (broker/mkconf.sh) and one configuration file per service, with every internal socket's
# allow-list naming exactly the peers that socket expects.
#
#   scripts/mkdeploy.sh DIR [--gateways N] [--base-port P] [--shards K] [--test]
#                           [--profile FILE] [--encrypt] [--archive-postgresql CONNINFO_FILE]
#                           [--standby] [--compose [--broker-bind ADDR] [--broker-port N]]
#
# --standby: a second archive, "archive-standby" (its own keys, state/archive-standby/), that
# replicates the primary archive (replication P+20) and can be promoted (README, "A standby
# archive"): its input P+21 (bound once promoted; every service pushing to the archive connects
# to both), its API P+22, metrics P+47; etc/suidoctl-standby.conf points suidoctl at it.
#
# --archive-postgresql: the archive (and suidoctl) use PostgreSQL instead of the SQLite file; the
# file (mode 0600, it may hold a password) holds the libpq connection string.
#
# --compose: for compose/docker-compose.yml. Endpoints name the socket's network instead of
# 127.0.0.1 (tcp://verify-in:7004: container port 7000 + the offset below; the broker is
# ssl://broker:8883; a metrics endpoint its container's metrics network, verify-metrics:7042),
# and compose/mkfolders.sh then makes DIR/compose/<service>/, each holding
# only that service's configuration and keys, with paths as the container sees them.
# It also writes DIR/compose.env, the deployment's settings (project name suido, DIR, the
# broker's published address --broker-bind, default 127.0.0.1, and port --broker-port, default
# 8883, empty: a port Docker chooses; image tag, the monitor's and Prometheus's ports,
# Prometheus's retention, the compose profiles: standby with --standby), each commented, and
# DIR/dc, the one command of the deployment: docker-compose with that project, that env file
# and this repository's compose file (compose/dc.in). Run again on an existing deployment, it
# keeps compose.env as the operator left it and only adds the settings it lacks (a --broker-*
# option that differs from the file is reported, not applied); DIR/dc is always rewritten.
#
# Ports (all on 127.0.0.1): broker P; registry P+1; archive P+2; profile P+3; verify P+4;
# registry events P+5; gate P+6, P+7; archive API P+8; monitor (HTTPS) P+9; anomaly shard i at
# P+10+i. Metrics endpoints (HTTPS, client certificate "prometheus"): registry P+40, ingest P+41,
# verify P+42, profile P+43, archive P+44, gate P+45, monitor P+46, anomaly shard i P+50+i.
# Layout: DIR/ca, gateways, services, platform (PKI); DIR/inventory.conf; DIR/profile.conf;
# DIR/mosquitto/ (broker config, ACL, persistence); DIR/etc/<service>.conf; DIR/state/<service>/
# (databases); DIR/state/metrics/<service>.prom; DIR/log/ (written by scripts/suite.sh).
set -euo pipefail
PROG=mkdeploy
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=""
NGW=20
BASE=8883
SHARDS=2
TEST=""
PROFILE="$TOP/examples/sim-utility/profile.conf"
BIN="${SUIDO_BIN:-$TOP/build/bin}"
ARCHIVE_PG=""
STANDBY=""
COMPOSE=""
BROKER_BIND=127.0.0.1
BROKER_PORT=8883
BROKER_OPTS=""          # the --broker-* options given, to report those compose.env overrides
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gateways) NGW=$2; shift 2 ;;
        --base-port) BASE=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --test) TEST=--test; shift ;;
        --profile) PROFILE=$2; shift 2 ;;
        --archive-postgresql) ARCHIVE_PG=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
        --standby) STANDBY=archive-standby; shift ;;
        --compose) COMPOSE=1; shift ;;
        --broker-bind) BROKER_BIND=$2; BROKER_OPTS+=" bind"; shift 2 ;;
        --broker-port) BROKER_PORT=$2; BROKER_OPTS+=" port"; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) DIR=$1; shift ;;
    esac
done
[[ -n "$DIR" ]] || die "usage: scripts/mkdeploy.sh DIR [--gateways N] [--base-port P] [--shards K] [--test]"
[[ -f "$PROFILE" ]] || die "$PROFILE: no such profile"
if [[ -n "$BROKER_OPTS" ]]; then
    [[ -n "$COMPOSE" ]] || die "--broker-bind and --broker-port are for --compose deployments"
    ipv4='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
    [[ "$BROKER_BIND" =~ ^$ipv4(\.$ipv4){3}$ ]] ||
        die "--broker-bind: '$BROKER_BIND' is not an IPv4 address (127.0.0.1: this host only, 0.0.0.0: every address)"
    [[ -z "$BROKER_PORT" || ( "$BROKER_PORT" =~ ^[1-9][0-9]{0,4}$ && "$BROKER_PORT" -le 65535 ) ]] ||
        die "--broker-port: '$BROKER_PORT' is not a port from 1 to 65535 (or empty: a port Docker chooses)"
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

SERVICES="registry ingest verify profile anomaly archive suidoctl bench monitor gate sparkplug $STANDBY"
if [[ ! -f "$DIR/ca/ca.key" ]]; then
    "$TOP/keys/mkpki.sh" "$DIR" --gateways "$NGW" --services "$SERVICES" $TEST \
        --keygen "$BIN/suido-keygen" >/dev/null
fi
# The key sealing the operators' TOTP seeds in the registry database (registry.conf seal_key):
# kept outside the database, so a copy of the database (a backup) holds no usable seed.
SEAL_KEY="$DIR/services/registry/seal.key"
if [[ ! -f "$SEAL_KEY" ]]; then
    (umask 077 && head -c 32 /dev/urandom >"$SEAL_KEY.tmp" && mv "$SEAL_KEY.tmp" "$SEAL_KEY")
fi
if [[ -n "$STANDBY" ]]; then
    [[ -z "$ARCHIVE_PG" ]] || die "--standby keeps its own SQLite database: not with --archive-postgresql"
    [[ -f "$DIR/services/$STANDBY/curve.pub" ]] ||
        die "$DIR has no identity $STANDBY: --standby needs a deployment made with it from the start"
fi

# ---- inventory: site, kind, model, firmware of every gateway ---------------------------------
# Every tenth gateway is a treatment plant, every third a pumping station, the rest reservoirs.
inv="$DIR/inventory.conf"
{
    echo "# Gateway inventory of this deployment (imported by the registry at start)."
    for d in "$DIR"/gateways/*/; do
        gw=$(basename "$d")
        n=$((10#${gw#gw-}))
        if (( n % 10 == 1 )); then kind=treatment; model=SG-400; fw=3.1.2
        elif (( n % 3 == 0 )); then kind=pumping; model=SG-200P; fw=2.4.1
        else kind=reservoir; model=SG-200; fw=2.4.1; fi
        printf '\n[gateway %s]\nsite = %s-%02d\nkind = %s\nmodel = %s\nfirmware = %s\n' \
            "$gw" "$kind" "$n" "$kind" "$model" "$fw"
        printf 'sign_pub = %s\ncert = %s\n' "${d%/}/sign.pub" "${d%/}/client.crt"
        # the RSA key commands are encrypted to (a PKI from before has none: no commands)
        [[ ! -f "${d%/}/cmdwrap.pub" ]] || printf 'cmd_pub = %s\n' "${d%/}/cmdwrap.pub"
    done
    for d in "$DIR"/services/*/; do
        printf '\n[service %s]\ncurve_pub = %s\ncert = %s\n' "$(basename "$d")" \
            "${d%/}/curve.pub" "${d%/}/client.crt"
    done
} >"$inv"
cp "$PROFILE" "$DIR/profile.conf"

# compose: the broker runs as its container's own user, never this host's (broker/README.md)
"$TOP/broker/mkconf.sh" "$DIR" "$DIR/mosquitto" "$BASE" ${COMPOSE:+--container} >/dev/null

# ---- service configurations -------------------------------------------------------------------
# The Sparkplug host (docs/sparkplug.md) is on the allow-lists of the sockets it uses when this
# deployment has its keys (a PKI made before it has none) and outside compose, whose deployment
# does not run it yet.
SPB=""
[[ -z "$COMPOSE" && -f "$DIR/services/sparkplug/curve.pub" ]] && SPB=sparkplug
mkdir -p "$DIR/etc" "$DIR/state/metrics" "$DIR/log"
ep() { echo "tcp://127.0.0.1:$(($BASE + $1))"; }
# compose: each server socket is reached under the name of its own network (compose/README.md)
[[ -z "$COMPOSE" ]] || ep() {
    local n
    case $1 in 1) n=registry-api ;; 2) n=archive-in ;; 3) n=profile-in ;; 4) n=verify-in ;;
        5) n=registry-events ;; 6) n=gate-api ;; 7) n=gate-in ;; 8) n=archive-api ;;
        20) n=archive-repl ;; 21) n=archive-standby-in ;; 22) n=archive-standby-api ;;
        *) n=anomaly-$(($1 - 10))-in ;; esac
    echo "tcp://$n:$((7000 + $1))"
}
key() { echo "$DIR/services/$1/curve.pub"; }
allow() { local out=() s; for s in "$@"; do out+=("$s:$(key "$s")"); done; local IFS=,; echo "${out[*]}"; }
shard_eps() { local out=() i; for ((i = 0; i < SHARDS; i++)); do out+=("$(ep $((10 + i)))"); done; local IFS=,; echo "${out[*]}"; }

service_head() { # name [instance]
    local inst=${2:-$1}
    cat <<EOT
# suido-$1 configuration (generated by scripts/mkdeploy.sh)
[service]
name = $1
state_dir = $DIR/state/$inst
metrics_file = $DIR/state/metrics/$inst.prom
log_level = info
curve_public = $DIR/services/$1/curve.pub
curve_secret = $DIR/services/$1/curve.key
EOT
}
mqtt_section() {
    cat <<EOT

[mqtt]
uri = ssl://$([[ -n "$COMPOSE" ]] && echo broker:8883 || echo "localhost:$BASE")
ca = $DIR/ca/ca.crt
cert = $DIR/services/$1/client.crt
key = $DIR/services/$1/client.key
EOT
}
registry_client() {
    cat <<EOT

[registry]
connect = $(ep 1)
server_key = $(key registry)
EOT
}
# The daemon's HTTPS metrics endpoint (common/cm_metrics_http.h): its own server certificate,
# scraped by the holder of prometheus/client.crt only. In compose it listens on the container's
# address on its metrics network, shared with Prometheus only (<instance>-metrics:7000+offset).
metrics_section() { # service port-offset [instance]
    if [[ ! -f "$DIR/services/$1/metrics.crt" ]]; then
        echo "$PROG: note: $DIR has no metrics certificate for $1 (a PKI from before the metrics" \
            "endpoints): $1 runs without one; delete $DIR to start afresh" >&2
        return 0
    fi
    cat <<EOT

[metrics]
listen = $([[ -n "$COMPOSE" ]] && echo "${3:-$1}-metrics:$((7000 + $2))" || echo "127.0.0.1:$(($BASE + $2))")
cert = $DIR/services/$1/metrics.crt
key = $DIR/services/$1/metrics.key
ca = $DIR/ca/ca.crt
crl = $DIR/ca/crl.pem
allow = prometheus
EOT
}
# Where the services push to the archive: the primary, and the standby's input (bound only once
# it is promoted; the PUSH sends on established connections only), each with its own key.
archive_out() {
    if [[ -n "$STANDBY" ]]; then
        printf '\n[output archive]\nconnect = %s, %s\nserver_key = %s, %s\n' "$(ep 2)" "$(ep 21)" \
            "$(key archive)" "$(key "$STANDBY")"
    else
        printf '\n[output archive]\nconnect = %s\nserver_key = %s\n' "$(ep 2)" "$(key archive)"
    fi
}
events_client() {
    cat <<EOT

[events]
connect = $(ep 5)
server_key = $(key registry)
EOT
}

{ service_head registry; cat <<EOT

[api]
bind = $(ep 1)
allow = $(allow verify profile anomaly archive suidoctl gate monitor $SPB $STANDBY)

[events]
bind = $(ep 5)
allow = $(allow verify profile anomaly archive gate $STANDBY)
$(archive_out)

[registry]
inventory = $inv
ca = $DIR/ca/ca.crt
seal_key = $SEAL_KEY

[broker]
state_file = $DIR/mosquitto/identities.state

[profile]
file = $DIR/profile.conf
signing_key = $DIR/platform/profile.key
EOT
metrics_section registry 40; } >"$DIR/etc/registry.conf"

{ service_head ingest; mqtt_section ingest; cat <<EOT

[output verify]
connect = $(ep 4)
server_key = $(key verify)
$(archive_out)
EOT
metrics_section ingest 41; } >"$DIR/etc/ingest.conf"

{ service_head verify; cat <<EOT

[input]
bind = $(ep 4)
allow = $(allow ingest)

[output profile]
connect = $(ep 3)
server_key = $(key profile)
$(archive_out)

[verify]
unwrap_key = $DIR/platform/wrap.key
window_s = 300
max_ahead_s = 10

[profile]
registry_key = $DIR/platform/profile.pub
EOT
registry_client; events_client; metrics_section verify 42; } >"$DIR/etc/verify.conf"

{ service_head profile; cat <<EOT

[input]
bind = $(ep 3)
allow = $(allow verify $SPB)
$(archive_out)

[output anomaly]
connect = $(shard_eps)
server_key = $(key anomaly)

[output gate]
connect = $(ep 7)
server_key = $(key gate)

[profile]
registry_key = $DIR/platform/profile.pub
EOT
registry_client; events_client; metrics_section profile 43; } >"$DIR/etc/profile.conf"

for ((i = 0; i < SHARDS; i++)); do
    { service_head anomaly "anomaly-$i"; cat <<EOT

[input]
bind = $(ep $((10 + i)))
allow = $(allow profile)
$(archive_out)

[profile]
registry_key = $DIR/platform/profile.pub
EOT
    registry_client; events_client; metrics_section anomaly $((50 + i)) "anomaly-$i"; } >"$DIR/etc/anomaly-$i.conf"
done

{ service_head archive; mqtt_section archive; cat <<EOT

[input]
bind = $(ep 2)
allow = $(allow verify profile anomaly registry gate ingest monitor $SPB)

[api]
bind = $(ep 8)
allow = $(allow suidoctl monitor)

[archive]
commit_ms = 50
$([[ -n "$ARCHIVE_PG" ]] && echo "postgresql = $ARCHIVE_PG")
$([[ -n "$STANDBY" ]] && printf '\n[replication]\nrole = primary\nbind = %s\nallow = %s\n' \
    "$(ep 20)" "$(allow "$STANDBY")")
EOT
registry_client; echo "checkpoint_key = $DIR/platform/profile.pub"
events_client; metrics_section archive 44; } >"$DIR/etc/archive.conf"

if [[ -n "$STANDBY" ]]; then
    { service_head "$STANDBY"; mqtt_section "$STANDBY"; cat <<EOT

[input]
bind = $(ep 21)
allow = $(allow verify profile anomaly registry gate ingest monitor $SPB)

[api]
bind = $(ep 22)
allow = $(allow suidoctl monitor)

[archive]
commit_ms = 50

[replication]
role = standby
primary = $(ep 20)
primary_key = $(key archive)
EOT
    registry_client; echo "checkpoint_key = $DIR/platform/profile.pub"
    events_client; metrics_section "$STANDBY" 47; } >"$DIR/etc/$STANDBY.conf"
fi

{ service_head gate; mqtt_section gate; cat <<EOT

[api]
bind = $(ep 6)
allow = $(allow suidoctl)

[input]
bind = $(ep 7)
allow = $(allow profile)
$(archive_out)

[profile]
registry_key = $DIR/platform/profile.pub

[gate]
command_key = $DIR/platform/command.key
expiry_s = 30
EOT
[[ -z "$SPB" ]] || printf '\n[output sparkplug]\nconnect = %s\nserver_key = %s\n' "$(ep 23)" \
    "$(key sparkplug)"
registry_client; events_client; metrics_section gate 45; } >"$DIR/etc/gate.conf"

# the operators' web console: HTTPS on P+9 with its own certificate from the deployment CA
{ service_head monitor; mqtt_section monitor; cat <<EOT

[archive]
connect = $(ep 8)
server_key = $(key archive)
timeout_ms = 10000
$(archive_out)

[profile]
registry_key = $DIR/platform/profile.pub

[http]
bind = 127.0.0.1:$(($BASE + 9))
cert = $DIR/services/monitor/https.crt
key = $DIR/services/monitor/https.key
www = $TOP/services/monitor/www
EOT
registry_client; echo "timeout_ms = 5000"; metrics_section monitor 46; } >"$DIR/etc/monitor.conf"

# the Sparkplug B host: started once $DIR/sparkplug.map names the edge nodes it serves
[[ -z "$SPB" ]] || { service_head sparkplug; mqtt_section sparkplug; cat <<EOT

[input]
bind = $(ep 23)
allow = $(allow gate)

[output profile]
connect = $(ep 3)
server_key = $(key profile)
$(archive_out)

[sparkplug]
map = $DIR/sparkplug.map
host_id = suido
EOT
registry_client; metrics_section sparkplug 48; } >"$DIR/etc/sparkplug.conf"

cat >"$DIR/etc/suidoctl.conf" <<EOT
# suidoctl configuration (generated by scripts/mkdeploy.sh)
[service]
name = suidoctl
curve_public = $DIR/services/suidoctl/curve.pub
curve_secret = $DIR/services/suidoctl/curve.key
$(registry_client)
timeout_ms = 5000
checkpoint_key = $DIR/platform/profile.pub

[archive]
$(if [[ -n "$ARCHIVE_PG" ]]; then echo "postgresql = $ARCHIVE_PG"
  else echo "database = $DIR/state/archive/archive.db"; fi)
connect = $(ep 8)
server_key = $(key archive)

[gate]
connect = $(ep 6)
server_key = $(key gate)

[backup]
registry_database = $DIR/state/registry/registry.db
signing_key = $DIR/platform/backup.key
verify_key = $DIR/platform/backup.pub
ca = $DIR/ca/ca.crt

[pki]
dir = $DIR
script = $TOP/keys/mkpki.sh
broker = ssl://127.0.0.1:$BASE
EOT
# suidoctl for the standby (archive status, promote; and, once promoted, everything [archive])
if [[ -n "$STANDBY" ]]; then
    sed -e "s|^database = .*|database = $DIR/state/$STANDBY/archive.db|" \
        -e "s|^connect = $(ep 8)\$|connect = $(ep 22)|" \
        -e "s|^server_key = $(key archive)\$|server_key = $(key "$STANDBY")|" \
        "$DIR/etc/suidoctl.conf" >"$DIR/etc/suidoctl-standby.conf"
fi

echo "$BASE" >"$DIR/broker.port"
echo "$SHARDS" >"$DIR/anomaly.shards"
[[ -z "$COMPOSE" ]] || "$TOP/compose/mkfolders.sh" "$DIR"

# ---- compose: the deployment's settings (DIR/compose.env) and its one command (DIR/dc) ---------
# Every dc command reads compose.env, so an upgrade, a rollback or a restart keeps what the deploy
# set. A new file gets every setting; an existing one keeps the operator's edits and gets only
# the settings it lacks, appended with their comments.
env_setting() { # KEY VALUE COMMENT...: KEY's block, unless compose.env has KEY already
    local key=$1 value=$2 have; shift 2
    if have=$(grep -m1 "^$key=" "$ENV_OLD" 2>/dev/null); then
        have=${have#*=}
        case "$key" in
            SUIDO_BROKER_BIND) [[ $BROKER_OPTS != *bind* || $have == "$value" ]] ;;
            SUIDO_BROKER_PORT) [[ $BROKER_OPTS != *port* || $have == "$value" ]] ;;
            COMPOSE_PROFILES) [[ -z $STANDBY || ,$have, == *,standby,* ]] ;;
            *) true ;;
        esac || echo "$PROG: note: $DIR/compose.env keeps $key=$have (not $value): edit it there" \
            "to change it, then $DIR/dc up -d" >&2
        return 0
    fi
    printf '\n'
    printf '# %s\n' "$@"
    printf '%s=%s\n' "$key" "$value"
}
if [[ -n "$COMPOSE" ]]; then
    ENV_OLD=$DIR/compose.env
    env_tmp=$(mktemp "$DIR/.compose.env.XXXXXX")
    trap 'rm -f -- "$env_tmp"' EXIT
    if [[ -f "$ENV_OLD" ]]; then
        cat "$ENV_OLD" >"$env_tmp"
    else
        cat >"$env_tmp" <<EOT
# The settings of the suido deployment in $DIR, read by every $DIR/dc command
# (docker-compose --env-file), so that an upgrade, a rollback or a restart keeps them. Change one
# here, then \`$DIR/dc up -d\` recreates the containers it concerns. A variable set here may
# not be set to another value in dc's environment: dc refuses (one-off values do not last).
# Written by scripts/mkdeploy.sh --compose; running it again keeps this file and only adds the
# settings it lacks. One KEY=VALUE a line; comments on lines of their own.
EOT
    fi
    {
        env_setting COMPOSE_PROJECT_NAME suido \
            "The compose project: the names of the containers, networks and volumes start with it" \
            "(suido_archive-data). Never change it on a deployment with data: under another name" \
            "the volumes are new, empty ones."
        env_setting SUIDO_DEPLOY "$DIR" \
            "This folder: each container mounts its own DIR/compose/<name>/ from it, read-only."
        env_setting SUIDO_BROKER_BIND "$BROKER_BIND" \
            "The host address the broker is published on, where field gateways connect" \
            "(127.0.0.1: this host only; 0.0.0.0: every address of the host). mkdeploy --broker-bind."
        env_setting SUIDO_BROKER_PORT "$BROKER_PORT" \
            "The broker's port on that address (empty: a port Docker chooses). mkdeploy --broker-port."
        env_setting SUIDO_TAG latest \
            "The images' tag (compose/images.sh BUILD --tag T): an upgrade or a roll back sets it."
        env_setting SUIDO_MONITOR_PORT 8443 \
            "The operators' console (HTTPS), published on the host's loopback only (empty: a port" \
            "Docker chooses)."
        env_setting SUIDO_PROMETHEUS_PORT 9090 \
            "Prometheus's UI and API (plain HTTP, no login), on the host's loopback only (empty: a" \
            "port Docker chooses). Never publish it elsewhere."
        env_setting SUIDO_PROMETHEUS_RETENTION 30d \
            "How long Prometheus keeps the metrics (its volume prometheus-data)."
        env_setting COMPOSE_PROFILES "${STANDBY:+standby}" \
            "The optional services, comma-separated: standby (the archive's standby; the deployment" \
            "must have been made with --standby), simulator (gateway-sim: simulated gateways" \
            "publishing with every gateway's keys, for tests and trials only, never in production)."
    } >>"$env_tmp"
    chmod 0644 "$env_tmp"
    mv -f -- "$env_tmp" "$DIR/compose.env"
    # DIR/dc: compose/dc.in with this deployment's folder and this repository's compose file
    dc_tmp=$(mktemp "$DIR/.dc.XXXXXX")
    trap 'rm -f -- "$dc_tmp"' EXIT
    dc_text=$(<"$TOP/compose/dc.in")
    q_dir=$(printf '%q' "$DIR")
    q_yml=$(printf '%q' "$TOP/compose/docker-compose.yml")
    dc_text=${dc_text//@DEPLOY@/"$q_dir"}
    dc_text=${dc_text//@COMPOSE_YML@/"$q_yml"}
    printf '%s\n' "$dc_text" >"$dc_tmp"
    chmod 0755 "$dc_tmp"
    mv -f -- "$dc_tmp" "$DIR/dc"
fi
if [[ -n "$COMPOSE" ]]; then
    echo "$PROG: deployment ready in $DIR ($(ls "$DIR/gateways" | wc -l) gateways); its settings:" \
        "$DIR/compose.env; start it: $DIR/dc up -d"
else
    echo "$PROG: deployment ready in $DIR (broker port $BASE, $(ls "$DIR/gateways" | wc -l) gateways)"
fi
