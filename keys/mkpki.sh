#!/usr/bin/env bash
# keys/mkpki.sh - makes the PKI of one suido deployment (see keys/README.md).
#
#   keys/mkpki.sh OUTDIR [--gateways N] [--services "LIST"] [--test] [--keygen PATH]
#                        [--days D] [--force]
#   keys/mkpki.sh OUTDIR --revoke ID     revoke the current TLS cert of gateway/service ID
#   keys/mkpki.sh OUTDIR --gencrl        re-issue ca/crl.pem (it is valid for 30 days only)
#   keys/mkpki.sh OUTDIR --add-gateway ID  issue one more gateway (TLS key and certificate, signing
#                                        key, command key) into OUTDIR/gateways/ID; an id is never
#                                        issued twice
#
# Each gateway also gets an RSA-2048 command key pair (cmdwrap.key, 0600, and cmdwrap.pub): the
# command gate wraps each command session key to cmdwrap.pub (registered with the registry), the
# gateway unwraps it with cmdwrap.key.
#
# Every TLS key is EC P-256. Certificates are issued with `openssl ca` from a config file kept in
# OUTDIR/ca/openssl.cnf (paths in it are relative to OUTDIR/ca, so the directory can be moved).
# Gateway certificates are signed in one batched `openssl ca` call and keys are generated in
# parallel: 20 gateways + 10 services take 1-2 s, 500 gateways about 15 s (2 cores).
set -euo pipefail
umask 077

PROG=mkpki
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage() {
    cat >&2 <<'EOF'
usage: keys/mkpki.sh OUTDIR [--gateways N] [--services "registry ingest ..."] [--test]
                            [--keygen PATH] [--days D] [--force]
       keys/mkpki.sh OUTDIR --revoke GATEWAY_OR_SERVICE_ID
       keys/mkpki.sh OUTDIR --gencrl
       keys/mkpki.sh OUTDIR --add-gateway GATEWAY_ID [--days D]
EOF
    exit 2
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=""
NGW=20
SERVICES="registry ingest verify profile anomaly archive suidoctl bench monitor gate"
TEST=0
KEYGEN="$SCRIPT_DIR/../build/bin/suido-keygen"
DAYS=397
FORCE=0
MODE=create
REVOKE_ID=""
ADD_ID=""

need_arg() { [[ $# -ge 2 ]] || die "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gateways) need_arg "$@"; NGW=$2; shift 2 ;;
        --services) need_arg "$@"; SERVICES=$2; shift 2 ;;
        --test) TEST=1; shift ;;
        --keygen) need_arg "$@"; KEYGEN=$2; shift 2 ;;
        --days) need_arg "$@"; DAYS=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        --revoke) need_arg "$@"; MODE=revoke; REVOKE_ID=$2; shift 2 ;;
        --gencrl) MODE=gencrl; shift ;;
        --add-gateway) need_arg "$@"; MODE=add-gateway; ADD_ID=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [[ -z "$OUT" ]] || die "only one OUTDIR may be given (got '$OUT' and '$1')"; OUT=$1; shift ;;
    esac
done
[[ -n "$OUT" ]] || usage
command -v openssl >/dev/null || die "openssl not found in PATH"

# Runs openssl quietly; on failure shows what it said and fails.
ossl() {
    local msg
    if ! msg=$(openssl "$@" 2>&1 </dev/null); then
        printf '%s: error: openssl %s failed:\n%s\n' "$PROG" "$1" "$msg" >&2
        return 1
    fi
}
# `openssl ca` with the deployment's config, run inside OUTDIR/ca (the config uses relative paths).
# File arguments must therefore be absolute.
ca_cmd() { (cd "$CA" && ossl ca -config openssl.cnf -batch "$@"); }

# Atomically (re)writes ca/crl.pem from the CA database.
gencrl() {
    local tmp="$CA/crl.pem.tmp.$$"
    ca_cmd -gencrl -out "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CA/crl.pem"
}

lock_ca() {
    exec 9>"$CA/db/lock"
    if command -v flock >/dev/null; then
        flock -w 30 9 || die "another mkpki.sh is working on $CA (lock $CA/db/lock)"
    fi
}

