#!/usr/bin/env bash
# Run a long build quietly: its output goes to a log file, the terminal gets one progress
# line, and the log's last lines if it fails (with its exit status).
#
#   scripts/quiet_build.sh LOGFILE DESCRIPTION COMMAND [ARGS ...]
set -uo pipefail
LOG=$1; WHAT=$2; shift 2
mkdir -p "$(dirname "$LOG")"
echo "$WHAT; output in $LOG"
"$@" >"$LOG" 2>&1 &
PID=$!
START=$(date +%s)
while kill -0 "$PID" 2>/dev/null; do
    if [ -t 1 ]; then
        printf '\r  %4ds, %6d lines of output' "$(( $(date +%s) - START ))" "$(wc -l <"$LOG")"
    fi
    sleep 1
done
wait "$PID"
STATUS=$?
[ -t 1 ] && printf '\n'
if [ "$STATUS" -ne 0 ]; then
    echo "Failed (exit status $STATUS) after $(( $(date +%s) - START )) s. The last 40 lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit "$STATUS"
fi
echo "  done in $(( $(date +%s) - START )) s"
