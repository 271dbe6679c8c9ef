#!/usr/bin/env bash
# Hot upgrade of the compose pod's sidecar (docker/compose.yaml):
#
#   docker/upgrade.sh IMAGE        e.g. docker/upgrade.sh meshgate:1.5.0
#
# Starts IMAGE in the free sidecar slot (sidecar-a or sidecar-b). Both slots
# share the pod's network namespace and the upgrade-socket volume, so the new
# process takes over the listening sockets, the config and the filter state
# from the serving one (docs/upgrade.md); the old process drains and then
# idles (--idle-after-handover). Once it has drained, this script stops its
# slot, which is then the free one for the next upgrade. If the new process
# fails, the old one keeps serving: the script removes the new slot's
# container and exits 1.
#
# MESHGATE_COMPOSE_PROJECT  the compose project (default: docker/.env's)
# MESHGATE_UPGRADE_TIMEOUT  seconds to wait for takeover and drain (default 120)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
file="$here/compose.yaml"
image="${1:?usage: docker/upgrade.sh IMAGE}"
timeout="${MESHGATE_UPGRADE_TIMEOUT:-120}"
log() { echo "upgrade.sh: $*" >&2; }

project="${MESHGATE_COMPOSE_PROJECT:-}"
if [[ -z "$project" ]]; then
  project="$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "$here/.env")"
fi

# Compose v2 (`docker compose`) or the standalone v1 (`docker-compose`).
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose_cmd=(docker-compose)
else
  log "neither 'docker compose' nor 'docker-compose' is installed"
  exit 1
fi
compose() { "${compose_cmd[@]}" -f "$file" -p "$project" --profile upgrade "$@"; }

container_of() { compose ps -q "sidecar-$1" 2>/dev/null | head -n1; }
is_running() {
  [[ -n "$1" ]] && [[ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]
}

docker image inspect "$image" >/dev/null 2>&1 || { log "no image $image (docker/build.sh builds meshgate:dev)"; exit 1; }

a="$(container_of a)"
b="$(container_of b)"
if is_running "$a" && is_running "$b"; then
  log "both sidecar slots are running (an upgrade in progress, or one that failed halfway);"
  log "stop the slot that does not serve (see /ready's pid) and run this again"
  exit 1
elif is_running "$a"; then
  old=a new=b old_id="$a"
elif is_running "$b"; then
  old=b new=a old_id="$b"
else
  log "no sidecar slot is running in project $project: start the pod first"
  exit 1
fi

since="$(date +%s)"
log "starting $image in slot sidecar-$new; sidecar-$old serves"
export "MESHGATE_SIDECAR_${new^^}_IMAGE=$image"
compose up -d --no-deps "sidecar-$new" >&2
new_id="$(container_of "$new")"
# A restart by the restart policy means the new process failed (a slot
# started again by `docker start` may carry an earlier count: compare).
restarts="$(docker inspect -f '{{.RestartCount}}' "$new_id")"

# The old process logs this line once it has handed over and drained; only
# then is stopping it free of consequences.
drained="meshgate drained after handing over; idle until SIGTERM"
deadline=$((SECONDS + timeout))
while true; do
  if ! is_running "$new_id" \
    || [[ "$(docker inspect -f '{{.RestartCount}}' "$new_id")" != "$restarts" ]]; then
    log "the new sidecar (slot sidecar-$new) exited; sidecar-$old keeps serving. Its log:"
    docker logs --since "$since" "$new_id" 2>&1 | tail -n 20 >&2 || true
    # Removed, not only stopped: the slot must be free for the next attempt,
    # even if its image is deleted meanwhile.
    compose rm -f -s "sidecar-$new" >&2 || true
    exit 1
  fi
  if docker logs --since "$since" "$old_id" 2>&1 | grep -qF "$drained"; then
    break
  fi
  if ((SECONDS >= deadline)); then
    log "sidecar-$old did not finish draining within ${timeout}s; both slots left running"
    exit 1
  fi
  sleep 0.5
done

compose stop "sidecar-$old" >&2
log "sidecar-$new serves $image; sidecar-$old drained and stopped"