# ---------------------------------------------------------------- revoke / gencrl on an existing PKI
if [[ $MODE != create ]]; then
    [[ -d "$OUT" ]] || die "$OUT does not exist"
    OUT=$(cd "$OUT" && pwd)
    CA="$OUT/ca"
    [[ -f "$CA/ca.key" && -f "$CA/openssl.cnf" && -f "$CA/db/index.txt" ]] ||
        die "$OUT is not a PKI made by mkpki.sh (missing ca/ca.key, ca/openssl.cnf or ca/db/index.txt)"
    lock_ca
    if [[ $MODE == add-gateway ]]; then
        # Same rule as broker/mkconf.sh and the registry: 1..64 of [a-z0-9-]; "alerts" is taken.
        [[ "$ADD_ID" =~ ^[a-z0-9-]{1,64}$ && "$ADD_ID" != alerts ]] ||
            die "bad gateway id '$ADD_ID' (1-64 of [a-z0-9-], not 'alerts')"
        d="$OUT/gateways/$ADD_ID"
        [[ ! -e "$d" ]] || die "$d exists: gateway ids are never reused"
        ! awk -F'\t' -v cn="/CN=$ADD_ID" '$6 == cn { f = 1 } END { exit !f }' "$CA/db/index.txt" ||
            die "this CA has already issued a certificate for $ADD_ID: gateway ids are never reused"
        [[ "$DAYS" =~ ^[0-9]+$ && "$DAYS" -ge 1 && "$DAYS" -le 3650 ]] || die "--days must be 1..3650"
        mkdir -p "$OUT/gateways"
        tmp=$(mktemp -d "$OUT/gateways/.add.XXXXXX")
        trap 'rm -rf -- "$tmp"' EXIT
        ossl req -config "$CA/openssl.cnf" -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$tmp/client.key" -out "$tmp/client.csr" -subj "/CN=$ADD_ID"
        ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/sign.key"
        ossl pkey -in "$tmp/sign.key" -pubout -out "$tmp/sign.pub"
        ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/cmdwrap.key"
        ossl pkey -in "$tmp/cmdwrap.key" -pubout -out "$tmp/cmdwrap.pub"
        ca_cmd -notext -in "$tmp/client.csr" -out "$tmp/client.crt" -extensions ext_gateway -days "$DAYS"
        rm -f "$tmp/client.csr"
        chmod 0644 "$tmp/client.crt" "$tmp/sign.pub" "$tmp/cmdwrap.pub"
        mv -- "$tmp" "$d"
        echo "$PROG: issued gateway $ADD_ID in $d (not yet known to the registry: use suidoctl gateway provision)"
        exit 0
    fi
    if [[ $MODE == gencrl ]]; then
        gencrl
        echo "$PROG: re-issued $CA/crl.pem (valid 30 days); send SIGHUP to the broker to load it"
        exit 0
    fi
    [[ "$REVOKE_ID" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad id '$REVOKE_ID'"
    cert=""
    for c in "$OUT/gateways/$REVOKE_ID/client.crt" "$OUT/services/$REVOKE_ID/client.crt"; do
        [[ -f "$c" ]] && { cert=$c; break; }
    done
    [[ -n "$cert" ]] || die "no gateway or service '$REVOKE_ID' in $OUT (looked for gateways/$REVOKE_ID/client.crt and services/$REVOKE_ID/client.crt)"
    serial=$(openssl x509 -in "$cert" -noout -serial) || die "cannot read $cert"
    serial=${serial#serial=}
    # index.txt: status \t expiry \t revocation \t serial \t file \t subject
    status=$(awk -F'\t' -v s="$serial" 'toupper($4) == toupper(s) { st = $1 } END { print st }' "$CA/db/index.txt")
    case "$status" in
        V|E) ca_cmd -revoke "$cert"
             echo "$PROG: revoked $REVOKE_ID (serial $serial)" ;;
        R)   echo "$PROG: $REVOKE_ID (serial $serial) was already revoked" ;;
        *)   die "serial $serial of $cert is not in this CA's database (not issued by $CA?)" ;;
    esac
    gencrl
    echo "$PROG: re-issued $CA/crl.pem; send SIGHUP to the broker to load it (see broker/README.md)"
    exit 0
