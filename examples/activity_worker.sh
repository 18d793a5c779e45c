#!/usr/bin/env bash
# An activity worker with nothing but curl and jq (docs/tasks.md): it long-polls an
# activity for tasks, does the work (here: greets the input's "name") and reports the
# result with the task's token. Run one per core, on any machine that reaches the API.
#
#   STEPLOG_URL=http://127.0.0.1:8080 STEPLOG_KEY=slk_... examples/activity_worker.sh greeter [N]
#
# N: stop after N tasks (default: run until killed). STEPLOG_KEY: an operator key (not
# needed when the server runs without authentication, e.g. `steplog dev` on loopback).
set -euo pipefail

url="${STEPLOG_URL:-http://127.0.0.1:8080}"
activity="${1:?usage: activity_worker.sh ACTIVITY [MAX_TASKS]}"
max="${2:-0}"
headers=(-H "Content-Type: application/json")
if [ -n "${STEPLOG_KEY:-}" ]; then
    headers+=(-H "Authorization: Bearer ${STEPLOG_KEY}")
fi

done_tasks=0
while [ "$max" -eq 0 ] || [ "$done_tasks" -lt "$max" ]; do
    # Waits up to 20 s; an empty answer (204) means no task came: poll again.
    task=$(curl -sS --fail-with-body "${headers[@]}" -X POST \
        -d "{\"workerName\": \"curl-$(hostname)-$$\"}" \
        "$url/v1/activities/$activity/poll?wait=20")
    [ -z "$task" ] && continue
    token=$(jq -r .taskToken <<<"$task")
    if name=$(jq -er '.input.name | strings' <<<"$task"); then
        report=$(jq -cn --arg t "$token" --arg n "$name" \
            '{taskToken: $t, output: {greeting: ("Hello, " + $n + "!")}}')
        route=success
    else
        report=$(jq -cn --arg t "$token" \
            '{taskToken: $t, error: "Greeter.NoName", cause: "the input has no name"}')
        route=failure
    fi
    curl -sS --fail-with-body "${headers[@]}" -X POST -d "$report" "$url/v1/tasks/$route" >/dev/null
    done_tasks=$((done_tasks + 1))
done
