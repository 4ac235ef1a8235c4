#!/bin/sh
# Vendored from the machine kind's shared tools (../shared/tools/container-smoke.sh, "Things that work on
# this machine kind"), so CI works from a clean clone where ../shared may not exist. Changes from the
# original: podman itself is installed when missing (the original assumed it); the image name is
# $CTR_IMAGE (default localhost/app:ci, the original's), kept for .ci/container-test.sh. Everything else
# is the original.
#
# usage: container-smoke.sh <context-dir> [port-in-container]
# Builds the Dockerfile in <context-dir> with podman on this machine kind and checks that the
# container answers HTTP on <port> (GET /, any 2xx). No container registry is reachable here, so the
# base image is made locally from Debian packages (mmdebstrap, the machine's own apt sources) and
# passed as the build argument BASE_IMAGE: the Dockerfile must start with
#   ARG BASE_IMAGE=python:3.12-slim
#   FROM ${BASE_IMAGE}
# Known quirks of this VM, handled below: crun fails (cgroups hybrid), so runc; ulimits must be
# at most nofile=20000, nproc=32768; PyPI goes through a TLS proxy whose CA the base image copies
# from the host; use --init (Python as PID 1 ignores SIGTERM). First run ~60 s, cached ~3 s.
set -eu
CTX=${1:-.}; PORT=${2:-8000}; W=${CTR_WORK:-/tmp/ctr/ci}
BASE=localhost/python:bookworm-local; IMG=${CTR_IMAGE:-localhost/app:ci}
mkdir -p "$W/tmp"; export TMPDIR="$W/tmp"
export CONTAINERS_CONF="$W/containers.conf" CONTAINERS_STORAGE_CONF="$W/storage.conf"
cat > "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "overlay"
graphroot = "$W/storage"
runroot = "$W/run"
CONF
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
  # runc, not crun (see above); catatonit for --init; netavark + iptables for -p; aardvark-dns for names.
  set -- podman runc mmdebstrap catatonit netavark aardvark-dns iptables
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "$@" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
fi
if ! podman image exists "$BASE"; then
  CA=/etc/ssl/certs/ca-certificates.crt
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,python3,python3-venv,python3-pip,python-is-python3 \
    --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" && chroot "$1" update-ca-certificates >/dev/null' \
    bookworm - /etc/apt/sources.list.d/debian.sources |
  podman import --change 'CMD ["python3"]' --change "ENV LANG=C.UTF-8" --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" \
    --change "ENV SSL_CERT_FILE=$CA" --change "ENV PIP_CERT=$CA" --change "ENV REQUESTS_CA_BUNDLE=$CA" - "$BASE" >/dev/null
fi
podman build -q --build-arg BASE_IMAGE="$BASE" -t "$IMG" "$CTX"
cid=$(podman run -d --init -p 127.0.0.1::"$PORT" "$IMG")
trap 'podman rm -f -t 2 "$cid" >/dev/null' EXIT
hp=$(podman port "$cid" "$PORT/tcp" | head -1)
for i in $(seq 60); do curl -fsS "http://$hp${SMOKE_PATH:-/}" && { echo; echo SMOKE OK; exit 0; }; sleep 1; done
podman logs "$cid"; echo SMOKE FAILED; exit 1
