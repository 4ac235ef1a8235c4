"""`tokenpool rollout` against a running service: it advances while the gates hold and rolls back when one breaks.

The service runs in this process (api_harness), the rollout as a real `tokenpool rollout` process that scrapes
the service's /metrics with a metrics:read key and writes the program's share to the database; cards are
created throughout at a steady rate, as a canary sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from pathlib import Path

from tests.fixtures.database import register_program
from tests.integration import api_harness
from tests.integration.api_harness import Api
from tests.integration.refill_support import env_for
from tokenpool.service.runtime_config import read_all, traffic_key

api = api_harness.api  # the fixture: a running service with its own database

FAST = ["--hold", "1.5s", "--baseline", "0.5s", "--check-every", "0.25s"]


async def _steady_cards(api: Api, program: str, statuses: list[int]) -> None:
    headers = await api.headers("cards:write")
    async with api.client() as client:
        while True:
            response = await client.post("/v1/cards", json={"program": program, "customer_ref": "c"},
                                         headers=headers)
            statuses.append(response.status_code)
            await asyncio.sleep(0.02)


async def _rollout(api: Api, program: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    key_file = tmp_path / "metrics.key"
    key_file.write_text(await api.key("metrics:read"))
    key_file.chmod(0o600)
    env = env_for(api.server.settings)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenpool", "rollout", "--program", program, "--metrics-url", f"{api.url}/metrics",
        "--metrics-key-file", str(key_file), *FAST, *args,
        env={**env, "COLUMNS": "200"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def _during_cards(api: Api, program: str, tmp_path: Path, *args: str) -> tuple[int, str, str, list[int]]:
    statuses: list[int] = []
    cards = asyncio.create_task(_steady_cards(api, program, statuses))
    try:
        code, out, err = await _rollout(api, program, tmp_path, *args)
    finally:
        cards.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cards
    return code, out, err, statuses


async def test_a_rollout_advances_through_its_steps_while_the_gates_hold(api: Api, tmp_path):
    program = f"canary-{uuid.uuid4().hex[:6]}"
    register_program(api.database_url, program, refill_target=50)
    await api.seed(2_000, pool=program)  # far above its target: OK throughout
    code, out, err, statuses = await _during_cards(api, program, tmp_path, "--steps", "10,50,100")
    assert code == 0, (out, err)
    assert [line.split(": ", 1)[1] for line in out.splitlines() if "held" in line] == [
        "step 10% held", "step 50% held", "step 100% held"]
    assert "rollout completed at 100%" in out
    assert (await read_all(api.db))[traffic_key(program)] == 100
    assert statuses
    assert set(statuses) == {201}
    # Each step's share reached the service: cards went to TOME at 10 %, only to the pool at the end.
    sources = api.sql("SELECT token_source, count(*) FROM cards WHERE program = %s GROUP BY 1", program)
    assert dict(sources).keys() == {"pool", "tome"}


async def test_a_low_pool_rolls_the_program_back_to_zero_and_exits_1(api: Api, tmp_path):
    program = f"canary-{uuid.uuid4().hex[:6]}"
    register_program(api.database_url, program, refill_target=10_000)
    await api.seed(1_000, pool=program)  # 10 % of its target: LOW
    code, out, err, _ = await _during_cards(api, program, tmp_path, "--steps", "10,50,100")
    assert code == 1, (out, err)
    assert "rolled back to 0% at step 10%: pool is LOW" in out
    assert (await read_all(api.db))[traffic_key(program)] == 0


async def test_nothing_changes_for_an_unregistered_program_or_unreadable_metrics(api: Api, tmp_path):
    code, _out, err = await _rollout(api, "no-such-program", tmp_path)
    assert code == 2
    assert "not registered" in err
    program = f"canary-{uuid.uuid4().hex[:6]}"
    register_program(api.database_url, program)
    env = env_for(api.server.settings)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenpool", "rollout", "--program", program, "--metrics-url", f"{api.url}/metrics",
        *FAST, env={**env, "COLUMNS": "200"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "HTTP 401" in stderr.decode()
    assert traffic_key(program) not in await read_all(api.db)
