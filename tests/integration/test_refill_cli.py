"""``tokenpool refill`` and ``tokenpool health`` as processes: output and documented exit codes."""

from __future__ import annotations

import json
import subprocess

import psycopg

from tests.fixtures.database import register_program
from tests.integration.refill_support import cli, env_for, pool_tokens, refill_settings

POOL = "default"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=60, check=False)


def test_refill_prints_a_json_summary_and_exits_0_then_health_reads_ok(settings, tome):
    env = env_for(refill_settings(settings, tome, refill_target=20))
    refill = _run(["refill", "--json"], env)
    health = _run(["health", "--json", "--no-alert"], env)
    assert refill.returncode == 0, refill.stderr
    summary = json.loads(refill.stdout)
    assert (summary["outcome"], summary["added"], summary["target"]) == ("succeeded", 20, 20)
    assert health.returncode == 0
    assert json.loads(health.stdout)["status"] == "OK"


def test_two_refill_processes_started_at_once_exit_0_and_3_and_do_not_overfill(settings, database_url, tome):
    tome.set_faults(latency_ms=100)
    env = env_for(refill_settings(settings, tome, refill_target=60))
    processes = [subprocess.Popen(cli("refill", "--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=60) for process in processes]
    codes = sorted(process.returncode for process in processes)
    held = next(json.loads(out) for (out, _), p in zip(outputs, processes, strict=True) if p.returncode == 3)
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM token_pool WHERE pool = %s", (POOL,)).fetchone()
    assert codes == [0, 3]
    assert held["outcome"] == "skipped_lease_held"
    assert held["lease_holder"] in held["error"]
    assert count == (60,)


def test_refill_exits_1_with_the_reason_when_tome_is_down(settings, tome):
    tome.set_faults(outage=True)
    result = _run(["refill"], env_for(refill_settings(settings, tome, refill_target=20)))
    assert result.returncode == 1
    assert "failed" in result.stderr
    assert "TomeUnavailable" in result.stderr


def test_health_exits_2_for_an_empty_pool_and_1_for_a_low_one(settings, tome):
    config = refill_settings(settings, tome, refill_target=100)
    empty = _run(["health", "--no-alert"], env_for(config))
    _run(["refill", "--pool", POOL, "--count", "10"], env_for(config))
    low = _run(["health", "--json", "--no-alert"], env_for(config))
    assert empty.returncode == 2
    assert "EMPTY" in empty.stdout
    assert low.returncode == 1
    assert json.loads(low.stdout)["status"] == "LOW"


def test_refill_without_pool_fills_every_program_to_its_own_target_on_its_own_namespaces(
    settings, database_url, tome
):
    config = refill_settings(settings, tome, refill_target=20)
    register_program(database_url, "gold", refill_target=7, ns1=f"{config.tome_ns1}-gold",
                     ns2=f"{config.tome_ns2}-gold")
    register_program(database_url, "silver", refill_target=12)  # the settings' namespaces
    result = _run(["refill", "--json"], env_for(config))
    assert result.returncode == 0, result.stderr
    summaries = {summary["pool"]: summary for summary in map(json.loads, result.stdout.splitlines())}
    assert {name: (s["outcome"], s["added"], s["target"]) for name, s in summaries.items()} == {
        "default": ("succeeded", 20, 20), "gold": ("succeeded", 7, 7), "silver": ("succeeded", 12, 12)}
    # Each pool holds exactly what its namespaces issued: gold's NS1 issued its 7, the settings' NS1 the rest.
    assert sorted(pool_tokens(database_url, "gold")) == sorted(tome.issued(f"{config.tome_ns1}-gold"))
    assert sorted(pool_tokens(database_url, "default") + pool_tokens(database_url, "silver")) == sorted(
        tome.issued(config.tome_ns1))
    assert tome.items(f"{config.tome_ns2}-gold", "tokenize") == 7
    assert tome.items(config.tome_ns2, "tokenize") == 32


def test_a_refill_of_an_unregistered_program_is_refused_in_one_line_and_asks_tome_nothing(
    settings, database_url, tome
):
    config = refill_settings(settings, tome)
    before = tome.stats()["requests"]
    result = _run(["refill", "--pool", "no-such-program"], env_for(config))
    count_alone = _run(["refill", "--count", "5"], env_for(config))
    health = _run(["health", "--pool", "no-such-program", "--no-alert"], env_for(config))
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if not line.startswith("{")] == [
        "refused: Program 'no-such-program' is not registered (tokenpool program add)."]
    assert count_alone.returncode == 2
    assert "--pool" in count_alone.stderr
    assert health.returncode == 3
    assert "not registered" in health.stderr
    assert tome.stats()["requests"] == before
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM refill_runs").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM token_pool").fetchone() == (0,)
def test_health_says_an_alert_was_not_delivered_and_the_next_run_delivers_it(settings, tome, failing_webhook):
    # `tokenpool health` from cron: a run whose webhook is down must not count the alert as sent.
    config = refill_settings(settings, tome, refill_target=100, alert_webhook_url=failing_webhook.url)
    failing_webhook.fail_next = 1
    first = _run(["health"], env_for(config))
    second = _run(["health"], env_for(config))
    third = _run(["health"], env_for(config))
    assert [run.returncode for run in (first, second, third)] == [2, 2, 2]  # EMPTY, each time
    assert "not delivered to webhook" in first.stderr
    assert "not delivered" not in second.stderr
    assert [(alert["status"], alert["previous_status"]) for alert in failing_webhook.received] == [("EMPTY", None)]
    assert failing_webhook.refused == 1
