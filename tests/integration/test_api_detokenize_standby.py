"""Detokenize with a read URL on a real streaming standby: reads there, lag and outages answered by the primary.

The pair is started from the PostgreSQL server binaries (bench/standby.py): a primary and a
``pg_basebackup -R`` standby on free ports. Skipped, with the reason, where the binaries are missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from bench.standby import StandbyPair, missing_reason, standby_pair
from prometheus_client import REGISTRY

from tests.fixtures.database import SessionRoles
from tests.fixtures.tome import TomeEmulator, free_port
from tests.integration.api_harness import Api, running_api
from tokenpool.db import migrate, roles
from tokenpool.db.vault_store import ensure_keys
from tokenpool.settings import Settings
from tokenpool.vault import key_provider_from_settings

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))


@dataclass
class Replicated:
    pair: StandbyPair
    app_url: str  # the app role on the primary
    owner_url: str

    @property
    def read_url(self) -> str:
        return self.pair.on_standby(self.app_url)


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    """A migrated tokenpool database (owner and app role, as production has them) on a primary with a standby."""
    with standby_pair() as pair:
        session = SessionRoles(pair.primary_url)
        session.create()
        session.create_database("tokenpool")
        owner_url = session.url(session.owner, "tokenpool")
        migrate.upgrade(owner_url)
        ensure_keys(owner_url, key_provider_from_settings(Settings()))
        assert roles.apply_grants(owner_url, session.app)
        pair.wait_replayed()
        yield Replicated(pair, session.url(session.app, "tokenpool"), owner_url)


@pytest.fixture
async def api(replicated: Replicated, tome: TomeEmulator) -> AsyncIterator[Api]:
    async with running_api(replicated.app_url, tome, admin_database_url=replicated.owner_url,
                           database_read_url=replicated.read_url) as running:
        yield running


def _reads(outcome: str) -> float:
    return REGISTRY.get_sample_value("tokenpool_detokenize_reads_total", {"outcome": outcome}) or 0.0


def _misses() -> float:
    return REGISTRY.get_sample_value("tokenpool_detokenize_read_misses_total") or 0.0


def _audit_rows(api: Api) -> int:
    return int(api.sql("SELECT count(*) FROM detokenize_audit WHERE event = 'detokenize'")[0][0])


async def _detokenize(api: Api, refs: list[str]) -> list[dict[str, object]]:
    async with api.client() as client:
        response = await client.post("/v1/detokenize", json={"external_refs": refs},
                                     headers=await api.headers("tokens:detokenize"))
    assert response.status_code == 200, response.text
    results: list[dict[str, object]] = response.json()["results"]
    return results


async def test_refs_the_standby_holds_are_answered_there_and_audited_on_the_primary(
    api: Api, replicated: Replicated
):
    pairs = await api.seed(3)
    await api.headers("tokens:detokenize")  # the key exists on the primary before the request
    replicated.pair.wait_replayed()
    standby, misses, audits, tome = _reads("standby"), _misses(), _audit_rows(api), api.tome_requests()

    results = await _detokenize(api, [p.external_ref for p in pairs])

    assert results == [{"external_ref": p.external_ref, "internal_token": p.internal_token, "source": "db"}
                       for p in pairs]
    assert _reads("standby") == standby + 1
    assert _misses() == misses, "the standby knew every ref: the primary was not asked"
    assert api.tome_requests() == tome
    assert _audit_rows(api) == audits + 1, "the audit row is written to the primary"


async def test_a_ref_the_lagging_standby_lacks_is_answered_by_the_primary_not_tome(api: Api, replicated: Replicated):
    old = await api.seed(1)
    replicated.pair.wait_replayed()
    replicated.pair.pause_replay()
    try:
        new = await api.seed(1)  # on the primary only: replay is paused
        with pytest.raises(TimeoutError):
            replicated.pair.wait_replayed(timeout_s=0.3)
        standby, misses, tome = _reads("standby"), _misses(), api.tome_requests()

        results = await _detokenize(api, [old[0].external_ref, new[0].external_ref])

        assert results == [{"external_ref": p.external_ref, "internal_token": p.internal_token, "source": "db"}
                           for p in (old[0], new[0])]
        assert _reads("standby") == standby + 1
        assert _misses() == misses + 1, "one ref looked up on the primary"
        assert api.tome_requests() == tome, "TOME was not asked for a ref the primary holds"
    finally:
        replicated.pair.resume_replay()


async def test_a_dead_read_url_is_answered_by_the_primary_then_rested(replicated: Replicated, tome: TomeEmulator):
    dead = replicated.read_url.replace(f"port={replicated.pair.standby_port}", f"port={free_port()}")
    assert dead != replicated.read_url
    async with running_api(replicated.app_url, tome, admin_database_url=replicated.owner_url,
                           database_read_url=dead, database_read_retry_s=60.0) as api:
        pairs = await api.seed(2)
        failed, skipped = _reads("failed"), _reads("skipped")
        audits, tome_before = _audit_rows(api), api.tome_requests()

        first = await _detokenize(api, [pairs[0].external_ref])
        second = await _detokenize(api, [pairs[1].external_ref])

        assert [r["internal_token"] for r in first + second] == [p.internal_token for p in pairs]
        assert {r["source"] for r in first + second} == {"db"}
        assert _reads("failed") == failed + 1, "the failure is counted"
        assert _reads("skipped") == skipped + 1, "then the primary alone answers for the retry period"
        assert api.tome_requests() == tome_before
        assert _audit_rows(api) == audits + 2


async def test_a_stopped_standby_does_not_break_detokenize(replicated: Replicated, tome: TomeEmulator):
    async with running_api(replicated.app_url, tome, admin_database_url=replicated.owner_url,
                           database_read_url=replicated.read_url, database_read_retry_s=0.0) as api:
        pairs = await api.seed(1)
        replicated.pair.wait_replayed()
        assert (await _detokenize(api, [pairs[0].external_ref]))[0]["source"] == "db"  # pooled standby connections
        replicated.pair.stop_standby()
        try:
            failed = _reads("failed")
            for _ in range(3):  # each try on the standby fails within its bound; the primary answers
                results = await _detokenize(api, [pairs[0].external_ref])
                assert results[0]["internal_token"] == pairs[0].internal_token
            assert _reads("failed") >= failed + 1
        finally:
            replicated.pair.start_standby()


def test_the_pair_is_a_real_standby(replicated: Replicated):
    with psycopg.connect(replicated.pair.standby_url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