fi

# ---------------------------------------------------------------- create: validate arguments
[[ "$NGW" =~ ^[0-9]+$ ]] && (( 10#$NGW >= 1 && 10#$NGW <= 9999 )) ||
    die "--gateways must be a number from 1 to 9999 (got '$NGW')"
NGW=$((10#$NGW))
[[ "$DAYS" =~ ^[0-9]+$ ]] && (( 10#$DAYS >= 1 && 10#$DAYS <= 3650 )) ||
    die "--days must be a number from 1 to 3650 (the CA lives 3650 days; got '$DAYS')"
DAYS=$((10#$DAYS))
read -r -a SVCS <<<"$SERVICES"
declare -A seen=()
for s in "${SVCS[@]}"; do
    [[ "$s" =~ ^[a-z][a-z0-9_-]{0,31}$ ]] || die "bad service name '$s' (lower case letters, digits, - and _)"
    [[ "$s" != gw-* ]] || die "service name '$s' would look like a gateway id"
    [[ "$s" != broker ]] || die "'broker' is not a service name (the broker cert is made anyway)"
    [[ -z "${seen[$s]:-}" ]] || die "service '$s' listed twice"
    seen[$s]=1
done
if [[ ${#SVCS[@]} -gt 0 ]]; then
    [[ -x "$KEYGEN" ]] || die "CURVE key generator not found or not executable: $KEYGEN (run 'make build' or pass --keygen PATH)"
    KEYGEN=$(cd "$(dirname "$KEYGEN")" && pwd)/$(basename "$KEYGEN")
fi

LAYOUT=(ca broker gateways services prometheus platform test manifest.txt)
if [[ -e "$OUT/ca/ca.key" && $FORCE -eq 0 ]]; then
    die "$OUT/ca/ca.key already exists; refusing to overwrite a PKI (use --force to wipe $OUT and start over)"
fi
if [[ -e "$OUT" ]]; then
    [[ -d "$OUT" ]] || die "$OUT exists and is not a directory"
    if [[ $FORCE -eq 1 ]]; then
        # Wipes what this script makes (and only that: anything else in OUTDIR is left alone).
        abs=$(cd "$OUT" && pwd -P)
        [[ "$abs" != / ]] || die "refusing to wipe /"
        for n in "${LAYOUT[@]}"; do rm -rf -- "${OUT:?}/$n"; done
        shopt -s nullglob dotglob
        for e in "$OUT"/*; do echo "$PROG: note: --force left $e alone (not made by mkpki.sh)" >&2; done
        shopt -u nullglob dotglob
    else
        for n in "${LAYOUT[@]}"; do
            [[ ! -e "$OUT/$n" ]] ||
                die "$OUT/$n exists (left from an interrupted run?); use --force to wipe $OUT"
        done
    fi
fi
mkdir -p "$OUT"
chmod 0755 "$OUT"
OUT=$(cd "$OUT" && pwd)
CA="$OUT/ca"

TMPD=$(mktemp -d "${TMPDIR:-/tmp}/mkpki.XXXXXX")
DONE=0
WORKERS=()
cleanup() {
    # Stop parallel workers first (each finishes its current openssl call, then exits).
    local p
    for p in "${WORKERS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf -- "$TMPD"
    if [[ $DONE -eq 0 ]]; then
        # Nothing half-made stays behind: a partial PKI would be refused by the next run anyway.
        for n in "${LAYOUT[@]}"; do rm -rf -- "${OUT:?}/$n"; done
        echo "$PROG: failed; removed the partial output in $OUT" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NPROC=$(nproc 2>/dev/null || echo 2)
(( NPROC < 2 )) && NPROC=2
(( NPROC > 16 )) && NPROC=16

# run_parallel FUNC ITEM...: FUNC ITEM for every item, spread over NPROC workers.
run_parallel() {
    local fn=$1; shift
    local items=("$@") pids=() w rc=0
    for ((w = 0; w < NPROC && w < ${#items[@]}; w++)); do
        (
            trap 'exit 143' TERM
            for ((k = w; k < ${#items[@]}; k += NPROC)); do
                "$fn" "${items[k]}" || exit 1
            done
        ) &
        pids+=($!)
        WORKERS+=($!)
    done
    for w in "${pids[@]}"; do wait "$w" || rc=1; done
    return $rc
}

newkey_csr() { # KEY CSR SUBJECT: EC P-256 key (PKCS#8 PEM, 0600 by umask) and a CSR for it
    ossl req -config "$CA/openssl.cnf" -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1" -out "$2" -subj "$3"
}
sign_one() { # CSR OUTCERT EXT [openssl ca options...]: one cert from the real CA
    local csr=$1 crt=$2 ext=$3; shift 3
    ca_cmd -notext -in "$csr" -out "$crt" -extensions "$ext" "$@"
}
mkdirs() { local d; for d in "$@"; do mkdir -p "$d"; done; }

# ---------------------------------------------------------------- the CA
mkdirs "$CA/db/certs" "$OUT/broker" "$OUT/gateways" "$OUT/platform"
chmod 0755 "$CA" "$OUT/gateways"
: >"$CA/db/index.txt"
echo 'unique_subject = no' >"$CA/db/index.txt.attr"
# Sequential serials from a random 64-bit start (top nibble 1..7: positive, fixed width).
printf '%x%s\n' $((RANDOM % 7 + 1)) "$(openssl rand -hex 8 | cut -c2-16)" >"$CA/db/serial"
echo 1000 >"$CA/db/crlnumber"

cat >"$CA/openssl.cnf" <<'EOF'
# OpenSSL config of the suido deployment CA, made by keys/mkpki.sh.
# Paths are relative to this directory: run `openssl ca -config openssl.cnf` from here
# (or better: keys/mkpki.sh OUTDIR --revoke ID / --gencrl).
[ ca ]
default_ca = suido_ca

[ suido_ca ]
dir             = .
database        = $dir/db/index.txt
new_certs_dir   = $dir/db/certs
serial          = $dir/db/serial
crlnumber       = $dir/db/crlnumber
certificate     = $dir/ca.crt
private_key     = $dir/ca.key
default_md      = sha256
default_days    = 397
default_crl_days = 30
crl_extensions  = ext_crl
policy          = policy_cn
unique_subject  = no
# Extensions come only from this file, never from a request.
copy_extensions = none
preserve        = no
email_in_dn     = no
name_opt        = RFC2253
cert_opt        = ca_default

[ policy_cn ]
commonName      = supplied

[ req ]
distinguished_name = req_dn
string_mask     = utf8only
[ req_dn ]

[ ext_ca ]
basicConstraints       = critical, CA:true
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ ext_gateway ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ ext_broker ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, DNS:broker, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ ext_scraper ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ ext_crl ]
authorityKeyIdentifier = keyid:always
EOF

ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CA/ca.key"
CA_CN="suido deployment CA $(openssl rand -hex 4)"
ossl req -config "$CA/openssl.cnf" -x509 -new -key "$CA/ca.key" -sha256 -days 3650 \
    -subj "/CN=$CA_CN" -extensions ext_ca -out "$CA/ca.crt"

# Service certs carry their own name in the SAN: one small extension file each.
svc_ext() { # NAME FILE
    cat >"$2" <<EOF
[ ext_service ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth, serverAuth
subjectAltName         = DNS:$1, DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ ext_metrics ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:$1, DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
EOF
}

# ---------------------------------------------------------------- broker
newkey_csr "$OUT/broker/server.key" "$TMPD/broker.csr" "/CN=broker"
sign_one "$TMPD/broker.csr" "$OUT/broker/server.crt" ext_broker -days "$DAYS"

# ---------------------------------------------------------------- gateways (batched)
GWS=()
for ((i = 1; i <= NGW; i++)); do GWS+=("$(printf 'gw-%04d' "$i")"); done
gw_keys() {
    local d="$OUT/gateways/$1"
    mkdir -p "$d"
    newkey_csr "$d/client.key" "$TMPD/$1.csr" "/CN=$1" &&
        ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/sign.key" &&
        ossl pkey -in "$d/sign.key" -pubout -out "$d/sign.pub" &&
        ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/cmdwrap.key" &&
        ossl pkey -in "$d/cmdwrap.key" -pubout -out "$d/cmdwrap.pub"
}
run_parallel gw_keys "${GWS[@]}"
CSRS=()
for g in "${GWS[@]}"; do CSRS+=("$TMPD/$g.csr"); done
# One `openssl ca` for all gateways. With -infiles, -out keeps only the last certificate, but each
# one is also written to db/certs/<SERIAL>.pem; the CA database tells which serial went to which CN.
ca_cmd -notext -extensions ext_gateway -days "$DAYS" -out "$TMPD/gateways.pem" -infiles "${CSRS[@]}"
declare -A GWSERIAL=()
while read -r cn ser; do GWSERIAL[$cn]=$ser; done < <(
    awk -F'\t' '$1 == "V" && $6 ~ /^\/CN=gw-[0-9]+$/ { print substr($6, 5), $4 }' "$CA/db/index.txt")
for g in "${GWS[@]}"; do
    f="$CA/db/certs/${GWSERIAL[$g]:-none}.pem"
    [[ -f "$f" ]] || die "no certificate for $g after batch signing (looked for $f)"
    cp "$f" "$OUT/gateways/$g/client.crt"
done

# ---------------------------------------------------------------- services
if [[ ${#SVCS[@]} -gt 0 ]]; then
    mkdir -p "$OUT/services"
    chmod 0755 "$OUT/services"
fi
for s in "${SVCS[@]}"; do
    d="$OUT/services/$s"
    mkdir -p "$d"
    newkey_csr "$d/client.key" "$TMPD/svc-$s.csr" "/CN=$s"
    svc_ext "$s" "$TMPD/svc-$s.ext"
    sign_one "$TMPD/svc-$s.csr" "$d/client.crt" ext_service -extfile "$TMPD/svc-$s.ext" -days "$DAYS"
    # the HTTPS metrics endpoint's own certificate, server only (common/cm_metrics_http.h)
    newkey_csr "$d/metrics.key" "$TMPD/metrics-$s.csr" "/CN=$s"
    sign_one "$TMPD/metrics-$s.csr" "$d/metrics.crt" ext_metrics -extfile "$TMPD/svc-$s.ext" -days "$DAYS"
    msg=$("$KEYGEN" curve "$d/curve" 2>&1) || die "$KEYGEN curve $d/curve failed: $msg"
done
# The metrics scraper (Prometheus): a client certificate the services' metrics endpoints allow.
mkdir -p "$OUT/prometheus"
newkey_csr "$OUT/prometheus/client.key" "$TMPD/prometheus.csr" "/CN=prometheus"
sign_one "$TMPD/prometheus.csr" "$OUT/prometheus/client.crt" ext_scraper -days "$DAYS"
# The monitor's web console: a server-only certificate of its own (https.crt/key), apart from its
# MQTT client identity, for the names operators' browsers use.
if [[ -n "${seen[monitor]:-}" ]]; then
    host=$(hostname 2>/dev/null || true)
    [[ "$host" =~ ^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$ ]] || host=monitor
    cat >"$TMPD/https.ext" <<EOF
[ ext_https ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, DNS:monitor, DNS:$host, IP:127.0.0.1, IP:::1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
EOF
    newkey_csr "$OUT/services/monitor/https.key" "$TMPD/https.csr" "/CN=monitor"
    sign_one "$TMPD/https.csr" "$OUT/services/monitor/https.crt" ext_https -extfile "$TMPD/https.ext" -days "$DAYS"
fi

# ---------------------------------------------------------------- platform key-wrap keypair
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$OUT/platform/wrap.key"
ossl pkey -in "$OUT/platform/wrap.key" -pubout -out "$OUT/platform/wrap.pub"

# ---------------------------------------------------------------- command signing keypair
# The command gate signs every command with command.key; gateways hold command.pub only.
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/platform/command.key"
ossl pkey -in "$OUT/platform/command.key" -pubout -out "$OUT/platform/command.pub"

# ---------------------------------------------------------------- profile signing keypair
# The registry signs every version of the data profile with profile.key; services verify with
# profile.pub before they use a version.
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/platform/profile.key"
ossl pkey -in "$OUT/platform/profile.key" -pubout -out "$OUT/platform/profile.pub"

# ---------------------------------------------------------------- backup signing keypair
# `suidoctl backup create` signs each backup's manifest with backup.key; verify and restore refuse
# a manifest that backup.pub does not verify (a foreign or forged backup).
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/platform/backup.key"
ossl pkey -in "$OUT/platform/backup.key" -pubout -out "$OUT/platform/backup.pub"

# ---------------------------------------------------------------- negative-test material
if [[ $TEST -eq 1 ]]; then
    T="$OUT/test"
    mkdirs "$T"/{expired,notyet,revoked,wrongca,selfsigned,wrongname,badcn}
    chmod 0755 "$T"
    ts() { date -u -d "$1" +%Y%m%d%H%M%SZ; }

    newkey_csr "$T/expired/client.key" "$TMPD/expired.csr" "/CN=gw-expired"
    sign_one "$TMPD/expired.csr" "$T/expired/client.crt" ext_gateway \
        -startdate "$(ts '2 years ago')" -enddate "$(ts '1 year ago')"

    newkey_csr "$T/notyet/client.key" "$TMPD/notyet.csr" "/CN=gw-notyet"
    sign_one "$TMPD/notyet.csr" "$T/notyet/client.crt" ext_gateway \
        -startdate "$(ts '1 year')" -enddate "$(ts '2 years')"

    newkey_csr "$T/revoked/client.key" "$TMPD/revoked.csr" "/CN=gw-revoked"
    sign_one "$TMPD/revoked.csr" "$T/revoked/client.crt" ext_gateway -days "$DAYS"
    ca_cmd -revoke "$T/revoked/client.crt" -crl_reason keyCompromise

    # Another CA, and a client cert with a plausible gateway name from it.
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/wrongca/ca.key"
    ossl req -config "$CA/openssl.cnf" -x509 -new -key "$T/wrongca/ca.key" -sha256 -days 3650 \
        -subj "/CN=suido deployment CA $(openssl rand -hex 4)" -extensions ext_ca -out "$T/wrongca/ca.crt"
    newkey_csr "$T/wrongca/client.key" "$TMPD/wrongca.csr" "/CN=gw-0001"
    ossl x509 -req -in "$TMPD/wrongca.csr" -CA "$T/wrongca/ca.crt" -CAkey "$T/wrongca/ca.key" \
        -set_serial "0x$(openssl rand -hex 8)" -days "$DAYS" -sha256 \
        -extfile "$CA/openssl.cnf" -extensions ext_gateway -out "$T/wrongca/client.crt"

    # Self-signed, plausible gateway name.
    ossl req -config "$CA/openssl.cnf" -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$T/selfsigned/client.key" -out "$T/selfsigned/client.crt" -subj "/CN=gw-0001" \
        -days "$DAYS" -sha256 -extensions ext_gateway

    # A server cert from the real CA for the wrong host name.
    cat >"$TMPD/wrongname.ext" <<'EOF'
[ ext_wrongname ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:wrong.example
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
EOF
    newkey_csr "$T/wrongname/server.key" "$TMPD/wrongname.csr" "/CN=wrong.example"
    sign_one "$TMPD/wrongname.csr" "$T/wrongname/server.crt" ext_wrongname \
        -extfile "$TMPD/wrongname.ext" -days "$DAYS"

    # CN with MQTT wildcard characters and a slash: "gw+#/x" (escaped for -subj).
    newkey_csr "$T/badcn/client.key" "$TMPD/badcn.csr" '/CN=gw\+#\/x'
    sign_one "$TMPD/badcn.csr" "$T/badcn/client.crt" ext_gateway -days "$DAYS"
fi

gencrl

# ---------------------------------------------------------------- manifest
# "<kind> <id> serial=<hex> sha256=<hex> not_after=<unix seconds>", one line per certificate.
ENTRIES=("ca ca $CA/ca.crt" "broker broker $OUT/broker/server.crt")
for g in "${GWS[@]}"; do ENTRIES+=("gateway $g $OUT/gateways/$g/client.crt"); done
for s in "${SVCS[@]}"; do ENTRIES+=("service $s $OUT/services/$s/client.crt"); done
for s in "${SVCS[@]}"; do ENTRIES+=("metrics $s $OUT/services/$s/metrics.crt"); done
ENTRIES+=("scraper prometheus $OUT/prometheus/client.crt")
if [[ $TEST -eq 1 ]]; then
    for t in expired notyet revoked selfsigned badcn; do ENTRIES+=("test $t $T/$t/client.crt"); done
    ENTRIES+=("test wrongca-ca $T/wrongca/ca.crt" "test wrongca $T/wrongca/client.crt"
              "test wrongname $T/wrongname/server.crt")
fi
mkdir -p "$TMPD/manifest"
# Parsed with `openssl asn1parse` (a few ms) rather than `openssl x509` (~45 ms per call in 3.0,
# which dominated the run time with 500 gateways). asn1parse also writes the DER for the hash.
manifest_line() { # "INDEX KIND ID FILE" -> $TMPD/manifest/INDEX
    local idx kind id file der parsed serial cn nb na fp end
    read -r idx kind id file <<<"$1"
    der="$TMPD/manifest/$idx.der"
    parsed=$(openssl asn1parse -in "$file" -out "$der" 2>&1) ||
        { echo "$PROG: error: cannot parse $file: $parsed" >&2; return 1; }
    # TBSCertificate children (d=2): version, serial, sigalg, issuer, validity, subject, ...
    read -r serial nb na cn < <(awk '
        function val(l) { match(l, /prim: [A-Z0-9 ]+:/); return substr(l, RSTART + RLENGTH) }
        /^ *[0-9]+:d=2 / { n++ }
        n == 2 && /:d=2 .*prim: INTEGER/ { serial = val($0) }
        n == 5 && /:d=3 .*prim: (UTCTIME|GENERALIZEDTIME)/ { t[++nt] = val($0) }
        n == 6 && /prim: OBJECT +:commonName$/ { getcn = 1; next }
        getcn { cn = val($0); getcn = 0 }
        END { printf "%s %s %s %s\n", serial, t[1], t[2], cn }' <<<"$parsed")
    if [[ $kind == gateway || $kind == service || $kind == metrics || $kind == scraper ]] &&
        [[ "$cn" != "$id" ]]; then
        echo "$PROG: error: $file is not the certificate of $id (CN '$cn')" >&2
        return 1
    fi
    # UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime YYYYMMDDHHMMSSZ.
    if [[ ${#na} -eq 13 ]]; then
        if (( 10#${na:0:2} >= 50 )); then na=19$na; else na=20$na; fi
    fi
    [[ "$na" =~ ^[0-9]{14}Z$ && -n "$serial" ]] ||
        { echo "$PROG: error: unexpected certificate layout in $file" >&2; return 1; }
    end=$(date -u -d "${na:0:4}-${na:4:2}-${na:6:2} ${na:8:2}:${na:10:2}:${na:12:2}Z" +%s) || return 1
    fp=$(sha256sum "$der") || return 1
    fp=${fp%% *}
    printf '%s %s serial=%s sha256=%s not_after=%s\n' "$kind" "$id" "${serial,,}" "$fp" "$end" \
        >"$TMPD/manifest/$idx"
    rm -f "$der"
}
IDX=()
for ((i = 0; i < ${#ENTRIES[@]}; i++)); do IDX+=("$(printf '%06d' "$i") ${ENTRIES[i]}"); done
run_parallel manifest_line "${IDX[@]}"
cat "$TMPD"/manifest/[0-9]* >"$OUT/manifest.txt"

# ---------------------------------------------------------------- permissions
# Private keys stay 0600 and their directories 0700 (umask); certificates, public keys, the CRL
# and the manifest are world-readable.
find "$OUT" -type f \( -name '*.crt' -o -name '*.pub' -o -name 'crl.pem' -o -name 'manifest.txt' \) \
    -exec chmod 0644 {} +
find "$OUT" -type f \( -name '*.key' \) -exec chmod 0600 {} +

DONE=1
echo "$PROG: made PKI in $OUT: CA '$CA_CN', broker, ${#GWS[@]} gateways, ${#SVCS[@]} services$([[ $TEST -eq 1 ]] && echo ', test certs')"
