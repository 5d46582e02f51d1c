#!/usr/bin/env bash
# compose/rotate-curve.sh - gives one service identity of a compose deployment a new ZeroMQ
# CURVE keypair and puts it in use, restarting only the containers that read that key.
#
#   compose/rotate-curve.sh DIR SVC
#
# DIR is a deployment made by `scripts/mkdeploy.sh DIR --compose` (it has DIR/dc); SVC a service
# identity with a keypair in DIR/services/SVC/ (registry, ingest, verify, profile, anomaly — both
# shards —, archive, archive-standby, gate, monitor, suidoctl).
#
# Contract, in order:
# 1. the new keypair is made apart, by suido-keygen of this repository's build (build/bin, or
#    SUIDO_BIN), else by the one in the suido/tools image: if that fails, nothing has changed;
# 2. the old pair is moved aside and kept, DIR/services/SVC/curve.{pub,key}.<UTC time>, and the
#    new one takes its place; compose/mkfolders.sh DIR copies it into the containers' folders. If
#    mkfolders fails, the old pair is put back (nothing has changed);
# 3. DIR/dc restart of the running services whose configuration (DIR/etc/<name>.conf) names
#    DIR/services/SVC/curve.pub or curve.key: SVC's own containers (every replica and shard),
#    the servers whose allow-lists admit SVC and the clients whose server_key is SVC's. Every
#    other container keeps running. suidoctl is run, not running: its next run uses the new key.
# Prints the containers' services it restarted and how long the restart took. Exit 0 when done;
# 1 with one error line naming what failed (after step 2 the new key is in place: rerun the
# restart it names).
set -euo pipefail
PROG=rotate-curve
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
[[ $# -eq 2 ]] || die "usage: compose/rotate-curve.sh DIR SVC"
[[ -d "$1" ]] || die "$1: no such deployment folder"
DIR=$(cd "$1" && pwd)
SVC=$2
[[ -x "$DIR/dc" && -f "$DIR/compose.env" ]] ||
    die "$DIR has no dc and compose.env: not a compose deployment (scripts/mkdeploy.sh $DIR --compose)"
[[ "$SVC" =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "'$SVC' is not a service name"
KEYS=$DIR/services/$SVC
[[ -f "$KEYS/curve.key" && -f "$KEYS/curve.pub" ]] ||
    die "$KEYS has no curve.key and curve.pub: '$SVC' is not a service identity of $DIR"
[[ $(id -u) -eq 0 ]] || die "must run as root (the deployment's keys and compose/mkfolders.sh)"

# ---- which running services read the key (from the generated configurations)
mapfile -t readers < <(grep -l -F -e "$KEYS/curve.pub" -e "$KEYS/curve.key" "$DIR"/etc/*.conf |
    xargs -r -n1 basename | sed 's/\.conf$//' | sort -u)
[[ ${#readers[@]} -gt 0 ]] || die "no configuration in $DIR/etc names $KEYS/curve.pub"
running=" $("$DIR/dc" ps --services --filter status=running | tr '\n' ' ') " ||
    die "$DIR/dc ps failed: is the deployment's Docker engine up?"
restart=()
for r in "${readers[@]}"; do
    [[ $running != *" $r "* ]] || restart+=("$r")
done

# ---- 1. the new keypair, apart
NEW=$(mktemp -d "$KEYS/.rotate.XXXXXX")
trap 'rm -rf -- "$NEW"' EXIT
chmod 0700 "$NEW"
keygen=${SUIDO_BIN:-$TOP/build/bin}/suido-keygen
if [[ -x "$keygen" ]]; then
    msg=$("$keygen" curve "$NEW/curve" 2>&1) || die "$keygen curve failed: $msg"
else
    tag=$(sed -n 's/^SUIDO_TAG=//p' "$DIR/compose.env" | tail -n1)
    image=suido/tools:${tag:-latest}
    msg=$(docker run --rm --pull never --network none --user 0:0 --read-only --cap-drop ALL \
        --security-opt no-new-privileges:true -v "$NEW:/out" --entrypoint /usr/bin/suido-keygen \
        "$image" curve /out/curve 2>&1) ||
        die "no build/bin/suido-keygen, and suido-keygen of $image failed: ${msg%%$'\n'*}"
fi
[[ -s "$NEW/curve.key" && -s "$NEW/curve.pub" ]] || die "suido-keygen wrote no curve.key and curve.pub"
chown 0:0 "$NEW/curve.key" "$NEW/curve.pub"
chmod 0600 "$NEW/curve.key"
chmod 0644 "$NEW/curve.pub"

# ---- 2. old pair aside (kept), new in place, containers' folders
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[[ ! -e "$KEYS/curve.key.$stamp" && ! -e "$KEYS/curve.pub.$stamp" ]] ||
    die "$KEYS/curve.key.$stamp exists: a rotation of $SVC ran this second; try again"
put_back() {
    mv -f -- "$KEYS/curve.key.$stamp" "$KEYS/curve.key" 2>/dev/null || true
    mv -f -- "$KEYS/curve.pub.$stamp" "$KEYS/curve.pub" 2>/dev/null || true
}
mv -- "$KEYS/curve.key" "$KEYS/curve.key.$stamp"
mv -- "$KEYS/curve.pub" "$KEYS/curve.pub.$stamp"
if ! { mv -- "$NEW/curve.key" "$KEYS/curve.key" && mv -- "$NEW/curve.pub" "$KEYS/curve.pub"; }; then
    put_back
    die "could not put the new keypair in $KEYS (the old one is back in place)"
fi
if ! out=$("$TOP/compose/mkfolders.sh" "$DIR" 2>&1); then
    put_back
    "$TOP/compose/mkfolders.sh" "$DIR" >/dev/null 2>&1 || true
    die "compose/mkfolders.sh $DIR failed, the old keypair is back in place: ${out##*$'\n'}"
fi
echo "$PROG: $SVC has a new CURVE keypair in $KEYS (the old one: curve.{pub,key}.$stamp)"

# ---- 3. restart exactly the readers
if [[ ${#restart[@]} -eq 0 ]]; then
    echo "$PROG: none of ${readers[*]} is running: each uses the new key when it starts"
    exit 0
fi
t0=$(date +%s%N)
out=$("$DIR/dc" restart "${restart[@]}" 2>&1) ||
    die "$DIR/dc restart ${restart[*]} failed (the new key is in place; run it again): ${out##*$'\n'}"
ms=$((($(date +%s%N) - t0) / 1000000))
echo "$PROG: restarted ${restart[*]} in $((ms / 1000)).$((ms % 1000 / 100)) s (the others keep running)"
