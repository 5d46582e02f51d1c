#!/bin/bash
# suido-health FILE [MAX_AGE_S] - a container's healthcheck: healthy while FILE, which the
# process rewrites every second (a daemon's metrics file, the broker plugin's counters), is
# younger than MAX_AGE_S seconds (default 10). A process that hangs or died stops rewriting it.
f=${1:?usage: suido-health FILE [MAX_AGE_S]}
max=${2:-10}
m=$(stat -c %Y "$f" 2>/dev/null) || { echo "unhealthy: $f does not exist"; exit 1; }
age=$(( $(date +%s) - m ))
if (( age >= max )); then
    echo "unhealthy: $f was last written ${age} s ago"
    exit 1
fi
echo "healthy: $f written ${age} s ago"
