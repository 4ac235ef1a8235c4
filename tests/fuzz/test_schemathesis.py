"""Schemathesis against the running service: every operation, every phase (the stateful one included).

The CLI (``st run``) runs as a subprocess against a real uvicorn server (tests/integration/api_harness.py:
its own database, the TOME emulator), with a key holding every scope (schemathesis.toml sends it as the
OpenAPI ``HTTPBearer`` scheme; the ignored_auth check also sends none). Every check Schemathesis has must
pass: no server error (5xx) but a documented 503; every response's status, content type, headers and body
as the OpenAPI document declares them; invalid input refused with a 4xx; valid input accepted; a resource
just created found. schemathesis.toml says which statuses count as "refused" and "accepted", and why;
hooks.py ties an Idempotency-Key to its body. What a run finds is fixed in the app and kept as a plain test
in tests/integration/test_api_input.py.

The figures (operations, phases, cases, failures, time) are printed on one line, from Schemathesis' JSON
report. Deselected by default (marker ``fuzz``); ``.ci/run`` runs it once: ``pytest -m fuzz tests/fuzz``.
``TOKENPOOL_FUZZ_SEED`` / ``TOKENPOOL_FUZZ_MAX_EXAMPLES`` change the seed (fixed: CI is deterministic)
and the cases per operation and phase (schemathesis.toml: 40); ``TOKENPOOL_FUZZ_REPORT_DIR`` keeps the
reports (JSON, JUnit, the console output) in a folder of your choice.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.database import register_program
from tests.fuzz.hooks import REGISTERED_PROGRAMS
from tests.integration import api_harness
from tests.integration.api_harness import Api

pytestmark = pytest.mark.fuzz

api = api_harness.api  # the fixture: a running service with its own database

SEED = int(os.environ.get("TOKENPOOL_FUZZ_SEED", "20240611"))
MAX_EXAMPLES = os.environ.get("TOKENPOOL_FUZZ_MAX_EXAMPLES")  # unset: schemathesis.toml's
HERE = Path(__file__).parent
ST = Path(sys.executable).parent / "st"


async def test_schemathesis_finds_nothing(api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for program in REGISTERED_PROGRAMS:  # hooks.py maps every well-formed program name to one of these
        register_program(api.database_url, program)
        await api.seed(1_000, pool=program)  # card creations and reservations mostly from the pool, as in production
    report_dir = Path(os.environ.get("TOKENPOOL_FUZZ_REPORT_DIR") or tmp_path / "report")
    started = time.monotonic()
    result = await asyncio.to_thread(_run, api.url, await api.key(), report_dir, tmp_path)
    elapsed = time.monotonic() - started
    with capsys.disabled():  # the figures, always (the service's own log lines stay captured)
        print(f"\n{_figures(report_dir, elapsed, result.returncode)}")
    assert result.returncode == 0, f"Schemathesis found failures:\n{_tail(result.stdout + result.stderr)}"


def _run(url: str, key: str, report_dir: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    report_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(ST), "--config-file", str(HERE / "schemathesis.toml"), "run", f"{url}/openapi.json",
        "--phases", "examples,coverage,fuzzing,stateful",
        *(["--max-examples", MAX_EXAMPLES] if MAX_EXAMPLES else []),
        "--seed", str(SEED),
        "--workers", "1",
        "--request-timeout", "20",
        "--report", "json,junit",
        "--report-dir", str(report_dir),
    ]
    env = {**os.environ, "TOKENPOOL_FUZZ_API_KEY": key, "SCHEMATHESIS_HOOKS": str(HERE / "hooks.py"),
           "NO_COLOR": "1", "COLUMNS": "160"}
    # In its own folder: Schemathesis keeps a cache folder in its working directory.
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=workdir, check=False)
    (report_dir / "output.txt").write_text(result.stdout + result.stderr)
    return result


def _figures(report_dir: Path, elapsed: float, exit_code: int) -> str:
    """One paragraph with the run's figures, from Schemathesis' JSON report."""
    reports = sorted(report_dir.glob("json-*.json"))
    if not reports:
        return f"schemathesis: no JSON report (exit {exit_code}, {elapsed:.0f} s)"
    report = json.loads(reports[-1].read_text())
    operations, cases, phases = report["operations"], report["test_cases"], report["phases"]
    phase_status = ", ".join(f"{name} {phase['status']}" for name, phase in phases.items())
    failures = ", ".join(f"{f['code']} {f['title']} x{f['count']}" for f in report["failures"]) or "none"
    return (
        f"schemathesis {report['schemathesis_version']} (seed {report['seed']}): "
        f"{operations['tested']}/{operations['total']} operations, "
        f"phases {phase_status}; "
        f"{cases['generated']} cases generated, {cases['with_failures']} with failures "
        f"({cases['unique_failures']} unique: {failures}), {cases['errored']} errored; "
        f"{report['running_time']:.0f} s ({elapsed:.0f} s with start-up), exit {exit_code}; reports in {report_dir}"
    )


def _tail(output: str, limit: int = 12_000) -> str:
    # The failures and the summary come last; a reproduced request body can be huge (cut by Schemathesis).
    return output if len(output) <= limit else "...\n" + output[-limit:]
