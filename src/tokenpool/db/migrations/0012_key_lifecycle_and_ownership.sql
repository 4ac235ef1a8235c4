-- API keys that expire, record their last use and announce every change; reservations owned by the key
-- that made them (docs/api.md "Authentication", "Limits"; docs/security.md "API keys").

-- expires_at: NULL = never (keys made before this migration, and `apikey create` without --expires-in).
-- last_used_at: written at most once a minute per key and process (tokenpool.service.auth), not per
-- request: a write per request would turn every read into a row update of the same hot row.
ALTER TABLE api_keys
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD CONSTRAINT api_keys_expires_after_creation CHECK (expires_at IS NULL OR expires_at > created_at);

-- Every service process caches key checks and LISTENs on this channel (db/api_key_listener.py): a
-- revocation (or any change of what a key may do) reaches every process within milliseconds of its
-- commit, whichever statement or tool made it (`apikey revoke`, an operator's psql). The payload is the
-- key's id, never its hash. NOTIFY is sent at commit, so a rolled-back revocation announces nothing.
-- last_used_at is left out: its once-a-minute writes must not flush the caches.
CREATE FUNCTION api_keys_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tokenpool_api_keys',
                      (CASE WHEN TG_OP = 'DELETE' THEN OLD.api_key_id ELSE NEW.api_key_id END)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_on_change
    AFTER UPDATE OF revoked_at, expires_at, scopes, key_hash, name ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.scopes IS DISTINCT FROM NEW.scopes OR OLD.key_hash IS DISTINCT FROM NEW.key_hash
          OR OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION api_keys_announce_change();

CREATE TRIGGER api_keys_on_delete
    AFTER DELETE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION api_keys_announce_change();


-- The API key holding a reservation. NULL for pairs reserved by library callers (tests, tools) and for
-- every other status but RESERVED, USED and EXPIRED reached from RESERVED. Cleared on release like
-- reservation_id; kept on commit and lapse, so a commit replayed by its owner is still recognised and
-- another key's attempt is answered like an unknown reservation.
-- No foreign key to api_keys on purpose: each claim would then take a KEY SHARE lock on its key's row,
-- and concurrent claims of one key would share it through multixacts on every reservation. Keys are
-- never deleted, and the column only ever receives the id of a key the service just authenticated.
-- Adding a nullable column without a default rewrites nothing.
ALTER TABLE token_pool ADD COLUMN reserved_by uuid;

-- A free pair has no owner. NOT VALID: every existing row has reserved_by NULL (the column is new), so a
-- validation would only scan the whole table under this migration's ACCESS EXCLUSIVE lock; the check
-- holds for every row written from now on all the same.
ALTER TABLE token_pool
    ADD CONSTRAINT token_pool_available_has_no_owner CHECK (status <> 'AVAILABLE' OR reserved_by IS NULL) NOT VALID;

-- The per-key cap on open reservations (TOKENPOOL_MAX_OPEN_RESERVATIONS) counts a key's live
-- reservations inside the claim statement (queries.sql, reserve): a range of this index per key. Partial:
-- only owned RESERVED rows, the few in flight, whatever the size of the pool; loads of AVAILABLE pairs skip
-- it. `reserved_by IS NOT NULL` keeps it out of the lease sweep's reach: a statement that does not name
-- an owner (expire_leases) cannot use it and keeps token_pool_lease_idx.
CREATE INDEX token_pool_owner_idx ON token_pool (reserved_by, lease_expires_at)
    WHERE status = 'RESERVED' AND reserved_by IS NOT NULL;

-- The status machine (0001, 0008), plus: a reservation never changes owner. The owner is set when a pair
-- is reserved (AVAILABLE -> RESERVED) and cleared when it is released (RESERVED -> AVAILABLE); a held,
-- used or lapsed pair keeps it, so no statement can hand one key's reservation to another.
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
       OR (o.status <> 'AVAILABLE' AND n.status <> 'AVAILABLE' AND n.reserved_by IS DISTINCT FROM o.reserved_by)
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
