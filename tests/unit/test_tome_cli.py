"""The ``tome-emulator`` command registers on any Typer app with the documented flags."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from tokenpool.entrypoints.tome_emulator_cli import register
from tokenpool.tome.emulator.__main__ import main as module_main


def test_register_adds_tome_emulator_with_every_fault_flag() -> None:
    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps Typer from collapsing the app into one command
        """Placeholder."""

    result = CliRunner().invoke(app, ["tome-emulator", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for flag in (
        "--host",
        "--port",
        "--db",
        "--latency-ms",
        "--jitter-ms",
        "--rate-limit-rps",
        "--error-rate",
        "--outage",
        "--slow-ms",
        "--corrupt-rate",
        "--max-batch",
    ):
        assert flag in result.output


def test_python_dash_m_takes_the_same_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        module_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--db", "--latency-ms", "--rate-limit-rps", "--error-rate", "--outage", "--slow-ms", "--max-batch"):
        assert flag in out
