"""`tokenpool apikey ...` and `tokenpool config ...` against a real database, and the keys they make over HTTP."""

from __future__ import annotations

import json
import sys
import time

import httpx
import pytest
import structlog
import typer
from typer.testing import CliRunner

from tests.integration import api_harness
from tests.integration.api_harness import Api
from tokenpool.entrypoints.cli_service import register
from tokenpool.settings import get_settings

api = api_harness.api  # the fixture: a running service with its own database


@pytest.fixture
def cli(api: Api, monkeypatch):
    """The CLI in this process. The service under test also runs in this process (a thread) and logs; a
    log line it writes while CliRunner has swapped sys.stdout would land in the command's output (seen
    once in CI). Its logs go to the real stderr meanwhile; parse stdout, where the JSON goes."""
    monkeypatch.setenv("TOKENPOOL_DATABASE_URL", api.database_url)
    get_settings.cache_clear()
    saved_logging = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args))
    structlog.configure(**saved_logging)
    get_settings.cache_clear()


def test_a_created_key_is_printed_once_and_works_until_revoked(api: Api, cli):
    created = cli("apikey", "create", "--name", "cli-key", "--scopes", "pools:read,cards:read", "--json")
    assert created.exit_code == 0, created.output
    printed = json.loads(created.stdout)
    assert printed["name"] == "cli-key"
    assert printed["scopes"] == ["cards:read", "pools:read"]
    headers = {"Authorization": f"Bearer {printed['key']}"}
    response = httpx.get(f"{api.url}/v1/pools/default", headers=headers, timeout=10)
    assert (response.status_code, response.json()["status"]) == (200, "EMPTY"), "authenticated: the pool is empty"

    listed = cli("apikey", "list", "--json")
    assert [k["name"] for k in json.loads(listed.stdout)] == ["cli-key"]
    assert printed["key"] not in listed.output

    assert cli("apikey", "revoke", "--name", "cli-key").exit_code == 0
    time.sleep(0.3)  # the harness caches key checks for 0.2 s
    assert httpx.get(f"{api.url}/v1/pools/default", headers=headers, timeout=10).status_code == 401
    assert cli("apikey", "revoke", "--name", "cli-key").exit_code == 1


def test_bad_key_requests_are_refused(cli):
    assert cli("apikey", "create", "--name", "k", "--scopes", "cards:delete").exit_code == 2
    assert cli("apikey", "create", "--name", "k", "--scopes", "cards:read").exit_code == 0
    duplicate = cli("apikey", "create", "--name", "k", "--scopes", "cards:read")
    assert duplicate.exit_code == 2
    assert "exists" in duplicate.output


def test_the_traffic_share_is_set_shown_and_unset(cli):
    assert cli("config", "set", "pool-traffic-percent", "10").exit_code == 0
    assert json.loads(cli("config", "show").stdout)["pool-traffic-percent"] == {"stored": 10, "default": 100}
    assert cli("config", "set", "pool-traffic-percent", "101").exit_code == 2
    assert cli("config", "set", "no-such-setting", "1").exit_code == 2
    assert cli("config", "unset", "pool-traffic-percent").exit_code == 0
    assert json.loads(cli("config", "show").stdout)["pool-traffic-percent"]["stored"] is None
