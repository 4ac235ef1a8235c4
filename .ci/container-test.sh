#!/usr/bin/env bash
# The container image, end to end, with podman on this machine kind (called by .ci/run after the suite):
#   1. build it and smoke-test it: GET /healthz with no configuration at all (.ci/container-smoke.sh);
#   2. without configuration: /readyz is a 503 naming TOKENPOOL_DATABASE_URL, a command exits 2 saying so;
#   3. against the machine's PostgreSQL (127.0.0.1:5432, --network host), in a fresh database with an owner
#      and an app role of its own: `tokenpool db upgrade` as the owner, the TOME emulator, a refill, an API
#      key, the API (the image's default command) and POST /v1/cards -> 201 from the pool; the worker
#      serves its metrics and stops within its grace on SIGTERM (--init).
# Prints the image size. Everything it creates (containers, volume, database, roles) is removed on exit.
# Env: CTR_WORK (podman's folder, default /tmp/ctr/ci), CTR_IMAGE (default localhost/app:ci),
#      CONTAINER_TEST_PG (a superuser URL, default postgresql://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
export CTR_WORK=${CTR_WORK:-/tmp/ctr/ci} CTR_IMAGE=${CTR_IMAGE:-localhost/app:ci}
PG=${CONTAINER_TEST_PG:-postgresql://postgres@127.0.0.1:5432/postgres}
IMG=$CTR_IMAGE

echo "--- container: build + smoke (/healthz, no configuration) ---"
SMOKE_PATH=/healthz .ci/container-smoke.sh . 8000
# The podman configuration container-smoke.sh wrote (runc, ulimits, storage under CTR_WORK).
export TMPDIR=$CTR_WORK/tmp CONTAINERS_CONF=$CTR_WORK/containers.conf CONTAINERS_STORAGE_CONF=$CTR_WORK/storage.conf
size=$(podman image inspect --format '{{.Size}}' "$IMG")
echo "image $IMG: $size bytes ($((size / 1000000)) MB)"

tag="ci$$"
db="tokenpool_$tag" owner="tokenpool_owner_$tag" app="tokenpool_app_$tag" volume="tokenpool-home-$tag"
containers=()
cleanup() {
    local code=$?
    for c in "${containers[@]}"; do
        if [ "$code" -ne 0 ]; then echo "--- logs of $c ---"; podman logs --tail 40 "$c" 2>&1 || true; fi
        podman rm -f -t 2 "$c" >/dev/null 2>&1 || true
    done
    podman volume rm -f "$volume" >/dev/null 2>&1 || true
    psql -q "$PG" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP ROLE IF EXISTS $owner" \
        -c "DROP ROLE IF EXISTS $app" >/dev/null 2>&1 || true
    echo "container test: $([ "$code" -eq 0 ] && echo OK || echo FAILED) in $((SECONDS - started)) s"
}
trap cleanup EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {  # URL [expected status]: until it answers (with that status), 60 s at most
    for _ in $(seq 120); do
        status=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
        if [ "$status" = "${2:-200}" ]; then return 0; fi
        sleep 0.5
    done
    fail "$1 did not answer ${2:-200} (last: $status)"
}
start() {  # NAME ARGS...: a detached container, removed on exit
    local name="$1-$tag"; shift
    containers+=("$name")
    podman run -d --init --name "$name" "$@" >/dev/null
}

echo "--- container: no configuration -> not ready, and says what is missing ---"
start bare -p 127.0.0.1::8000 "$IMG"
hp=$(podman port "bare-$tag" 8000/tcp | head -1)
wait_http "http://$hp/healthz"
body=$(curl -s -w '\n%{http_code}' "http://$hp/readyz")
[ "$(tail -n1 <<<"$body")" = 503 ] || fail "/readyz without configuration: $body"
grep -q '"NOT_CONFIGURED"' <<<"$body" && grep -q 'TOKENPOOL_DATABASE_URL' <<<"$body" || fail "/readyz: $body"
echo "/readyz: $(head -n1 <<<"$body" | cut -c1-200)"
set +e; out=$(podman run --rm "$IMG" tokenpool db upgrade 2>&1); code=$?; set -e
[ "$code" = 2 ] && grep -q "tokenpool\[embedded\]" <<<"$out" || fail "db upgrade without a database: exit $code: $out"
echo "db upgrade: $out"

echo "--- container: a card through the image, on the machine's PostgreSQL ---"
owner_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
app_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
# As docs/security.md, "Roles and grants": two roles, neither a superuser; the owner owns the database.
psql -q -v ON_ERROR_STOP=1 "$PG" >/dev/null <<SQL
CREATE ROLE $owner LOGIN PASSWORD '$owner_password';
CREATE ROLE $app LOGIN PASSWORD '$app_password';
CREATE DATABASE $db OWNER $owner;
REVOKE ALL ON DATABASE $db FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE $db TO $app;
SQL
tome_port=$(free_port) api_port=$(free_port) metrics_port=$(free_port)
# Secrets reach the containers through the environment (-e NAME), never their command line.
export TOKENPOOL_DATABASE_ADMIN_URL="postgresql://$owner:$owner_password@127.0.0.1:5432/$db"
export TOKENPOOL_DATABASE_URL="postgresql://$app:$app_password@127.0.0.1:5432/$db"
export TOKENPOOL_DATABASE_APP_ROLE=$app TOKENPOOL_TOME_URL="http://127.0.0.1:$tome_port"
# One volume for TOKENPOOL_HOME: the local vault key file db upgrade creates is the one the others read.
podman volume create "$volume" >/dev/null
run=(--network host -v "$volume:/var/lib/tokenpool" -e TOKENPOOL_DATABASE_URL -e TOKENPOOL_TOME_URL)

start tome --network host "$IMG" tokenpool tome-emulator --host 127.0.0.1 --port "$tome_port" \
    --db /var/lib/tokenpool/tome.sqlite3
podman run --rm "${run[@]}" -e TOKENPOOL_DATABASE_ADMIN_URL -e TOKENPOOL_DATABASE_APP_ROLE "$IMG" \
    tokenpool db upgrade
wait_http "http://127.0.0.1:$tome_port/_admin/health"
refill=$(podman run --rm "${run[@]}" "$IMG" tokenpool refill --pool default --count 20 --json)
grep -q '"outcome": *"succeeded"' <<<"$refill" || fail "refill: $refill"
key=$(podman run --rm "${run[@]}" "$IMG" tokenpool apikey create --name "ci-$tag" --scopes cards:write --json |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')

start api "${run[@]}" -e TOKENPOOL_SERVE_HOST=127.0.0.1 -e TOKENPOOL_SERVE_PORT="$api_port" "$IMG"
wait_http "http://127.0.0.1:$api_port/readyz"
card=$(curl -sS -w '\n%{http_code}' -X POST "http://127.0.0.1:$api_port/v1/cards" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"program": "default", "customer_ref": "ci-container"}')
[ "$(tail -n1 <<<"$card")" = 201 ] || fail "POST /v1/cards: $card"
grep -q '"token_source": *"pool"' <<<"$card" || fail "the card's pair did not come from the pool: $card"
echo "POST /v1/cards -> 201 (token_source pool)"

start worker "${run[@]}" -e TOKENPOOL_WORKER_METRICS_PORT="$metrics_port" "$IMG" tokenpool worker
wait_http "http://127.0.0.1:$metrics_port/metrics"
for name in "worker-$tag" "api-$tag"; do
    t0=$SECONDS
    podman stop -t 30 "$name" >/dev/null
    code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
    [ $((SECONDS - t0)) -lt 25 ] || fail "$name took $((SECONDS - t0)) s to stop on SIGTERM"
    case "$code" in 0|143) ;; *) fail "$name exited with $code on SIGTERM" ;; esac
    echo "$name stopped on SIGTERM in $((SECONDS - t0)) s (exit $code)"
done
