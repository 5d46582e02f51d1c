#!/usr/bin/env bash
# compose/images.sh - builds the container images of suido from Debian packages and the binaries
# of one build (`make images`; see compose/README.md).
#
#   compose/images.sh BUILD_DIR [--tag TAG]
#
# 1. The base: a Debian bookworm root filesystem made by `debootstrap --variant=minbase` from the
#    apt mirror this machine is configured with, holding only the packages whose libraries the
#    binaries load (found with ldd and dpkg -S) and Mosquitto, stripped of documentation,
#    package caches and set-uid bits. It is kept as BUILD_DIR/images/rootfs-<key>.tar, where the
#    key is a hash of the suite, mirror, recipe and package list, so a rerun with the same
#    libraries takes seconds, and imported with `docker import` as suido/base:<key>.
# 2. One small image per service on that base (`docker build`, no RUN step): its binary, the
#    directory its state volume is mounted on, owned by its uid (compose/uids), and that user.
#    Nothing is downloaded but the Debian packages; no registry is needed.
# 3. Prometheus: a second root filesystem made the same way with Debian's `prometheus` package
#    (cached and imported as suido/prometheus-base:<key>), and suido/prometheus on it: the
#    healthcheck and the TSDB volume's mount point (/var/lib/prometheus) owned by its uid.
#
# Images: suido/{broker,registry,ingest,verify,profile,anomaly,archive,gate,gateway-sim,tools,
# prometheus} (+ archive-standby, anomaly-1, monitor when their binaries exist), tagged TAG (default
# latest).
set -euo pipefail
PROG=images
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '%s: %s\n' "$PROG" "$*"; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
BUILD=""
TAG=latest
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; TAG=$2; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) BUILD=$1; shift ;;
    esac
done
[[ -n "$BUILD" ]] || die "usage: compose/images.sh BUILD_DIR [--tag TAG]"
BUILD=$(cd "$BUILD" && pwd)
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "bad tag '$TAG'"
[[ $(id -u) -eq 0 ]] || die "debootstrap and docker need root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/install-deps.sh)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info)"

SUITE=bookworm
# Bump when the way the root filesystem is made changes: the cached tarballs are then remade.
RECIPE=3
WORK=$BUILD/images
mkdir -p "$WORK"

uid_of() { awk -v n="$1" '$1 == n { print $2 }' "$HERE/uids"; }

# ---------------------------------------------------------------- what goes into which image
# image  uid-name  file-in-build:path-in-image ...
IMAGES=(
    "broker broker lib/suido_plugin.so:/usr/lib/suido/suido_plugin.so bin/suido-broker-start:/usr/bin/suido-broker-start"
    "registry registry bin/suido-registry:/usr/bin/suido-registry"
    "ingest ingest bin/suido-ingest:/usr/bin/suido-ingest"
    "verify verify bin/suido-verify:/usr/bin/suido-verify"
    "profile profile bin/suido-profile:/usr/bin/suido-profile"
    "anomaly anomaly-0 bin/suido-anomaly:/usr/bin/suido-anomaly"
    "archive archive bin/suido-archive:/usr/bin/suido-archive"
    "gate gate bin/suido-gate:/usr/bin/suido-gate"
    "gateway-sim gateway-sim bin/suido-gateway-sim:/usr/bin/suido-gateway-sim"
    "tools suidoctl bin/suidoctl:/usr/bin/suidoctl bin/suido-keygen:/usr/bin/suido-keygen"
)
# The standby runs the archive binary as a user of its own, and so does each further anomaly
# shard (its state volume takes its owner from the image); the monitor, once it is built.
IMAGES+=("archive-standby archive-standby bin/suido-archive:/usr/bin/suido-archive")
IMAGES+=("anomaly-1 anomaly-1 bin/suido-anomaly:/usr/bin/suido-anomaly")
[[ -x "$BUILD/bin/suido-monitor" ]] &&
    IMAGES+=("monitor monitor bin/suido-monitor:/usr/bin/suido-monitor")
# Prometheus: Debian's package on a base of its own (below), nothing of this build
IMAGES+=("prometheus prometheus")

FILES=()
for spec in "${IMAGES[@]}"; do
    read -r -a f <<<"$spec"
    for m in "${f[@]:2}"; do
        src=$BUILD/${m%%:*}
        [[ -f "$src" ]] || die "$src missing: run 'make build BUILD_DIR=${BUILD}' first"
        FILES+=("$src")
    done
done

