"""Field encryption, last of three migrations: the clear token columns go (0007 encrypted their rows).

First, under locks that keep writers out until this transaction ends, it seals any token a process of the
previous version stored in clear after 0007 committed (an upgrade while the old version still runs): a
NOT NULL below would otherwise fail on such a row, and fail again on every rerun.

Dropping a column does not erase old row versions at once: they stay in the table files until VACUUM
reuses the space, and in WAL and backups made before this migration. docs/security.md says how to purge
them after upgrading a database that held clear tokens.
"""

from __future__ import annotations

import importlib
from typing import Any

import psycopg

from tokenpool.db.migrate import MigrationContext

_LOCK = "LOCK TABLE token_pool, cards, learned_pairs, refill_pending_tokens IN SHARE ROW EXCLUSIVE MODE"

CONTRACT = """
ALTER TABLE token_pool
    DROP COLUMN internal_token,
    ALTER COLUMN token_digest SET NOT NULL,
    ALTER COLUMN token_ct SET NOT NULL,
    ALTER COLUMN key_version SET NOT NULL,
    -- The last line of defence against handing a pair to two cards: one row per internal token.
    ADD CONSTRAINT token_pool_token_digest_key UNIQUE (token_digest),
    ADD CONSTRAINT token_pool_digest_is_hmac_sha256 CHECK (octet_length(token_digest) = 32);

-- No index on token_pool.key_version: it would cost every bulk load (measured: 6-17% of the refill's
-- database load) for the sake of `keys reencrypt` and `keys status`, operator commands that read the
-- table once anyway (reencrypt walks it by primary key).

ALTER TABLE cards
    DROP COLUMN internal_token,
    ALTER COLUMN token_digest SET NOT NULL,
    ADD CONSTRAINT cards_token_digest_key UNIQUE (token_digest),
    ADD CONSTRAINT cards_pair_fk FOREIGN KEY (token_digest) REFERENCES token_pool (token_digest);

ALTER TABLE learned_pairs
    DROP COLUMN internal_token,
    ALTER COLUMN token_ct SET NOT NULL,
    ALTER COLUMN key_version SET NOT NULL;
CREATE INDEX learned_pairs_key_version_idx ON learned_pairs (key_version, external_ref);

ALTER TABLE refill_pending_tokens
    DROP COLUMN internal_token,
    ALTER COLUMN token_ct SET NOT NULL,
    ALTER COLUMN key_version SET NOT NULL;

-- The status machine, now on the digest (a pair's identity) rather than the clear token. token_ct and
-- key_version may change (re-encryption under a new key); the token they hold may not.
-- AVAILABLE -> USED is a claim and a commit in one statement: card creation from the pool
-- (queries.sql, card_create_from_pool), atomic, so it needs no lease.
CREATE OR REPLACE FUNCTION token_pool_guard_transitions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT o.id, o.status AS old_status, n.status AS new_status INTO bad
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.status <> n.status AND (o.status, n.status) NOT IN (
                ('AVAILABLE', 'RESERVED'), ('AVAILABLE', 'USED'), ('RESERVED', 'USED'),
                ('RESERVED', 'AVAILABLE'), ('RESERVED', 'EXPIRED')))
       OR o.pool <> n.pool OR o.token_digest <> n.token_digest OR o.external_ref <> n.external_ref
       OR (o.status = 'USED' AND n.card_ref IS DISTINCT FROM o.card_ref)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'token_pool: illegal change of pair % (% -> %)', bad.id, bad.old_status, bad.new_status
            USING ERRCODE = 'check_violation';
    END IF;
    -- Locks are taken in status order so that two statements never wait on each other in a cycle.
    INSERT INTO token_pool_counts AS c (pool, status, shard, n)
    SELECT d.pool, d.status, pg_backend_pid() % 64, sum(d.delta)
    FROM (SELECT pool, status, -1 AS delta FROM old_rows
          UNION ALL
          SELECT pool, status, 1 FROM new_rows) d
    GROUP BY d.pool, d.status
    HAVING sum(d.delta) <> 0
    ORDER BY d.pool, d.status
    ON CONFLICT (pool, status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
"""


def upgrade(conn: psycopg.Connection[Any], context: MigrationContext) -> None:
    conn.execute(_LOCK)
    importlib.import_module("tokenpool.db.migrations.0007_vault_seal").seal_clear_rows(conn, context)
    conn.execute(CONTRACT.encode())
