#!/usr/bin/env bash
# compose/mkfolders.sh - the per-container folders of a compose deployment, called by
# `scripts/mkdeploy.sh DIR --compose` once DIR holds the PKI and the configurations.
#
#   compose/mkfolders.sh DIR
#
# Writes DIR/compose/<name>/ for every container: its configuration (etc/<name>.conf) with the
# paths the container sees (the folder is mounted read-only on /deploy, state lives under
# /var/lib/suido), and a copy of exactly the files that configuration names: the service's own
# keys and certificates, its peers' public keys, the CA certificate. Nothing else, so a
# container holds no other service's private key. Each folder (mode 0700) and its files belong
# to the container's uid (compose/uids); private keys stay 0600. Must run as root (chown).
# The broker's folder gets mosquitto.conf and the ACL from broker/mkconf.sh; the gateway
# simulator's the field credentials of every gateway; archive-check's only a suidoctl
# configuration for `archive gaps` on the archive's volume.
set -euo pipefail
PROG=mkfolders
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
[[ $# -eq 1 ]] || die "usage: compose/mkfolders.sh DIR"
DIR=$(cd "$1" && pwd)
[[ -f "$DIR/etc/registry.conf" && -f "$DIR/ca/ca.crt" ]] || die "$DIR is not a deployment (scripts/mkdeploy.sh)"
[[ $(id -u) -eq 0 ]] || die "must run as root: each folder belongs to its container's user"
OUT=$DIR/compose

uid_of() {
    local u
    u=$(awk -v n="$1" '$1 == n { print $2 }' "$HERE/uids")
    [[ -n "$u" ]] || die "no uid for '$1' in compose/uids"
    echo "$u"
}

# Host paths -> container paths, most specific first.
to_container() {
    sed -e "s#$DIR/state/metrics/#/var/lib/suido/#g" \
        -e "s#$DIR/mosquitto/identities.state#/var/lib/suido-identities/identities.state#g" \
        -e "s#$DIR/state/#/var/lib/suido/#g" \
        -e "s#$TOP/services/monitor/www#/usr/share/suido/monitor/www#g" \
        -e "s#$DIR/#/deploy/#g" -e "s#$DIR\$#/deploy#g"
}

# copy_named FOLDER FILE: copies into FOLDER every deployment file that FILE (a configuration
# already in container paths) names under /deploy/ outside comments, and follows the
# configurations it copies. A named file that the deployment lacks stops everything (the
# container would only loop on restarts without it): nothing is put in place. The files are
# copied by one cp (a registry's folder holds three files per gateway).
copy_named() {
    local folder=$1 file=$2 p rel files=() confs=()
    while read -r p; do
        rel=${p#/deploy/}
        [[ -n "$rel" && "$rel" != */ ]] || continue
        [[ ! -e "$folder/$rel" ]] || continue
        [[ -f "$DIR/$rel" ]] ||
            die "container ${folder##*/}: ${file#"$folder"/} names $p, but $DIR/$rel does not exist (no folder was changed)"
        files+=("$rel")
        [[ "$rel" != *.conf ]] || confs+=("$rel")
    done < <(grep -v '^[[:space:]]*#' "$file" | grep -o '/deploy/[^ ,;]*' | sort -u)
    [[ ${#files[@]} -gt 0 ]] || return 0
    (cd "$DIR" && cp -p --parents -- "${files[@]}" "$folder/")
    for rel in "${confs[@]}"; do
        to_container <"$DIR/$rel" >"$folder/$rel"
        copy_named "$folder" "$folder/$rel"
    done
}

# seal FOLDER NAME: the folder and everything in it belong to NAME's uid, no one else may enter.
seal() {
    local u
    u=$(uid_of "$2")
    chown -R "$u:$u" "$1"
    chmod 0700 "$1"
}

# Folders are made in a staging area and then synced into place: a running container keeps its
# folder (the bind mount holds the directory, not its path) and sees the new files, so a new CRL
# or profile needs no new container (docs/operations.md).
mkdir -p "$OUT"
chmod 0755 "$OUT"
STAGE=$(mktemp -d "$OUT/.stage.XXXXXX")
gen=""
trap 'rm -rf -- "$STAGE" ${gen:+"$gen"}' EXIT

# ---------------------------------------------------------------- the services
for conf in "$DIR"/etc/*.conf; do
    name=$(basename "$conf" .conf)
    case "$name" in
        suidoctl-standby) continue ;;           # goes with suidoctl's own, below
    esac
    f=$STAGE/$name
    mkdir -p "$f/etc"
    # [pki] is the operator's host business (the CA's private key never enters a container)
    to_container <"$conf" | awk '/^\[/ { skip = ($0 == "[pki]") } !skip' >"$f/etc/$name.conf"
    if [[ $name == monitor ]]; then
        # the console listens on its address on monitor-web only (compose/docker-compose.yml)
        sed -i 's#^bind = 127\.0\.0\.1:[0-9]*$#bind = monitor-web:8443#' "$f/etc/$name.conf"
    fi
    copy_named "$f" "$f/etc/$name.conf"
    seal "$f" "$name"
done
# suidoctl aimed at the standby (archive status, promote): same identity, same folder
if [[ -f "$DIR/etc/suidoctl-standby.conf" ]]; then
    to_container <"$DIR/etc/suidoctl-standby.conf" | awk '/^\[/ { skip = ($0 == "[pki]") } !skip' \
        >"$STAGE/suidoctl/etc/suidoctl-standby.conf"
    copy_named "$STAGE/suidoctl" "$STAGE/suidoctl/etc/suidoctl-standby.conf"
    seal "$STAGE/suidoctl" suidoctl
fi

# ---------------------------------------------------------------- the broker
gen=$(mktemp -d "${TMPDIR:-/tmp}/suido-broker.XXXXXX")
"$TOP/broker/mkconf.sh" "$DIR" "$gen" 8883 --bind 0.0.0.0 --container \
    --metrics-file "$DIR/state/metrics/mosquitto.prom" >/dev/null
plugin=$(awk '$1 == "plugin" { print $2 }' "$gen/mosquitto.conf")
f=$STAGE/broker
mkdir -p "$f/mosquitto"
sed -e "s#$gen/acl#/deploy/mosquitto/acl#g" \
    -e "s#$gen/identities.state#/var/lib/suido-identities/identities.state#g" \
    -e "s#$gen/data/#/var/lib/suido/#g" \
    -e "s#$plugin#/usr/lib/suido/suido_plugin.so#g" \
    "$gen/mosquitto.conf" | to_container >"$f/mosquitto/mosquitto.conf"
cp "$gen/acl" "$f/mosquitto/acl"
copy_named "$f" "$f/mosquitto/mosquitto.conf"
seal "$f" broker

# ---------------------------------------------------------------- the gateway simulator
# The field side: every gateway's TLS and signing keys, the CA, the platform's public wrap key
# and the gate's public command key; an inventory of the gateways only.
f=$STAGE/gateway-sim
mkdir -p "$f/gateways"
awk '/^\[/ { keep = ($1 == "[gateway") } keep' "$DIR/inventory.conf" | to_container >"$f/inventory.conf"
files=(ca/ca.crt)
for k in wrap.pub command.pub; do [[ ! -f "$DIR/platform/$k" ]] || files+=("platform/$k"); done
for d in "$DIR"/gateways/*/; do
    g=${d%/}
    g=${g##*/}
    for k in client.crt client.key sign.key sign.pub; do
        [[ -f "$d$k" ]] || die "container gateway-sim: gateway $g has no $d$k (no folder was changed)"
        files+=("gateways/$g/$k")
    done
    for k in cmdwrap.key cmdwrap.pub; do [[ ! -f "$d$k" ]] || files+=("gateways/$g/$k"); done
done
(cd "$DIR" && cp -p --parents -- "${files[@]}" "$f/")
seal "$f" gateway-sim

# ---------------------------------------------------------------- archive-check
# `suidoctl --offline archive gaps` (and `audit verify`) as the archive's user on the archive's
# volume (read-only): only the configuration, no key (the command reads the database and nothing
# else), and no [backup] section: the registry's database is not on that volume.
f=$STAGE/archive-check
mkdir -p "$f/etc"
awk '/^\[/ { skip = ($0 == "[backup]") } !skip' "$STAGE/suidoctl/etc/suidoctl.conf" \
    >"$f/etc/suidoctl.conf"
seal "$f" archive

# ---------------------------------------------------------------- Prometheus
# compose/prometheus.yml without the jobs of services this deployment has none of (a job is kept
# when etc/<job>.conf or etc/<job>-<n>.conf exists; a job's lines are those up to the next
# "  - job_name:" or unindented line), and the CA certificate and scraper's key it names.
f=$STAGE/prometheus
mkdir -p "$f"
jobs=" "
for conf in "$DIR"/etc/*.conf; do
    name=$(basename "$conf" .conf)
    jobs+="$name ${name%-[0-9]*} "
done
awk -v jobs="$jobs" '/^  - job_name: / { skip = !index(jobs, " " $3 " ") }
                    /^[^ ]/ { skip = 0 }
                    !skip' "$HERE/prometheus.yml" >"$f/prometheus.yml"
copy_named "$f" "$f/prometheus.yml"
[[ -f "$f/prometheus/client.key" ]] || die "$DIR has no prometheus/client.key (keys/mkpki.sh)"
seal "$f" prometheus

# ---------------------------------------------------------------- into place
for new in "$STAGE"/*/; do
    name=$(basename "$new")
    dst=$OUT/$name
    mkdir -p "$dst"
    # what the new folder no longer holds goes; the rest is replaced file by file
    (cd "$dst" && find . -depth -mindepth 1 | while read -r e; do
        [[ -e "$new/$e" ]] || rm -rf -- "$e"; done)
    cp -a --remove-destination "$new/." "$dst/"
    chown --reference="$new" "$dst"
    chmod 0700 "$dst"
done

echo "$PROG: $(ls "$OUT" | wc -l) container folders in $OUT"
