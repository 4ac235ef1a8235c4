"""The token vault at rest: no internal token readable in the data folder, ciphertexts bound to their rows,
key rotation and re-encryption online, and the upgrade of a database that held tokens in clear."""

from __future__ import annotations

import asyncio
import mmap
import os
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.factories import make_pairs
from tests.fixtures.database import keyring_of, pool_pairs, with_database
from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api, running_api
from tokenpool import bootstrap
from tokenpool.db import migrate
from tokenpool.db.reencryption import reencrypt
from tokenpool.db.vault_store import learned_token_aad, load_keyring_sync, pending_token_aad, versions_below
from tokenpool.settings import Settings
from tokenpool.vault import CiphertextRejected, UnknownKeyVersion, key_provider_from_settings

api = api_harness.api  # the fixture: a running service with its own database

LAST_CLEAR_MIGRATION = 5  # 0006-0008 seal the tokens


def _files_holding(folder: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    """Every needle found in any file under ``folder`` (heap, indexes, WAL, everything)."""
    found: dict[bytes, list[str]] = {}
    for path in folder.rglob("*"):
        try:
            if not path.is_file() or path.stat().st_size == 0:
                continue
            with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for needle in needles:
                    if data.find(needle) != -1:
                        found.setdefault(needle, []).append(str(path.relative_to(folder)))
        except (OSError, ValueError):
            continue  # a file removed meanwhile (WAL recycling), a socket
    return found


async def test_no_internal_token_of_a_card_is_readable_anywhere_in_the_data_folder(api: Api, pg_server_url):
    await api.seed(30)
    async with api.client() as client:
        cards = [await client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"},
                                   headers=await api.headers("cards:write")) for i in range(20)]
        refs = [card.json()["external_ref"] for card in cards]
        detokenized = await client.post("/v1/detokenize", json={"external_refs": refs},
                                        headers=await api.headers("tokens:detokenize"))
    tokens = [card.json()["internal_token"] for card in cards]
    assert [r["internal_token"] for r in detokenized.json()["results"]] == tokens
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # every page this test dirtied is in the table files now, besides the WAL
        data_directory = Path(str(conn.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]
    assert (data_directory / "pg_wal").is_dir()
    found = _files_holding(data_directory, [token.encode() for token in tokens])
    assert found == {}, f"internal tokens in clear in {found}"
    # The search does find what is there in clear: the external refs the cards hold.
    assert _files_holding(data_directory, [refs[0].encode()])


async def test_a_ciphertext_copied_to_another_row_fails_to_decrypt_and_is_never_answered(api: Api, admin_database_url):
    pairs = await api.seed(2)
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute("UPDATE token_pool SET token_ct = (SELECT token_ct FROM token_pool WHERE external_ref = %s)"
                     " WHERE external_ref = %s", (pairs[0].external_ref, pairs[1].external_ref))
    with pytest.raises(CiphertextRejected):
        await api.store.lookup([pairs[1].external_ref])
    async with api.client() as client:
        response = await client.post("/v1/detokenize", json={"external_refs": [pairs[1].external_ref]},
                                     headers=await api.headers("tokens:detokenize"))
    assert (response.status_code, response.json()["code"]) == (500, "TOKEN_UNREADABLE")
    assert pairs[0].internal_token not in response.text


async def test_a_ciphertext_naming_a_key_version_the_vault_lacks_is_a_clear_error(api: Api, admin_database_url):
    pairs = await api.seed(1)
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        # Byte 0 is the format, bytes 1-4 the key version: claim version 77.
        conn.execute("UPDATE token_pool SET token_ct = overlay(token_ct placing '\\x0000004d'::bytea from 2 for 4)")
    with pytest.raises(UnknownKeyVersion, match="77"):
        await api.store.lookup([pairs[0].external_ref])


async def test_keys_rotate_and_reencrypt_while_a_thousand_cards_are_created(database_url, admin_database_url, tome):
    cards_wanted, clients = 1_000, 40
    async with running_api(database_url, tome, vault_refresh_s=0.5, db_pool_max_size=30) as api:
        await api.seed(cards_wanted + 200)
        settings = Settings(database_url=database_url, database_admin_url=admin_database_url)  # type: ignore[arg-type]
        headers = await api.headers("cards:write")
        created: list[dict[str, str]] = []

        async def customer(worker: int) -> None:
            async with api.client(max_connections=2) as client:
                for i in range(worker, cards_wanted, clients):
                    response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"},
                                                 headers=headers)
                    assert response.status_code == 201, response.text
                    created.append(response.json())

        async def operator() -> dict[str, object]:
            await asyncio.sleep(0.3)  # cards are being created under version 1
            async with bootstrap.open_admin_database(settings) as backend:
                rotated = await backend.vault_store.rotate()
                first = await reencrypt(backend.db, backend.vault, await backend.vault_store.version_counts(),
                                        batch=100)
                return {"rotated": rotated, "first": first}

        outcome, *_ = await asyncio.gather(operator(), *(customer(w) for w in range(clients)))
        assert len(created) == cards_wanted
        # Until every process reloaded its keys (vault_refresh_s), some writes still used version 1: rerun.
        await asyncio.sleep(1.0)
        async with bootstrap.open_admin_database(settings) as backend:
            for _ in range(5):
                await reencrypt(backend.db, backend.vault, await backend.vault_store.version_counts(), batch=100)
                counts = await backend.vault_store.version_counts()
                if not versions_below(counts, 2):
                    break
        assert outcome["rotated"] == 2
        assert outcome["first"].reencrypted.get("token_pool", 0) > 0  # type: ignore[attr-defined]
        assert {c.key_version for c in counts} == {2}, counts
        assert versions_below(counts, 2) == 0

        refs = [card["external_ref"] for card in created]
        async with api.client() as client:
            detokenized = []
            for start in range(0, len(refs), 500):
                response = await client.post("/v1/detokenize", json={"external_refs": refs[start:start + 500]},
                                             headers=await api.headers("tokens:detokenize"))
                assert response.status_code == 200, response.text
                detokenized += [r["internal_token"] for r in response.json()["results"]]
    assert detokenized == [card["internal_token"] for card in created]
    assert len(set(detokenized)) == cards_wanted


