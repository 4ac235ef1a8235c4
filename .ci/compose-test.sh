#!/usr/bin/env bash
# compose.yaml brought up for real on this machine kind (called by .ci/run after .ci/container-test.sh, whose
# podman setup and local base image it reuses), as far as the machine allows:
#   - postgres:16 cannot be pulled (no registry): .ci/postgres-standin builds a stand-in (Debian's PostgreSQL 15
#     with the official image's first-start contract) and an override file points the `postgres` service at it;
#     everything else is compose.yaml as committed, including the initdb script that creates the roles;
#   - podman 4.3's podman-compose ignores `depends_on` conditions, so the file is run by docker-compose 1.29
#     (Debian's) against podman's Docker-compatible API socket, which honours service_healthy and
#     service_completed_successfully;
#   - podman 4.3 runs healthchecks from systemd timers and this machine has no systemd: a loop here runs
#     `podman healthcheck run` for the project's containers every 2 s (what the timers would do).
# Then: an API key through `exec api`, POST /v1/cards -> 201 from the pool the worker filled, `down -v`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
export CTR_WORK=${CTR_WORK:-/tmp/ctr/ci}
export TMPDIR=$CTR_WORK/tmp CONTAINERS_CONF=$CTR_WORK/containers.conf CONTAINERS_STORAGE_CONF=$CTR_WORK/storage.conf
[ -f "$CONTAINERS_CONF" ] || { echo "no podman setup under $CTR_WORK: run .ci/container-test.sh first" >&2; exit 1; }
export BASE_IMAGE=localhost/python:bookworm-local
podman image exists "$BASE_IMAGE" || { echo "no $BASE_IMAGE: run .ci/container-test.sh first" >&2; exit 1; }
if ! command -v docker-compose >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends docker-compose >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends docker-compose >/dev/null; }
fi

project="tpcompose$$"
socket="$CTR_WORK/compose-$$.sock" override="$CTR_WORK/compose-override-$$.yaml"
pids=()
dc=(docker-compose --ansi never -p "$project" -f compose.yaml -f "$override")
compose() { "${dc[@]}" "$@"; }
cleanup() {
    local code=$?
    if [ "$code" -ne 0 ]; then
        compose ps 2>&1 || true
        for service in postgres tome migrate api worker; do
            echo "--- logs of $service ---"; compose logs --no-color --tail 30 "$service" 2>&1 || true
        done
    fi
    compose down -v --timeout 10 >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -f "$socket" "$override"
    echo "compose test: $([ "$code" -eq 0 ] && echo OK || echo FAILED) in $((SECONDS - started)) s"
}
trap cleanup EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }

echo "--- compose: the postgres:16 stand-in ---"
podman build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t localhost/postgres-standin:15 .ci/postgres-standin >/dev/null
cat > "$override" <<YAML
services:
  postgres:
    image: localhost/postgres-standin:15
YAML

podman system service --time=0 "unix://$socket" >/dev/null 2>&1 &
pids+=($!)
export DOCKER_HOST="unix://$socket"
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
(
    while true; do
        for c in $(podman ps -q --filter "label=com.docker.compose.project=$project" 2>/dev/null); do
            podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 2
    done
) >/dev/null 2>&1 &
pids+=($!)

# The settings compose.yaml asks for (the .env of a real deployment): fresh passwords, a free port.
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
POSTGRES_PASSWORD=$(secret) TOKENPOOL_OWNER_DB_PASSWORD=$(secret) TOKENPOOL_APP_DB_PASSWORD=$(secret)
TOKENPOOL_API_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export POSTGRES_PASSWORD TOKENPOOL_OWNER_DB_PASSWORD TOKENPOOL_APP_DB_PASSWORD TOKENPOOL_API_PORT

echo "--- compose: up (build, postgres -> migrate -> api + worker, tome) ---"
timeout 600 "${dc[@]}" up -d --build >"$CTR_WORK/compose-up-$$.log" 2>&1 || { tail -30 "$CTR_WORK/compose-up-$$.log"; fail "up"; }
rm -f "$CTR_WORK/compose-up-$$.log"
api="http://127.0.0.1:$TOKENPOOL_API_PORT"
for _ in $(seq 60); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$api/readyz")" = 200 ] && break; sleep 1; done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$api/readyz")" = 200 ] || fail "$api/readyz is not 200"
[ "$(podman inspect --format '{{.State.ExitCode}}' "${project}_migrate_1")" = 0 ] || fail "migrate did not exit 0"

key=$(compose exec -T api tokenpool apikey create --name ci --scopes cards:write --json |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
for _ in $(seq 60); do  # the worker's first refill fills the pool
    card=$(curl -sS -w '\n%{http_code}' -X POST "$api/v1/cards" -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' -d '{"program": "default", "customer_ref": "ci-compose"}')
    [ "$(tail -n1 <<<"$card")" = 201 ] || fail "POST /v1/cards: $card"
    grep -q '"token_source": *"pool"' <<<"$card" && break
    sleep 1
done
grep -q '"token_source": *"pool"' <<<"$card" || fail "no card from the pool within 60 s: $card"
echo "POST /v1/cards -> 201 (token_source pool)"
compose ps
