#!/usr/bin/env bash
# broker/mkconf.sh - writes the Mosquitto 2.0 configuration of one suido deployment
# (see broker/README.md).
#
#   broker/mkconf.sh DEPLOYDIR OUTDIR PORT [--bind 127.0.0.1] [--max-packet 65536]
#                    [--plugin PATH] [--metrics-file PATH] [--user mosquitto | --container]
#
# DEPLOYDIR is a PKI made by keys/mkpki.sh. Writes OUTDIR/mosquitto.conf and OUTDIR/acl, creates
# OUTDIR/data/ (persistence) and OUTDIR/identities.state (the suido plugin's identity states; an
# existing one is kept, and only identities it does not list yet are added, as active). Start the
# broker with `mosquitto -c OUTDIR/mosquitto.conf`.
# The broker never runs as root: started as root, Mosquitto switches to --user (default
# "mosquitto", the Debian package's system user) before it reads its key. Run as root, this
# script gives that user what the broker reads and writes, and nothing else: DEPLOYDIR/broker/
# (its key and certificate), OUTDIR/data/ (persistence) and the metrics file's directory (group
# write, sticky), then checks as that user that every file is reachable. --container: the
# broker will run in a container as that container's own unprivileged user (compose/): no host
# user is involved and nothing is given away here.
# After a revocation (keys/mkpki.sh DEPLOYDIR --revoke ID) send SIGHUP to the broker so that it
# re-reads ca/crl.pem. Re-run this script (and SIGHUP) after adding gateways.
set -euo pipefail
umask 022

PROG=mkconf
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage() {
    echo "usage: broker/mkconf.sh DEPLOYDIR OUTDIR PORT [--bind 127.0.0.1] [--max-packet 65536]" >&2
    echo "                        [--plugin PATH] [--metrics-file PATH] [--user mosquitto | --container]" >&2
    exit 2
}

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIND=127.0.0.1
MAXPKT=65536
# The broker plugin (broker/plugin/README.md): $SUIDO_PLUGIN, else the one built beside the
# binaries in $SUIDO_BIN (build/san/bin -> build/san/lib), else build/lib.
PLUGIN=${SUIDO_PLUGIN:-}
if [[ -z "$PLUGIN" && -n "${SUIDO_BIN:-}" && -f "${SUIDO_BIN%/}/../lib/suido_plugin.so" ]]; then
    PLUGIN=${SUIDO_BIN%/}/../lib/suido_plugin.so