async def test_rotating_the_key_encryption_key_rewraps_the_stored_keys_only(database_url, admin_database_url, store):
    pairs = make_pairs(5)
    await store.add_pairs(POOL, pairs, uuid.uuid4())
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT purpose, version, wrapped, kek_id FROM vault_keys ORDER BY 1, 2").fetchall()
        sealed_before = conn.execute("SELECT token_ct FROM token_pool ORDER BY id").fetchall()
    settings = Settings(database_url=database_url, database_admin_url=admin_database_url)  # type: ignore[arg-type]
    async with bootstrap.open_admin_database(settings) as backend:
        new_kek = backend.vault_store.rotate_kek()
        assert await backend.vault_store.rewrap() == len(before)
    with psycopg.connect(database_url) as conn:
        after = conn.execute("SELECT purpose, version, wrapped, kek_id FROM vault_keys ORDER BY 1, 2").fetchall()
        sealed_after = conn.execute("SELECT token_ct FROM token_pool ORDER BY id").fetchall()
    assert {row[3] for row in after} == {new_kek} != {row[3] for row in before}
    assert [row[2] for row in after] != [row[2] for row in before]
    assert sealed_after == sealed_before  # no token was decrypted or rewritten
    assert sorted(pool_pairs(database_url).values()) == sorted(p.internal_token for p in pairs)


