#!/usr/bin/env bash
# compose/renew-scraper.sh - renews (or replaces) the metrics scraper's certificate of a compose
# deployment: Prometheus's client certificate, CN prometheus, from the deployment CA.
#
#   compose/renew-scraper.sh DIR [--days N]
#
# DIR is a deployment made by `scripts/mkdeploy.sh DIR --compose` (it has DIR/dc). --days: the new
# certificate's validity (default 397, as keys/mkpki.sh).
#
# Contract, in order:
# 1. a new key and certificate (CN prometheus, the CA's ext_scraper profile) are made apart in
#    DIR/prometheus/ and checked (chains to the CA, matches its key, client authentication);
# 2. they replace DIR/prometheus/client.{crt,key}, compose/mkfolders.sh DIR copies them into
#    Prometheus's folder and Prometheus gets SIGHUP (DIR/dc kill -s HUP prometheus); its next
#    scrape of each endpoint (a new TLS connection: the endpoints close idle ones after 10 s,
#    Prometheus scrapes every 15 s) presents the new certificate;
# 3. only then the old certificate is revoked, the CRL re-issued (keys/mkpki.sh DIR --gencrl)
#    and mkfolders run again: every endpoint refuses the old certificate within 5 s (it looks at
#    its CRL file again at a new connection). The old certificate is kept as
#    DIR/prometheus/client.crt.<UTC time>; the old key is deleted.
# If any step of 1 or 2 fails, nothing has changed: the CA's database is as it was (the new
# certificate is taken out of it again), the old key and certificate are back in place and in
# Prometheus's folder. If a step of 3 fails, the new certificate is in use and the old one is
# still valid: the error line says what to run. Exit 0 when done, 1 with one error line.
set -euo pipefail
PROG=renew-scraper
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
DAYS=397
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --days) [[ $# -ge 2 ]] || die "--days needs a value"; DAYS=$2; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
[[ ${#ARGS[@]} -eq 1 ]] || die "usage: compose/renew-scraper.sh DIR [--days N]"
[[ "$DAYS" =~ ^[1-9][0-9]{0,3}$ && "$DAYS" -le 3650 ]] || die "--days must be 1..3650"
[[ -d "${ARGS[0]}" ]] || die "${ARGS[0]}: no such deployment folder"
DIR=$(cd "${ARGS[0]}" && pwd)
CA=$DIR/ca
P=$DIR/prometheus
[[ -x "$DIR/dc" && -f "$DIR/compose.env" ]] ||
    die "$DIR has no dc and compose.env: not a compose deployment (scripts/mkdeploy.sh $DIR --compose)"
[[ -f "$CA/ca.key" && -f "$CA/openssl.cnf" && -f "$CA/db/index.txt" ]] ||
    die "$DIR has no CA made by keys/mkpki.sh (ca/ca.key, ca/openssl.cnf, ca/db/index.txt)"
[[ -f "$P/client.crt" && -f "$P/client.key" ]] || die "$P has no client.crt and client.key"
[[ $(id -u) -eq 0 ]] || die "must run as root (the deployment's CA and compose/mkfolders.sh)"
command -v openssl >/dev/null || die "openssl not found in PATH"

old_serial=$(openssl x509 -in "$P/client.crt" -noout -serial 2>/dev/null) ||
    die "$P/client.crt is not a certificate"
old_serial=${old_serial#serial=}

# the same lock as keys/mkpki.sh: one writer of the CA's database at a time
exec 9>"$CA/db/lock"
lock_ca() { flock -w 30 9 || die "another keys/mkpki.sh works on $CA (lock $CA/db/lock)"; }
unlock_ca() { flock -u 9; }

WORK=$(mktemp -d "$P/.renew.XXXXXX")
chmod 0700 "$WORK"
new_serial=""
DB_SAVED=""      # the CA database as it was, while the new certificate can still be taken back
SWAPPED=""       # the new key and certificate are in DIR/prometheus, the old ones in WORK
KEEP_WORK=""
undo() {
    if [[ -n "$SWAPPED" ]]; then
        if ! { cp -p "$WORK/old.key" "$P/client.key" && cp -p "$WORK/old.crt" "$P/client.crt"; }; then
            KEEP_WORK=1
            echo "$PROG: error: could not put the old key and certificate back in place: $WORK holds them (old.key, old.crt)" >&2
            return
        fi
        # mkfolders changes no folder when it fails: then Prometheus's still holds the old ones
        if "$TOP/compose/mkfolders.sh" "$DIR" >/dev/null 2>&1; then
            "$DIR/dc" kill -s HUP prometheus >/dev/null 2>&1 || true
        fi
    fi
    if [[ -n "$DB_SAVED" ]]; then
        if ! { flock -w 30 9 && cp -p "$WORK"/db/* "$CA/db/" &&
               rm -f -- "$CA/db/certs/$new_serial.pem"; }; then
            KEEP_WORK=1
            echo "$PROG: error: could not restore the CA's database $CA/db from $WORK/db" >&2
            return
        fi
    fi
    echo "$PROG: nothing has changed" >&2
}
cleanup() {
    local rc=$?
    [[ $rc -eq 0 || -z "$SWAPPED$DB_SAVED" ]] || undo
    [[ -n "$KEEP_WORK" ]] || rm -rf -- "$WORK"
}
trap cleanup EXIT

# ---- 1. the new key and certificate, apart
ossl() { # openssl ARGS, quiet; on failure one line with what it said
    local msg
    msg=$(openssl "$@" 2>&1 </dev/null) || { echo "openssl $1 failed: ${msg##*$'\n'}"; return 1; }
}
msg=$(umask 077 && ossl req -config "$CA/openssl.cnf" -new -newkey ec \
    -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=prometheus \
    -keyout "$WORK/new.key" -out "$WORK/new.csr") || die "$msg"
lock_ca
mkdir -p "$WORK/db"
for f in "$CA"/db/index.txt* "$CA"/db/serial*; do cp -p "$f" "$WORK/db/"; done
new_serial=$(tr -d '\n' <"$CA/db/serial")
DB_SAVED=1
msg=$(cd "$CA" && ossl ca -config openssl.cnf -batch -notext -extensions ext_scraper \
    -days "$DAYS" -in "$WORK/new.csr" -out "$WORK/new.crt") || die "$msg"
unlock_ca
msg=$(openssl verify -CAfile "$CA/ca.crt" -purpose sslclient "$WORK/new.crt" 2>&1) ||
    die "the new certificate does not verify: ${msg##*$'\n'}"
[[ $(openssl x509 -in "$WORK/new.crt" -noout -subject -nameopt RFC2253) == "subject=CN=prometheus" ]] ||
    die "the new certificate is not for CN=prometheus"
[[ $(openssl x509 -in "$WORK/new.crt" -noout -pubkey) == "$(openssl pkey -in "$WORK/new.key" -pubout)" ]] ||
    die "the new certificate does not match its key"
chmod 0600 "$WORK/new.key"
chmod 0644 "$WORK/new.crt"

# ---- 2. in place, into Prometheus's folder, Prometheus told
cp -p "$P/client.key" "$WORK/old.key"
cp -p "$P/client.crt" "$WORK/old.crt"
SWAPPED=1
mv -f -- "$WORK/new.key" "$P/client.key"
mv -f -- "$WORK/new.crt" "$P/client.crt"
out=$("$TOP/compose/mkfolders.sh" "$DIR" 2>&1) || die "compose/mkfolders.sh $DIR failed: ${out##*$'\n'}"
out=$("$DIR/dc" kill -s HUP prometheus 2>&1) ||
    die "$DIR/dc kill -s HUP prometheus failed (is it running?): ${out##*$'\n'}"
SWAPPED="" DB_SAVED=""
echo "$PROG: the new certificate (serial $new_serial) is in Prometheus's folder; Prometheus reloaded"

# ---- 3. the old certificate revoked, the CRL re-issued and handed out
stamp=$(date -u +%Y%m%dT%H%M%SZ)
cp -p "$WORK/old.crt" "$P/client.crt.$stamp"
lock_ca
msg=$(cd "$CA" && ossl ca -config openssl.cnf -batch -revoke "$P/client.crt.$stamp" \
    -crl_reason superseded) ||
    die "the old certificate (serial $old_serial) is not revoked ($msg): run (cd $CA && openssl ca -config openssl.cnf -revoke $P/client.crt.$stamp), keys/mkpki.sh $DIR --gencrl and compose/mkfolders.sh $DIR"
unlock_ca
out=$("$TOP/keys/mkpki.sh" "$DIR" --gencrl 2>&1) ||
    die "keys/mkpki.sh $DIR --gencrl failed (the old certificate is revoked but not yet on the CRL: run it again, then compose/mkfolders.sh $DIR): ${out##*$'\n'}"
out=$("$TOP/compose/mkfolders.sh" "$DIR" 2>&1) ||
    die "compose/mkfolders.sh $DIR failed (the new CRL is not yet in the containers' folders: run it again): ${out##*$'\n'}"

# manifest.txt names the scraper's current certificate
if [[ -f "$DIR/manifest.txt" ]]; then
    end=$(date -u -d "$(openssl x509 -in "$P/client.crt" -noout -enddate | cut -d= -f2)" +%s)
    fp=$(openssl x509 -in "$P/client.crt" -outform DER | sha256sum | cut -d' ' -f1)
    line="scraper prometheus serial=${new_serial,,} sha256=$fp not_after=$end"
    awk -v l="$line" '$1 == "scraper" && $2 == "prometheus" { print l; next } { print }' \
        "$DIR/manifest.txt" >"$WORK/manifest.txt"
    chmod 0644 "$WORK/manifest.txt"
    mv -f -- "$WORK/manifest.txt" "$DIR/manifest.txt"
fi
echo "$PROG: the old certificate (serial $old_serial) is revoked and on the CRL; kept as $P/client.crt.$stamp"