fi
PLUGIN=${PLUGIN:-$TOP/build/lib/suido_plugin.so}
METRICS=""
BROKER_USER=mosquitto
CONTAINER=0
POS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bind) [[ $# -ge 2 ]] || die "--bind needs a value"; BIND=$2; shift 2 ;;
        --max-packet) [[ $# -ge 2 ]] || die "--max-packet needs a value"; MAXPKT=$2; shift 2 ;;
        --plugin) [[ $# -ge 2 ]] || die "--plugin needs a value"; PLUGIN=$2; shift 2 ;;
        --metrics-file) [[ $# -ge 2 ]] || die "--metrics-file needs a value"; METRICS=$2; shift 2 ;;
        --user) [[ $# -ge 2 ]] || die "--user needs a value"; BROKER_USER=$2; shift 2 ;;
        --container) CONTAINER=1; shift ;;
        -h|--help) usage ;;
        -*) die "unknown option: $1" ;;
        *) POS+=("$1"); shift ;;
    esac
done
[[ ${#POS[@]} -eq 3 ]] || usage
DEPLOY=${POS[0]} OUT=${POS[1]} PORT=${POS[2]}

[[ "$PORT" =~ ^[0-9]+$ ]] && (( 10#$PORT >= 1 && 10#$PORT <= 65535 )) || die "bad PORT '$PORT'"
PORT=$((10#$PORT))
[[ "$MAXPKT" =~ ^[0-9]+$ ]] && (( 10#$MAXPKT >= 1024 && 10#$MAXPKT <= 268435455 )) ||
    die "--max-packet must be 1024..268435455 bytes (got '$MAXPKT')"
MAXPKT=$((10#$MAXPKT))
[[ "$BIND" =~ ^[0-9A-Za-z.:-]+$ ]] || die "bad --bind address '$BIND'"
[[ "$BROKER_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ && "$BROKER_USER" != root ]] ||
    die "bad --user '$BROKER_USER' (a system user's name; the broker never runs as root)"

[[ -d "$DEPLOY" ]] || die "DEPLOYDIR $DEPLOY does not exist"
DEPLOY=$(cd "$DEPLOY" && pwd)
# Mosquitto splits config lines at spaces: paths with white space cannot be written.
[[ "$DEPLOY" != *[[:space:]]* ]] || die "DEPLOYDIR path contains white space: $DEPLOY"

CAFILE=$DEPLOY/ca/ca.crt CRLFILE=$DEPLOY/ca/crl.pem
CERTFILE=$DEPLOY/broker/server.crt KEYFILE=$DEPLOY/broker/server.key
for f in "$CAFILE" "$CRLFILE" "$CERTFILE" "$KEYFILE"; do
    [[ -f "$f" && -r "$f" ]] || die "missing or unreadable $f (make the PKI with keys/mkpki.sh first)"
done

[[ -f "$PLUGIN" && -r "$PLUGIN" ]] ||
    die "broker plugin $PLUGIN not found (run 'make build', or pass --plugin PATH)"
PLUGIN=$(cd "$(dirname "$PLUGIN")" && pwd)/$(basename "$PLUGIN")
[[ "$PLUGIN" != *[[:space:]]* ]] || die "plugin path contains white space: $PLUGIN"
METRICS=${METRICS:-$DEPLOY/state/metrics/mosquitto.prom}
[[ "$METRICS" == /* ]] || METRICS=$PWD/$METRICS
[[ "$METRICS" != *[[:space:]]* ]] || die "metrics file path contains white space: $METRICS"

# Gateways = the directories DEPLOYDIR/gateways/*/ that hold a client certificate.
GWS=()
shopt -s nullglob
for d in "$DEPLOY"/gateways/*/; do
    gw=$(basename "$d")
    # Same rule as the services' topic parser (common/cm_svc.h): 1..64 of [a-z0-9-]. That also keeps
    # MQTT wildcards, '/' and white space out of the ACL. "alerts" is the alert topic tree.
    [[ "$gw" =~ ^[a-z0-9-]{1,64}$ ]] || die "bad gateway directory name '$gw' in $DEPLOY/gateways"
    [[ "$gw" != alerts ]] || die "a gateway may not be called 'alerts' (suido/v1/alerts/# is the alert tree)"
    [[ -f "$d/client.crt" ]] || die "missing $d/client.crt"
    GWS+=("$gw")
done
# Services = the directories DEPLOYDIR/services/*/ that hold a client certificate.
SVCS=()
for d in "$DEPLOY"/services/*/; do
    s=$(basename "$d")
    [[ "$s" =~ ^[a-z][a-z0-9_-]{0,63}$ ]] || die "bad service directory name '$s' in $DEPLOY/services"
    [[ -f "$d/client.crt" ]] && SVCS+=("$s")
done
shopt -u nullglob

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ "$OUT" != *[[:space:]]* ]] || die "OUTDIR path contains white space: $OUT"
mkdir -p "$OUT/data"
chmod 0700 "$OUT/data"
mkdir -p "$(dirname "$METRICS")"

# ---------------------------------------------------------------- ACL (default deny)
# The services' rights. Gateways are not listed here: they are listed in the identity state file
# with the role "gateway", and the broker plugin grants each exactly its own topics (so the
# registry can provision a gateway without touching this file or reloading the broker).
# Only explicit `user` blocks, no `pattern` lines: a pattern would apply to every user, services
# included. A user that is not listed (any other service, or a certificate whose CN is not a known
# id such as "gw+#/x") can connect but may neither publish nor subscribe to anything.
# In Mosquitto 2.0 `topic read` covers both SUBSCRIBE and delivery; see broker/README.md.
tmp_acl=$(mktemp "$OUT/.acl.XXXXXX")
tmp_conf=$(mktemp "$OUT/.mosquitto.conf.XXXXXX")
tmp_state=$(mktemp "$OUT/.identities.state.XXXXXX")
trap 'rm -f "$tmp_acl" "$tmp_conf" "$tmp_state"' EXIT
{
    echo "# suido broker ACL, generated by broker/mkconf.sh from $DEPLOY ($(date -u +%Y-%m-%dT%H:%M:%SZ))."
    echo "# Do not edit: re-run broker/mkconf.sh. Default deny; usernames are certificate CNs."
    echo
    # suido/v1/alerts/... also matches suido/v1/+/<kind>: the "deny" lines keep the alert tree
    # (archive -> monitor only) out of the ingest's and the gate's wildcard grants. Denials are
    # checked before grants.
    echo "user ingest"
    echo "topic deny suido/v1/alerts/#"
    echo "topic read \$SYS/broker/log/#"
    for k in birth data backfill death cmdres; do echo "topic read suido/v1/+/$k"; done
    echo
    # a standby archive (scripts/mkdeploy.sh --standby) publishes the same once it is promoted
    for u in archive $([[ -d "$DEPLOY/services/archive-standby" ]] && echo archive-standby); do
        echo "user $u"
        echo "topic write suido/v1/+/ack"
        echo "topic write suido/v1/alerts/#"
        echo
    done
    echo "user gate"
    echo "topic deny suido/v1/alerts/#"
    echo "topic write suido/v1/+/cmd"
    echo
    echo "user monitor"
    echo "topic read suido/v1/alerts/#"
    echo
    # the Sparkplug host (services/sparkplug): reads the edge nodes' topics of every group, asks
    # them for rebirths (NCMD) and writes its own STATE, the one retained topic (docs/sparkplug.md)
    echo "user sparkplug"
    echo "topic read spBv1.0/#"
    echo "topic write spBv1.0/+/NCMD/+"
    echo "topic write spBv1.0/+/DCMD/+/+"
    echo "topic readwrite spBv1.0/STATE/suido"
} >"$tmp_acl"
grep -q '^topic ' "$tmp_acl" || die "the generated ACL is empty"

# ---------------------------------------------------------------- identity states (plugin)
# "<id> <state> [gateway]" per line, state = active|provisioned|suspended|revoked|disposed; the
# role "gateway" makes the plugin grant the gateway's own topics (and nothing else); the plugin
# refuses every identity that is not listed as active, and cuts live sessions when a line changes
# (within 2 s).
# The registry owns this file once it runs; here it is only created, or extended with identities
# it does not list yet (as active). Existing lines are never changed: re-running this script must
# not bring a suspended or revoked identity back. The test identities (DEPLOYDIR/test) are never
# listed.
STATE=$OUT/identities.state
declare -A listed=()
if [[ -f "$STATE" ]]; then
    while read -r id _ || [[ -n "${id:-}" ]]; do
        [[ -z "$id" || "$id" == \#* ]] || listed[$id]=1
    done <"$STATE"
    cat "$STATE" >"$tmp_state"
    # a last line without a newline would run into the first added one
    [[ ! -s "$tmp_state" || -z "$(tail -c 1 "$tmp_state")" ]] || echo >>"$tmp_state"
else
    {
        echo "# suido identity states, read by the broker plugin (broker/plugin/README.md)."
        echo "# \"<id> <state> [gateway]\" per line; state: active|provisioned|suspended|revoked|disposed."
        echo "# Only active is let in; an identity not listed is refused."
        echo "# Created by broker/mkconf.sh from $DEPLOY ($(date -u +%Y-%m-%dT%H:%M:%SZ))."
    } >"$tmp_state"
fi
added=0
declare -A is_gw=()
for id in "${GWS[@]}"; do is_gw[$id]=1; done
for id in "${GWS[@]}" "${SVCS[@]}"; do
    [[ -z "${listed[$id]:-}" ]] || continue
    [[ $added -gt 0 || ${#listed[@]} -eq 0 ]] ||
        echo "# added by broker/mkconf.sh ($(date -u +%Y-%m-%dT%H:%M:%SZ))" >>"$tmp_state"
    echo "$id active${is_gw[$id]:+ gateway}" >>"$tmp_state"
    listed[$id]=1
    added=$((added + 1))
done

# ---------------------------------------------------------------- mosquitto.conf
# Connection limit: every gateway plus the services, with room for reconnect overlap and
# handshakes that are still being refused. (The process also needs `ulimit -n` above this.)
MAXCONN=$(( 2 * ${#GWS[@]} + 256 ))

cat >"$tmp_conf" <<EOF
# suido Mosquitto 2.0 configuration, generated by broker/mkconf.sh from $DEPLOY
# ($(date -u +%Y-%m-%dT%H:%M:%SZ)). Do not edit: re-run broker/mkconf.sh.
# Run: mosquitto -c $OUT/mosquitto.conf
# Reload (ACL, CRL, certificate and key, limits): kill -HUP <pid>. See broker/README.md.

# Security settings (allow_anonymous, acl_file) apply to all listeners; there is only one anyway.
per_listener_settings false

# Started as root, Mosquitto 2.0 switches to this user BEFORE it loads the listener's certificate
# and key; SIGHUP reloads (key, CRL, ACL) and persistence run as that user too. broker/mkconf.sh
# (run as root) gave it the broker's key, the persistence directory and the metrics directory.
# Started as another unprivileged user (a container's), the option has no effect.
user $BROKER_USER

# ---------------------------------------------------------------- the one listener: TLS only
listener $PORT $BIND
cafile $CAFILE
certfile $CERTFILE
keyfile $KEYFILE
crlfile $CRLFILE
require_certificate true
# The username is the client certificate's CN ...
use_identity_as_username true
# ... and so is the client id: one identity cannot take over (disconnect) another's session by
# connecting with its client id. Also enforces the suite's contract "client id = CN".
use_username_as_clientid true
# In Mosquitto 2.0 tls_version is the MINIMUM version (1.6 took it as the only one): TLS 1.2 and 1.3.
tls_version tlsv1.2
# TLS 1.2: forward secret ECDHE with AEAD ciphers only (the server key is ECDSA P-256).
ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305
# TLS 1.3 suites are all AEAD; listed explicitly to keep CCM out.
ciphers_tls1.3 TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
max_connections $MAXCONN

# ---------------------------------------------------------------- authorization
allow_anonymous false
acl_file $OUT/acl

# The suido plugin (broker/plugin/README.md) narrows the above, never widens it: only identities
# listed as active in identities.state (re-read within 200 ms of a change; sessions of an identity
# that stops being active are cut within 2 s), client id = username, no retained messages, no
# will on a cmd or \$CONTROL/ topic, no malformed topics. The broker refuses to start when the
# state file is missing or malformed. Counters: $METRICS. (A broker running as another user
# must be able to read the state file and write the metrics file's directory.)
plugin $PLUGIN
plugin_opt_state_file $OUT/identities.state
plugin_opt_metrics_file $METRICS

# ---------------------------------------------------------------- limits
# Whole MQTT packet (header, topic, payload); larger packets disconnect the client.
max_packet_size $MAXPKT
max_inflight_messages 64
# Per client, QoS 1/2 messages queued beyond the in-flight window (a slow or offline ingest, a
# gateway offline for a while): 100000 messages, but at most 128 MiB per client whichever comes
# first, so that even queues of maximum-size packets cannot exhaust memory.
max_queued_messages 100000
max_queued_bytes 134217728
# MQTT 5 clients asking for a longer keepalive are told to use 120 s.
max_keepalive 120
# One retained topic only: a Sparkplug primary host's STATE (spBv1.0/STATE/<id>), which the
# specification requires retained. The plugin denies every other retained publish and delivery,
# so no stale command can be retained on suido/v1/<gw>/cmd and replayed to a gateway at its next
# subscribe; the acl_file lets only the Sparkplug host write its STATE.
retain_available true

# ---------------------------------------------------------------- persistence
persistence true
persistence_location $OUT/data/
autosave_interval 1

# ---------------------------------------------------------------- logging
log_dest stderr
# The same lines on \$SYS/broker/log/<level>: suido-ingest turns the refusals among them into
# audit events (services/ingest/broker_log.h). Only ingest may read them.
log_dest topic
log_type error
log_type warning
log_type notice
connection_messages true
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
EOF

chmod 0644 "$tmp_acl" "$tmp_conf" "$tmp_state"
mv -f "$tmp_acl" "$OUT/acl"
if [[ $added -gt 0 || ! -f "$STATE" ]]; then mv -f "$tmp_state" "$STATE"; else rm -f "$tmp_state"; fi
mv -f "$tmp_conf" "$OUT/mosquitto.conf"
trap - EXIT

# ---------------------------------------------------------------- the broker's own user
# Only as root (a user cannot give files away; started unprivileged, the broker is already not
# root). The broker's key directory and its persistence become the broker user's; the metrics
# directory, shared with the services' metrics files, lets it create files (group write) but not
# remove others' (sticky). Then every file the broker opens is checked as that user, so that a
# directory above the deployment it cannot enter is reported here, not as a broker that exits.
if [[ $EUID -eq 0 && $CONTAINER -eq 0 ]]; then
    getent passwd "$BROKER_USER" >/dev/null ||
        die "no system user '$BROKER_USER' for the broker (install mosquitto, or pass --user NAME)"
    grp=$(id -gn "$BROKER_USER")
    chown -R "$BROKER_USER:$grp" "$DEPLOY/broker" "$OUT/data"
    chmod 0700 "$DEPLOY/broker" "$OUT/data"
    mdir=$(dirname "$METRICS")
    chgrp "$grp" "$mdir"
    chmod 1775 "$mdir"
    [[ ! -e "$METRICS" ]] || chown "$BROKER_USER:$grp" "$METRICS"
    for f in "$CAFILE" "$CRLFILE" "$CERTFILE" "$KEYFILE" "$OUT/acl" "$STATE" "$PLUGIN"; do
        runuser -u "$BROKER_USER" -- test -r "$f" ||
            die "the broker's user '$BROKER_USER' cannot read $f (is a directory above it closed to other users?)"
    done
    for d in "$OUT/data" "$mdir"; do
        runuser -u "$BROKER_USER" -- test -w "$d" -a -x "$d" ||
            die "the broker's user '$BROKER_USER' cannot write $d"
    done
fi
echo "$PROG: wrote $OUT/mosquitto.conf and $OUT/acl (${#GWS[@]} gateways, listener $BIND:$PORT);" \
     "$STATE: $added identities added"