@pytest.fixture
def clear_era_database(pg_server_url: str) -> str:
    name = f"tokenpool_clear_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server_url, name)
    migrate.upgrade(url, target=LAST_CLEAR_MIGRATION)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrading_a_database_that_held_tokens_in_clear_encrypts_every_one(clear_era_database):
    url = clear_era_database
    batch, card = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO token_pool (pool, internal_token, external_ref, batch_id) VALUES"
                     " ('default', '4000000000000001', 'ext-a', %s),"
                     " ('default', '4000000000000002', 'ext-b', %s)", (batch, batch))
        conn.execute("UPDATE token_pool SET status = 'RESERVED', reservation_id = gen_random_uuid(),"
                     " lease_expires_at = now() + interval '1 minute' WHERE external_ref = 'ext-b'")
        conn.execute("UPDATE token_pool SET status = 'USED', card_ref = %s WHERE external_ref = 'ext-b'",
                     (str(card),))
        conn.execute("INSERT INTO cards (card_id, program, customer_ref, internal_token, external_ref, token_source)"
                     " VALUES (%s, 'default', 'c', '4000000000000002', 'ext-b', 'pool')", (card,))
        conn.execute("INSERT INTO learned_pairs (external_ref, internal_token) VALUES ('ext-l', '4000000000000003')")
        conn.execute("INSERT INTO refill_batches (batch_id, pool, count, run_id, state) VALUES (%s, 'default', 1, %s,"
                     " 'issued')", (batch, batch))
        conn.execute("INSERT INTO refill_pending_tokens (batch_id, position, internal_token)"
                     " VALUES (%s, 1, '4000000000000004')", (batch,))
    with pytest.raises(RuntimeError, match="in clear"):
        migrate.upgrade(url)  # no key provider: refuses rather than leave clear tokens
    provider = key_provider_from_settings(Settings())
    applied = migrate.upgrade(url, migrate.MigrationContext(keyring=lambda conn: load_keyring_sync(conn, provider)))
    assert {7, 8} <= {m.version for m in applied}  # 0006 (the new columns) went in with the refused attempt
    assert pool_pairs(url) == {"ext-a": "4000000000000001", "ext-b": "4000000000000002"}
    keyring = keyring_of(url)
    with psycopg.connect(url) as conn:
        columns = {row[0] for row in conn.execute(
            "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE column_name ="
            " 'internal_token'").fetchall()}
        learned = conn.execute("SELECT token_ct FROM learned_pairs").fetchone()
        pending = conn.execute("SELECT token_ct FROM refill_pending_tokens").fetchone()
        joined = conn.execute("SELECT count(*) FROM cards c JOIN token_pool p USING (token_digest)"
                              " WHERE p.external_ref = c.external_ref").fetchone()
    assert columns == set(), "no table keeps a clear token column"
    assert keyring.decrypt(bytes(learned[0]), learned_token_aad("ext-l")) == "4000000000000003"  # type: ignore[index]
    assert keyring.decrypt(bytes(pending[0]), pending_token_aad(batch, 1)) == "4000000000000004"  # type: ignore[index]
    assert joined == (1,)


def test_the_vault_key_file_is_private(tmp_path):
    key_file = tmp_path / "vault" / "kek.json"
    provider = key_provider_from_settings(Settings(vault_local_key_file=key_file))
    provider.generate_key()
    assert os.stat(key_file).st_mode & 0o777 == 0o600


def test_a_token_an_old_writer_stores_in_clear_after_the_seal_is_sealed_by_the_contract(clear_era_database):
    url = clear_era_database
    provider = key_provider_from_settings(Settings())
    context = migrate.MigrationContext(keyring=lambda conn: load_keyring_sync(conn, provider))
    migrate.upgrade(url, context, target=7)  # columns added, rows sealed
    with psycopg.connect(url, autocommit=True) as conn:  # a process of the previous version, still running
        conn.execute("INSERT INTO token_pool (pool, internal_token, external_ref, batch_id) VALUES"
                     " ('default', '4000000000000009', 'ext-late', %s)", (uuid.uuid4(),))
    assert next(m.version for m in migrate.upgrade(url, context)) == 8
    assert pool_pairs(url) == {"ext-late": "4000000000000009"}


async def test_a_reload_keeps_counting_encryptions_per_data_key(store):
    vault = store._vault
    vault.seal("4000000000000001", b"aad")
    counted = vault.keyring.encryptions[vault.keyring.primary_version]
    await vault.reload()
    assert vault.keyring.encryptions[vault.keyring.primary_version] == counted >= 1  # the nonce budget goes on
