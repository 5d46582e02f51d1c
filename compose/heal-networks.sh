#!/usr/bin/env bash
# compose/heal-networks.sh - recreates the containers of a compose deployment that are attached
# to a network that no longer exists, and only those.
#
#   compose/heal-networks.sh DIR
#
# DIR is a deployment made by `scripts/mkdeploy.sh DIR --compose` (it has DIR/dc). A network
# removed while the containers on it were stopped (`docker network prune` after `DIR/dc stop`)
# makes every start of those containers fail with "network <id> not found", which names no
# network; `up -d` does not help, since compose sees nothing changed. This script names each
# container and the networks it lost, then runs DIR/dc up --no-start --no-deps --force-recreate
# for their services only (a scaled service keeps its number of replicas): compose makes the
# missing networks again and the new containers join them, on the same state volumes. They are
# left stopped, as the old ones were (a network cannot be removed while a running container is
# on it): start them as meant, `DIR/dc start` or `DIR/dc up -d`, which starts each after what it
# depends on. Containers whose networks all exist are not touched. Exit 0 (also when there was
# nothing to do), 1 with one error line.
set -euo pipefail
PROG=heal-networks
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: compose/heal-networks.sh DIR"
[[ -d "$1" ]] || die "$1: no such deployment folder"
DIR=$(cd "$1" && pwd)
[[ -x "$DIR/dc" && -f "$DIR/compose.env" ]] ||
    die "$DIR has no dc and compose.env: not a compose deployment (scripts/mkdeploy.sh $DIR --compose)"
project=$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "$DIR/compose.env" | tail -n1)
[[ -n "$project" ]] || die "$DIR/compose.env sets no COMPOSE_PROJECT_NAME"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info)"

existing=" $(docker network ls -q --no-trunc | tr '\n' ' ') "
declare -A lost=()      # services with a container that lost a network
declare -A count=()     # service -> its containers
while read -r id; do
    [[ -n "$id" ]] || continue
    # NAME SERVICE then NETWORK=ID for every network the container is attached to
    read -r name svc nets < <(docker inspect -f '{{.Name}} {{index .Config.Labels "com.docker.compose.service"}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.NetworkID}} {{end}}' "$id")
    name=${name#/}
    count[$svc]=$((${count[$svc]:-0} + 1))
    gone=()
    for n in $nets; do
        [[ $existing == *" ${n#*=} "* ]] || gone+=("${n%%=*} (id ${n#*=})")
    done
    [[ ${#gone[@]} -gt 0 ]] || continue
    list=$(printf ', %s' "${gone[@]}")
    echo "$PROG: $name (service $svc) is attached to networks that no longer exist: ${list#, }"
    lost[$svc]=1
done < <(docker ps -a -q --no-trunc --filter "label=com.docker.compose.project=$project" \
    --filter label=com.docker.compose.oneoff=False)

if [[ ${#lost[@]} -eq 0 ]]; then
    echo "$PROG: every network of project $project's containers exists: nothing to do"
    exit 0
fi
services=() scale=()
for svc in "${!lost[@]}"; do
    services+=("$svc")
    [[ ${count[$svc]} -eq 1 ]] || scale+=(--scale "$svc=${count[$svc]}")
done
out=$("$DIR/dc" up --no-start --no-deps --force-recreate "${scale[@]}" "${services[@]}" 2>&1) ||
    die "$DIR/dc up --no-start --no-deps --force-recreate ${scale[*]} ${services[*]} failed: ${out##*$'\n'}"
echo "$PROG: recreated ${services[*]} (stopped, as they were) on networks made again; every" \
    "other container untouched. Start them as meant: $DIR/dc start (or $DIR/dc up -d)"
