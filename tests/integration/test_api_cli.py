"""`tokenpool apikey ...` and `tokenpool config ...` against a real database, and the keys they make over HTTP."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import structlog
import typer
from rich.console import Console
from typer.testing import CliRunner

from tests.integration import api_harness
from tests.integration.api_harness import Api
from tokenpool.entrypoints import cli_service
from tokenpool.entrypoints.cli_service import register
from tokenpool.service.auth import SCOPES
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
    assert json.loads(cli("config", "show").stdout)["pool-traffic-percent"] == {
        "stored": 10, "programs": {}, "default": 100}
    assert cli("config", "set", "pool-traffic-percent", "50", "--program", "default").exit_code == 0
    assert json.loads(cli("config", "show").stdout)["pool-traffic-percent"]["programs"] == {"default": 50}
    assert cli("config", "set", "pool-traffic-percent", "50", "--program", "no-such-program").exit_code == 2
    assert cli("config", "unset", "pool-traffic-percent", "--program", "default").exit_code == 0
    assert json.loads(cli("config", "show").stdout)["pool-traffic-percent"]["programs"] == {}
    assert cli("config", "set", "pool-traffic-percent", "101").exit_code == 2
    assert cli("config", "set", "no-such-setting", "1").exit_code == 2
    assert cli("config", "unset", "pool-traffic-percent").exit_code == 0
    assert json.loads(cli("config", "show").stdout)["pool-traffic-percent"]["stored"] is None


def test_a_key_with_a_lifetime_is_listed_with_its_dates_and_revoked_by_name(api: Api, cli, monkeypatch):
    created = cli("apikey", "create", "--name", "expiring", "--scopes", "pools:read", "--expires-in", "30d", "--json")
    assert created.exit_code == 0, created.output
    printed = json.loads(created.stdout)
    expires_at = datetime.fromisoformat(printed["expires_at"])
    assert abs((expires_at - datetime.now(UTC)) - timedelta(days=30)) < timedelta(minutes=1)
    response = httpx.get(f"{api.url}/v1/pools/default", headers={"Authorization": f"Bearer {printed['key']}"},
                         timeout=10)
    assert response.json()["status"] == "EMPTY"  # the default program, registered, its pool empty

    deadline = time.monotonic() + 5  # the service records the use in the background
    while (row := json.loads(cli("apikey", "list", "--json").stdout)[0])["last_used_at"] is None:
        assert time.monotonic() < deadline, "last use never recorded"
        time.sleep(0.05)
    assert row["name"] == "expiring"
    assert row["status"] == "live"
    assert datetime.fromisoformat(row["expires_at"]) == expires_at
    assert row["revoked_at"] is None
    assert datetime.fromisoformat(row["created_at"]) <= datetime.fromisoformat(row["last_used_at"])
    monkeypatch.setattr(cli_service, "console", Console(width=200))  # a wide terminal: one line per key
    table = cli("apikey", "list")
    assert table.exit_code == 0
    line = next(line for line in table.output.splitlines() if "expiring" in line)
    assert "live" in line
    assert expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ") in line
    assert "never" not in line  # it has been used, and it expires

    revoked = cli("apikey", "revoke", "expiring")  # the name as an argument, as `tokenpool run` stops its key
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(cli("apikey", "list", "--json").stdout)[0]["status"] == "revoked"
    assert cli("apikey", "revoke", "expiring").exit_code == 1
    assert cli("apikey", "revoke").exit_code == 2


@pytest.mark.parametrize("duration", ["30", "-1d", "soon", "0m", "99999d"])
def test_a_nonsense_lifetime_is_refused_and_no_key_is_made(api: Api, cli, duration):
    refused = cli("apikey", "create", "--name", "k", "--scopes", "pools:read", "--expires-in", duration)
    assert refused.exit_code == 2
    assert "30d" in refused.output or "3650d" in refused.output
    assert json.loads(cli("apikey", "list", "--json").stdout) == []


def test_create_help_lists_every_scope(cli):
    shown = cli("apikey", "create", "--help")
    assert shown.exit_code == 0
    text = "".join(shown.output.split())  # rich may wrap the help anywhere between words
    for scope in SCOPES:
        assert scope in text
    assert "--expires-in" in shown.output
