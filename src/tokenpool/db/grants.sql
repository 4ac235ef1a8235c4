-- What the app role (TOKENPOOL_DATABASE_APP_ROLE: the service, worker, refill and Lambda) may do, and
-- nothing more. `tokenpool db upgrade` runs this file as the owner role after the migrations, in one
-- transaction, every time: first it revokes whatever the app role holds on the schema's tables,
-- sequences and functions (grants of an older version, or made by hand), then grants exactly what
-- follows. So the privileges are always those written here, and a table a later migration adds is out
-- of the app role's reach until a line here grants it (tests/integration/test_least_privilege.py fails
-- until then). Every privilege below is needed by a statement of db/queries.sql; {app} and {database}
-- are filled in by db/roles.py.
--
-- Not here, by design: CREATE on the schema (the app role creates no table; its staging table for COPY
-- is a TEMPORARY one), TRUNCATE, REFERENCES and TRIGGER anywhere, DELETE on token_pool, cards, api_keys
-- and learned_pairs, and UPDATE or DELETE on detokenize_audit.
-- Foreign keys and triggers: a foreign key is checked with the rights of its table's owner, so none
-- is needed for it; the token_pool triggers run with the rights of the statement's role, hence the
-- INSERT and UPDATE on token_pool_counts. Identity columns need no grant on their sequences.
-- SELECT ... FOR UPDATE needs UPDATE on at least one column of its table, hence the retention prune's
-- UPDATE (created_at) on idempotency_keys.

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {app};
REVOKE ALL ON ALL ROUTINES IN SCHEMA public FROM {app};
-- PostgreSQL up to 14 lets every role create tables in public; so would an operator's grant.
REVOKE CREATE ON SCHEMA public FROM PUBLIC, {app};

GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {app};
GRANT USAGE ON SCHEMA public TO {app};

-- The pool: claim, commit, release, expire leases (UPDATE ... RETURNING, SELECT ... FOR UPDATE), load
-- pairs (INSERT from the staging table), read pairs and counts. Pairs are never deleted.
-- UPDATE only of the status machine's columns: the app role cannot rewrite a pair's sealed token (which
-- would destroy it: only the owner re-encrypts) nor its identity.
GRANT SELECT, INSERT ON token_pool TO {app};
-- reserved_by: the key holding a reservation (set on claim, cleared on release; the trigger keeps it).
GRANT UPDATE (status, reservation_id, reserved_by, reserved_at, lease_expires_at, used_at, expired_at, card_ref)
    ON token_pool TO {app};
-- Kept by the token_pool triggers (INSERT ... ON CONFLICT DO UPDATE); read by stats and program_pair_counts.
GRANT SELECT, INSERT, UPDATE ON token_pool_counts TO {app};

-- The service: cards are written once; keys are created and revoked (revoked_at), never deleted, and
-- their last use is recorded (last_used_at). No other column of a key changes: not its hash, scopes,
-- name or expiry.
GRANT SELECT, INSERT ON cards TO {app};
GRANT SELECT, INSERT ON api_keys TO {app};
GRANT UPDATE (revoked_at, last_used_at) ON api_keys TO {app};
GRANT SELECT, INSERT ON learned_pairs TO {app};
GRANT SELECT, INSERT, UPDATE, DELETE ON runtime_config TO {app};
-- Idempotency keys: claimed, read, and deleted by the retention prune.
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO {app};
GRANT UPDATE (created_at) ON idempotency_keys TO {app};

-- The audit of token reads: the app role appends and nothing else (it does not even read it back). The
-- hash chain's trigger and head table are the owner's (SECURITY DEFINER): the app role cannot touch the
-- head. Rows past the 12 months PCI DSS 10.5.1 keeps go through the owner's function (migration 0009),
-- which refuses a younger cutoff and moves the chain's prune watermark with them.
GRANT INSERT ON detokenize_audit TO {app};
GRANT EXECUTE ON FUNCTION tokenpool_prune_detokenize_audit(timestamptz, integer) TO {app};

-- Card programs: the service, the refill, the worker and the Lambda read them; registering, changing and
-- removing one is the owner's (tokenpool program add|set|remove, db upgrade).
GRANT SELECT ON programs TO {app};

-- The vault: the app role reads the wrapped keys; the owner creates and rotates them (db upgrade,
-- tokenpool keys), and re-encrypts rows (keys reencrypt).
GRANT SELECT ON vault_keys TO {app};

-- The refill job: its lease, crash-safe batch journal, run history (pruned), samples, alert state.
GRANT SELECT, INSERT, UPDATE, DELETE ON refill_leases TO {app};
GRANT SELECT, INSERT, UPDATE, DELETE ON refill_runs TO {app};
GRANT SELECT, INSERT, UPDATE, DELETE ON refill_batches TO {app};
GRANT SELECT, INSERT, DELETE ON refill_pending_tokens TO {app};
GRANT SELECT, INSERT, DELETE ON pool_level_samples TO {app};
GRANT SELECT, INSERT, UPDATE ON pool_alert_state TO {app};
GRANT SELECT, INSERT, UPDATE ON pool_alert_deliveries TO {app};

-- The restore epoch (migration 0013): read, and moved forward only through the owner's function, which
-- never moves a restored database's epoch past the one kept outside it (only `db after-restore` does).
GRANT SELECT ON restore_epoch TO {app};
GRANT EXECUTE ON FUNCTION tokenpool_advance_restore_epoch(bigint) TO {app};

-- schema_migrations, restore_fences: nothing (the owner's business: `db upgrade`, `db after-restore`).
