"""Field encryption, second of three migrations: encrypt the tokens that rows written before it hold in clear.

Runs in the application because the keys never reach SQL. Each clear token gets its ciphertext (and, where
it is a lookup key, its digest) in the same transaction as this migration's ledger row; 0008 then drops
the clear columns. A database with no clear token (every new one) needs no key here.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tokenpool.db.migrate import MigrationContext
from tokenpool.db.vault_store import learned_token_aad, pending_token_aad, pool_token_aad

_BATCH = 5_000

_CLEAR_ROWS = """
SELECT (SELECT count(*) FROM token_pool WHERE internal_token IS NOT NULL)
     + (SELECT count(*) FROM cards WHERE internal_token IS NOT NULL)
     + (SELECT count(*) FROM learned_pairs WHERE internal_token IS NOT NULL)
     + (SELECT count(*) FROM refill_pending_tokens WHERE internal_token IS NOT NULL)
"""


def upgrade(conn: psycopg.Connection[Any], context: MigrationContext) -> None:
    seal_clear_rows(conn, context)


def seal_clear_rows(conn: psycopg.Connection[Any], context: MigrationContext) -> None:
    """Encrypts every token still stored in clear; 0008 runs it again, under locks, for rows that writers of
    the previous version added after this migration committed."""
    row = conn.execute(_CLEAR_ROWS).fetchone()
    if not row or not row[0]:
        return
    if context.keyring is None:
        raise RuntimeError(
            f"{row[0]} stored tokens are in clear and must be encrypted: run `tokenpool db upgrade`, "
            "which brings the vault's key provider (TOKENPOOL_VAULT_*)"
        )
    keyring = context.keyring(conn)
    while rows := conn.execute(
        "SELECT id, pool, internal_token, external_ref FROM token_pool WHERE internal_token IS NOT NULL LIMIT %s",
        (_BATCH,),
    ).fetchall():
        conn.cursor().executemany(
            "UPDATE token_pool SET token_digest = %s, token_ct = %s, key_version = %s, internal_token = NULL"
            " WHERE id = %s",
            [(keyring.digest(token), keyring.encrypt(token, pool_token_aad(pool, ref)), keyring.primary_version,
              row_id) for row_id, pool, token, ref in rows],
        )
    while rows := conn.execute(
        "SELECT card_id, internal_token FROM cards WHERE internal_token IS NOT NULL LIMIT %s", (_BATCH,)
    ).fetchall():
        conn.cursor().executemany(
            "UPDATE cards SET token_digest = %s, internal_token = NULL WHERE card_id = %s",
            [(keyring.digest(token), card_id) for card_id, token in rows],
        )
    while rows := conn.execute(
        "SELECT external_ref, internal_token FROM learned_pairs WHERE internal_token IS NOT NULL LIMIT %s", (_BATCH,)
    ).fetchall():
        conn.cursor().executemany(
            "UPDATE learned_pairs SET token_ct = %s, key_version = %s, internal_token = NULL WHERE external_ref = %s",
            [(keyring.encrypt(token, learned_token_aad(ref)), keyring.primary_version, ref) for ref, token in rows],
        )
    while rows := conn.execute(
        "SELECT batch_id, position, internal_token FROM refill_pending_tokens WHERE internal_token IS NOT NULL"
        " LIMIT %s", (_BATCH,)
    ).fetchall():
        conn.cursor().executemany(
            "UPDATE refill_pending_tokens SET token_ct = %s, key_version = %s, internal_token = NULL"
            " WHERE batch_id = %s AND position = %s",
            [(keyring.encrypt(token, pending_token_aad(batch_id, position)), keyring.primary_version, batch_id,
              position) for batch_id, position, token in rows],
        )