# ---------------------------------------------------------------- the packages the binaries load
# dpkg -S knows a library by the path its package installed it under (/lib or /usr/lib on a
# merged-/usr system), so both spellings are asked, in one dpkg call for every library.
declare -A LIBS=()
for f in "${FILES[@]}"; do
    while read -r lib; do
        [[ -n "$lib" ]] && LIBS[$(readlink -f "$lib")]=1
    done < <(ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
done
spellings() {
    case "$1" in
        /usr/lib/*) echo "$1" "${1#/usr}" ;;
        /lib/*|/lib64/*) echo "$1" "/usr$1" ;;
        *) echo "$1" ;;
    esac
}
ASK=()
for l in "${!LIBS[@]}"; do read -r -a s <<<"$(spellings "$l")"; ASK+=("${s[@]}"); done
declare -A OWNER=()
while IFS= read -r line; do
    pkg=${line%%: *} path=${line#*: }
    OWNER[$path]=${pkg%%:*}
done < <(dpkg -S "${ASK[@]}" 2>/dev/null || true)
declare -A PKG=([mosquitto]=1)
for l in "${!LIBS[@]}"; do
    p=""
    for s in $(spellings "$l"); do p=${p:-${OWNER[$s]:-}}; done
    [[ -n "$p" ]] || die "a binary needs $l, which no installed Debian package provides"
    PKG[$p]=1
done
PKGS=$(printf '%s\n' "${!PKG[@]}" | sort | paste -sd, -)

# ---------------------------------------------------------------- the mirror apt uses here
mirror() {
    local m=""
    if [[ -f /etc/apt/sources.list ]]; then
        m=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list)
    fi
    if [[ -z "$m" ]]; then
        # deb822: the first "Types: deb" stanza whose Suites name bookworm
        m=$(awk 'BEGIN { RS = ""; FS = "\n" }
                 /(^|\n)Types:[^\n]*deb/ && /(^|\n)Suites:[^\n]*bookworm([ \n]|$)/ {
                     for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, " "); print a[2]; exit }
                 }' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=$(mirror)

# rootfs LABEL PACKAGES [PATH...]: a root filesystem debootstrapped with PACKAGES (comma-separated)
# and without PATHs (relative to its root) that nothing in it uses, cached as
# $WORK/LABEL-<key>.tar and imported as suido/base:<key> (LABEL rootfs) or suido/NAME-base:<key>
# (LABEL NAME-rootfs); sets ROOTFS_KEY and ROOTFS_IMAGE. The key hashes the suite, mirror,
# recipe, package list and PATHs, so a rerun with the same ones takes seconds; older tarballs of
# the same label are removed.
rootfs() {
    local label=$1 pkgs=$2 key tarball image root
    shift 2
    key=$({ printf 'suite=%s\nmirror=%s\nrecipe=%s\npackages=%s\n' "$SUITE" "$MIRROR" "$RECIPE" \
            "$pkgs"; [[ $# -eq 0 ]] || printf 'without=%s\n' "$*"; } | sha256sum | cut -c1-16)
    tarball=$WORK/$label-$key.tar
    image=suido/${label%rootfs}base:$key
    if [[ ! -f "$tarball" ]]; then
        say "debootstrap $SUITE (minbase) from $MIRROR with: ${pkgs//,/ }"
        root=$(mktemp -d "$WORK/.$label.XXXXXX")
        trap 'rm -rf -- "$root" "$tarball.tmp"' EXIT
        if ! debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$root" "$MIRROR" \
                >"$WORK/debootstrap-$label.log" 2>&1; then
            tail -20 "$WORK/debootstrap-$label.log" >&2
            die "debootstrap failed (log: $WORK/debootstrap-$label.log)"
        fi
        # Only what runs: no documentation, manuals, translations, package lists or caches,
        # logs; no set-uid or set-gid program (the containers also run with no-new-privileges).
        rm -rf "$root"/usr/share/{doc,man,info,lintian,linda} "$root"/usr/share/locale/* \
               "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
               "$root"/var/log/* "$root"/tmp/* "$root"/root/.[!.]* 2>/dev/null || true
        local p
        for p in "$@"; do rm -rf -- "${root:?}/$p"; done
        find "$root" -xdev -type f -perm /6000 -exec chmod ug-s {} +
        # mount points: configuration (read-only bind), state (volume or tmpfs)
        mkdir -p "$root/deploy" "$root/var/lib/suido"
        tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf -- "$root"
        trap - EXIT
        find "$WORK" -maxdepth 1 -name "$label-*.tar" ! -name "$label-$key.tar" -delete
    else
        say "root filesystem cached: $tarball"
    fi
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        say "docker import $image"
        docker import --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' --change 'WORKDIR /' \
            --message "suido $label: debootstrap $SUITE minbase + $pkgs" "$tarball" "$image" \
            >/dev/null
    fi
    ROOTFS_KEY=$key ROOTFS_IMAGE=$image
}

# ---------------------------------------------------------------- the root filesystems (cached)
# The services' base: the libraries the binaries load, and Mosquitto.
rootfs rootfs "$PKGS"
KEY=$ROOTFS_KEY BASE=$ROOTFS_IMAGE
docker tag "$BASE" "suido/base:$TAG"
# Prometheus's: Debian's package and what it depends on (its web pages' scripts and fonts), as a
# base of its own so that the services' images do not carry it. The pages load moment-timezone's
# packed script only: its raw time-zone tables for Node.js (212 MB) are left out.
rootfs prometheus-rootfs prometheus usr/share/javascript/moment-timezone/data
PROM_KEY=$ROOTFS_KEY PROM_BASE=$ROOTFS_IMAGE

# ---------------------------------------------------------------- one image per service
# One layer on the base: a tarball whose members carry their final owner and mode (ADD keeps
# them), holding only the paths named below, so no directory of the base changes. The classic
# builder caches the step by the tarball's content: an unchanged binary rebuilds nothing.
for spec in "${IMAGES[@]}"; do
    read -r -a f <<<"$spec"
    name=${f[0]} uid=$(uid_of "${f[1]}")
    [[ -n "$uid" ]] || die "no uid for ${f[1]} in compose/uids"
    ctx=$WORK/ctx/$name
    rm -rf "$ctx"
    mkdir -p "$ctx/root"
    members=()
    for m in "${f[@]:2}" "$HERE/health.sh:/usr/bin/suido-health"; do
        src=${m%%:*} dst=${m#*:}
        [[ "$src" == /* ]] || src=$BUILD/$src
        install -D -m 0755 -o 0 -g 0 "$src" "$ctx/root$dst"
        members+=("${dst#/}")
    done
    if [[ $name == monitor && -d "$TOP/services/monitor/www" ]]; then
        mkdir -p "$ctx/root/usr/share/suido/monitor"
        cp -r "$TOP/services/monitor/www" "$ctx/root/usr/share/suido/monitor/www"
        chown -R 0:0 "$ctx/root/usr/share/suido"
        chmod -R u=rwX,go=rX "$ctx/root/usr/share/suido"
        members+=(usr/share/suido)
    fi
    # the state volume's mount point: a new named volume takes its owner and mode from here
    # (Prometheus's TSDB: where Debian's package keeps it)
    state=var/lib/suido from=$BASE key=$KEY
    [[ $name != prometheus ]] || state=var/lib/prometheus from=$PROM_BASE key=$PROM_KEY
    install -d -m 0700 -o "$uid" -g "$uid" "$ctx/root/$state"
    members+=("$state")
    # and the TSDB's own directory (in the tarball with its parent), which the package made for
    # its system user
    [[ $name != prometheus ]] || install -d -m 0700 -o "$uid" -g "$uid" "$ctx/root/$state/metrics2"
    # the identity file's volume: written by the registry, read by the broker; owned by the
    # registry in both images, whichever of them creates the volume first
    if [[ $name == broker || $name == registry ]]; then
        r=$(uid_of registry)
        install -d -m 0755 -o "$r" -g "$r" "$ctx/root/var/lib/suido-identities"
        members+=(var/lib/suido-identities)
    fi
    tar --numeric-owner --sort=name --mtime=@0 -C "$ctx/root" -cf "$ctx/layer.tar" "${members[@]}"
    rm -rf "$ctx/root"
    cat >"$ctx/Dockerfile" <<EOT
# suido/$name, generated by compose/images.sh
FROM $from
ADD layer.tar /
LABEL org.suido.image=$name org.suido.base=$key
USER $uid:$uid
EOT
    docker build -q -t "suido/$name:$TAG" "$ctx" >/dev/null 2>"$ctx/build.log" || {
        cat "$ctx/build.log" >&2
        die "docker build of suido/$name failed (context $ctx)"
    }
done

say "images (tag $TAG):"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^suido/[^ ]*:$TAG " | sort |
    sed 's/^/  /'
echo "  (each service image is the base plus one layer of its own; the base is stored once)"
