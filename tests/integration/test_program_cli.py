"""`tokenpool program add|list|set|remove` against a real database (as the owner; `list` as the app role)."""

from __future__ import annotations

import json
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import structlog
import typer
from typer.testing import CliRunner, Result

from tests.factories import make_pairs
from tokenpool.entrypoints.cli_programs import register
from tokenpool.settings import get_settings


@pytest.fixture
def cli(database_url, admin_database_url, monkeypatch):
    monkeypatch.setenv("TOKENPOOL_DATABASE_URL", database_url)
    monkeypatch.setenv("TOKENPOOL_DATABASE_ADMIN_URL", admin_database_url)
    monkeypatch.setenv("TOKENPOOL_REFILL_TARGET", "1000")
    get_settings.cache_clear()
    saved_logging = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        # In a thread of its own: the command runs its own event loop (asyncio.run), and async tests have one.
        with ThreadPoolExecutor(1) as thread:
            return thread.submit(runner.invoke, app, ["program", *args]).result()

    yield invoke
    structlog.configure(**saved_logging)
    get_settings.cache_clear()


def listed(cli, *flags: str) -> dict[str, dict[str, object]]:
    result = cli("list", "--json", *flags)
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)["programs"]}


def refusal(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_add_registers_a_program_with_its_target_and_namespaces_and_refuses_a_duplicate(cli):
    added = cli("add", "gold", "--target", "500", "--ns1", "G1", "--ns2", "G2")
    plain = cli("add", "silver")
    again = cli("add", "gold")
    invalid = cli("add", "no spaces")
    bad_namespace = cli("add", "bronze", "--ns1", "a/b")

    assert added.exit_code == 0, added.output
    assert "program 'gold' registered: target 500, ns1 G1, ns2 G2" in added.stdout
    assert plain.exit_code == 0
    assert (again.exit_code, refusal(again)) == (
        1, "refused: program 'gold' is registered already (change it with `tokenpool program set`)")
    assert invalid.exit_code == 2
    assert "invalid program name" in refusal(invalid)
    assert bad_namespace.exit_code == 2
    programs = listed(cli)
    assert set(programs) == {"default", "gold", "silver"}
    assert {k: programs["gold"][k] for k in ("target", "target_from_settings", "ns1", "ns2", "ns1_from_settings")} == {
        "target": 500, "target_from_settings": False, "ns1": "G1", "ns2": "G2", "ns1_from_settings": False}
    assert {k: programs["silver"][k] for k in ("target", "target_from_settings", "ns1", "ns2")} == {
        "target": 1000, "target_from_settings": True, "ns1": "NS1", "ns2": "NS2"}


async def test_list_shows_each_programs_pairs_and_health_against_its_own_target(cli, store):
    assert cli("add", "gold", "--target", "100").exit_code == 0
    await store.add_pairs("gold", make_pairs(30), uuid.uuid4())
    await store.add_pairs("default", make_pairs(3), uuid.uuid4())
    programs = listed(cli)
    assert (programs["gold"]["available"], programs["gold"]["health"]) == (30, "OK")  # 30 % of 100
    assert (programs["default"]["available"], programs["default"]["health"]) == (3, "CRITICAL")  # of 1,000
    table = cli("list")
    assert table.exit_code == 0
    assert "gold" in table.stdout


def test_set_changes_a_target_or_namespaces_and_can_return_them_to_the_settings(cli):
    assert cli("add", "gold", "--target", "500", "--ns1", "G1", "--ns2", "G2").exit_code == 0
    target = cli("set", "gold", "--target", "50")
    namespace = cli("set", "gold", "--ns2", "G2b")
    assert (target.exit_code, namespace.exit_code) == (0, 0)
    assert {k: listed(cli)["gold"][k] for k in ("target", "ns1", "ns2")} == {"target": 50, "ns1": "G1", "ns2": "G2b"}

    reset = cli("set", "gold", "--target-from-settings", "--namespaces-from-settings")
    assert reset.exit_code == 0, reset.output
    assert {k: listed(cli)["gold"][k] for k in ("target", "ns1", "ns2", "target_from_settings")} == {
        "target": 1000, "ns1": "NS1", "ns2": "NS2", "target_from_settings": True}

    unknown = cli("set", "nope", "--target", "1")
    nothing = cli("set", "gold")
    both = cli("set", "gold", "--target", "5", "--target-from-settings")
    assert (unknown.exit_code, refusal(unknown)) == (1, "refused: Program 'nope' is not registered (tokenpool "
                                                     "program add).")
    assert nothing.exit_code == 2
    assert both.exit_code == 2


async def test_remove_is_refused_while_the_pool_holds_live_pairs_unless_forced(cli, store, admin_database_url):
    assert cli("add", "gold").exit_code == 0
    await store.add_pairs("gold", make_pairs(3), uuid.uuid4())
    await store.reserve("gold", 60)

    refused = cli("remove", "gold")
    assert refused.exit_code == 1
    assert refusal(refused) == ("refused: program 'gold' still holds 2 available, 1 reserved pairs; use --force to "
                                "remove it anyway")
    assert "gold" in listed(cli)

    forced = cli("remove", "gold", "--force")
    assert forced.exit_code == 0, forced.output
    assert "left in its pool: 2 available, 1 reserved" in forced.stdout
    assert "gold" not in listed(cli)
    assert listed(cli, "--all")["gold"]["removed_at"] is not None
    with psycopg.connect(admin_database_url) as conn:  # a soft removal: the pairs and the row stay
        assert conn.execute("SELECT count(*) FROM token_pool WHERE pool = 'gold'").fetchone() == (3,)

    assert cli("remove", "gold").exit_code == 1  # not registered any more
    back = cli("add", "gold", "--target", "7")
    assert back.exit_code == 0
    assert "registered again" in back.stdout
    assert (listed(cli)["gold"]["available"], listed(cli)["gold"]["target"]) == (2, 7)


async def test_a_program_whose_pairs_are_all_used_is_removed_without_force_and_its_cards_keep_its_name(
    cli, store, admin_database_url
):
    assert cli("add", "spent").exit_code == 0
    await store.add_pairs("spent", make_pairs(2), uuid.uuid4())
    for reservation in await store.reserve_many("spent", 2, 60):
        await store.commit(reservation.reservation_id, f"card-{reservation.reservation_id}")
    removed = cli("remove", "spent")
    assert removed.exit_code == 0, removed.output
    assert "program 'spent' removed" in removed.stdout
    with psycopg.connect(admin_database_url) as conn:
        assert conn.execute("SELECT status, count(*) FROM token_pool WHERE pool = 'spent' GROUP BY status"
                            ).fetchall() == [("USED", 2)]


async def test_remove_counts_unfinished_refill_batches_as_live(cli, admin_database_url):
    assert cli("add", "journaled").exit_code == 0
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO refill_batches (batch_id, pool, count, run_id) VALUES (%s, 'journaled', 5, %s)",
                     (uuid.uuid4(), uuid.uuid4()))
    refused = cli("remove", "journaled")
    assert refused.exit_code == 1
    assert "1 unfinished refill batches" in refusal(refused)
