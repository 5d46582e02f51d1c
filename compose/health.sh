#!/bin/bash
# suido-health FILE [MAX_AGE_S] - a container's healthcheck: healthy while FILE, which the
# process rewrites every second (a daemon's metrics file, the broker plugin's counters), is
# younger than MAX_AGE_S seconds (default 10). A process that hangs or died stops rewriting it.
#
# suido-health --newest DIR [MAX_AGE_S] - healthy while the newest file in DIR is younger than
# MAX_AGE_S seconds (default 10): the gateway simulator, which writes no metrics file, appends
# every batch it takes and every ack it gets to its gateways' outboxes (DIR/<gw>.outbox).
#
# suido-health --http HOST:PORT PATH - healthy while GET PATH on plain HTTP at HOST:PORT answers
# 200 within 3 s (Prometheus: /-/healthy on its own listening address).
if [[ ${1:-} == --http ]]; then
    usage="usage: suido-health --http HOST:PORT PATH"
    hp=${2:?$usage} path=${3:?$usage}
    status=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$2" "$1" >&3
        IFS=" " read -r _ code _ <&3 && echo "$code"' _ "$hp" "$path" 2>/dev/null)
    if [[ $status != 200 ]]; then
        echo "unhealthy: GET http://$hp$path answered '${status:-nothing}'"
        exit 1
    fi
    echo "healthy: GET http://$hp$path answered 200"
    exit 0
fi
if [[ ${1:-} == --newest ]]; then
    d=${2:?usage: suido-health --newest DIR [MAX_AGE_S]}
    max=${3:-10}
    f="" m=0
    while read -r t e; do
        if (( t > m )); then m=$t f=$e; fi
    done < <(stat -c '%Y %n' -- "$d"/* 2>/dev/null)
    [[ -n $f ]] || { echo "unhealthy: no file in $d"; exit 1; }
else
    f=${1:?usage: suido-health FILE [MAX_AGE_S]}
    max=${2:-10}
    m=$(stat -c %Y "$f" 2>/dev/null) || { echo "unhealthy: $f does not exist"; exit 1; }
fi
age=$(( $(date +%s) - m ))
if (( age >= max )); then
    echo "unhealthy: $f was last written ${age} s ago"
    exit 1
fi
echo "healthy: $f written ${age} s ago"
