"""`tokenpool --version` and the help of every command: flags show no value type, the exit codes and what
`run` and `serve` need are written down."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from tokenpool.entrypoints.cli import app

ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def _commands(group: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in sorted(getattr(group, "commands", {}).items()):
        yield from _commands(command, (*path, name))


def every_command() -> list[tuple[str, ...]]:
    return list(_commands(typer.main.get_command(app)))


def help_of(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env=ENV)
    assert result.exit_code == 0, result.output
    return result.output


def test_version_prints_the_installed_package_version() -> None:
    done = subprocess.run([sys.executable, "-m", "tokenpool", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tokenpool {version('tokenpool')}"


def test_every_command_is_listed() -> None:
    commands = {" ".join(path) for path in every_command()}
    assert {"run", "serve", "worker", "db status", "apikey create", "tome-emulator"} <= commands


@pytest.mark.parametrize("command", every_command(), ids=lambda path: " ".join(path) or "tokenpool")
def test_no_flag_shows_a_value_type(command: tuple[str, ...]) -> None:
    text = help_of(*command)
    assert "--help" in text
    assert "<bool>" not in text
    assert "BOOLEAN" not in text


def test_flags_still_show_as_flags_and_options_keep_their_type() -> None:
    prune = help_of("db", "prune")
    assert "--dry-run" in prune
    assert "--json" in prune
    health = help_of("health")
    assert "--alert" in health
    assert "--no-alert" in health
    assert "<int>" in help_of("run")  # --port takes a value


def test_db_status_states_its_exit_codes() -> None:
    text = " ".join(help_of("db", "status").split())
    for code in ("0 up to date", "1 a migration is pending", "3 an applied migration's file changed",
                 "4 the database could not be reached"):
        assert code in text


def test_run_says_what_it_needs_starts_and_exits_with() -> None:
    text = " ".join(help_of("run").split())
    for needed in ("TOKENPOOL_DATABASE_URL", "embedded", "TOKENPOOL_TOME_URL", "emulator", "bearer token",
                   "TOKENPOOL_VAULT_LOCAL_KEY_FILE", "demo API key", "worker", "TOKENPOOL_WORKER_METRICS_PORT",
                   "127.0.0.1", "2 a port you chose is taken", "3 another run holds TOKENPOOL_HOME"):
        assert needed in text, needed


def test_serve_says_what_it_needs_and_starts() -> None:
    text = " ".join(help_of("serve").split())
    for needed in ("TOKENPOOL_DATABASE_URL", "db upgrade", "embedded", "TOKENPOOL_TOME_URL",
                   "TOKENPOOL_VAULT_KEY_PROVIDER", "apikey create", "Starts the API alone", "127.0.0.1:8000"):
        assert needed in text, needed
