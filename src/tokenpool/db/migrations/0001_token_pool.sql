-- The token pool: one row per TOME pair, for its whole life (AVAILABLE -> RESERVED -> USED | EXPIRED).
--
-- Why one table for every status: the UNIQUE constraints on internal_token and external_ref are the
-- last line of defence against handing a pair to two cards; they only hold if every pair, whatever
-- its status, lives in the same table.

CREATE TABLE token_pool (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool             text        NOT NULL,
    internal_token   text        NOT NULL,
    external_ref     text        NOT NULL,
    status           text        NOT NULL DEFAULT 'AVAILABLE',
    -- Random position in the claim order. A claim starts at a random key (see queries.sql, reserve)
    -- so the dead index entries it leaves behind are spread over the index instead of piling up at
    -- its head, where every later claim would have to step over them until VACUUM clears them.
    claim_key        bigint      NOT NULL DEFAULT (random() * 9.2e18)::bigint,
    batch_id         uuid        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    reservation_id   uuid,
    reserved_at      timestamptz,
    lease_expires_at timestamptz,
    used_at          timestamptz,
    expired_at       timestamptz,
    card_ref         text,
    CONSTRAINT token_pool_internal_token_key UNIQUE (internal_token),
    CONSTRAINT token_pool_external_ref_key UNIQUE (external_ref),
    CONSTRAINT token_pool_status_known
        CHECK (status IN ('AVAILABLE', 'RESERVED', 'USED', 'EXPIRED')),
    CONSTRAINT token_pool_available_is_free
        CHECK (status <> 'AVAILABLE' OR (reservation_id IS NULL AND lease_expires_at IS NULL AND card_ref IS NULL)),
    CONSTRAINT token_pool_reserved_has_lease
        CHECK (status <> 'RESERVED' OR (reservation_id IS NOT NULL AND lease_expires_at IS NOT NULL AND card_ref IS NULL)),
    CONSTRAINT token_pool_used_has_card
        CHECK (status <> 'USED' OR card_ref IS NOT NULL)
) WITH (
    -- Every claim and every commit writes a new row version; room on the page keeps it close.
    fillfactor = 80,
    -- Vacuum after a fixed number of dead rows, not a fraction of a table that only grows:
    -- at 1M rows the default 20% would let 200,000 dead claim entries pile up first.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_analyze_scale_factor = 0.02
);

-- The claim: only AVAILABLE rows are in it, so it shrinks as the pool drains.
CREATE INDEX token_pool_claim_idx ON token_pool (pool, claim_key) WHERE status = 'AVAILABLE';

-- The lease sweep (expire_leases) and the count of reservations in flight.
CREATE INDEX token_pool_lease_idx ON token_pool (lease_expires_at) WHERE status = 'RESERVED';

-- commit / release look a reservation up by id; only reserved and finished rows carry one.
CREATE UNIQUE INDEX token_pool_reservation_idx ON token_pool (reservation_id) WHERE reservation_id IS NOT NULL;


-- Counts by status, kept by the triggers below so that stats() reads a few dozen rows instead of
-- counting millions. Sharded by backend so concurrent claims on different connections do not queue
-- on one counter row; stats() sums the shards.
CREATE TABLE token_pool_counts (
    pool   text   NOT NULL,
    status text   NOT NULL,
    shard  int    NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (pool, status, shard)
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);


-- The status machine, enforced by the database whatever statement tries to break it:
-- AVAILABLE -> RESERVED -> USED (final); RESERVED -> AVAILABLE (release); RESERVED -> EXPIRED (lapse).
-- A pair's identity (pool, tokens) never changes, and a USED pair never changes card.
CREATE FUNCTION token_pool_guard_transitions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT o.id, o.status AS old_status, n.status AS new_status INTO bad
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.status <> n.status AND (o.status, n.status) NOT IN (
                ('AVAILABLE', 'RESERVED'), ('RESERVED', 'USED'),
                ('RESERVED', 'AVAILABLE'), ('RESERVED', 'EXPIRED')))
       OR o.pool <> n.pool OR o.internal_token <> n.internal_token OR o.external_ref <> n.external_ref
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

CREATE TRIGGER token_pool_on_update
    AFTER UPDATE ON token_pool
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION token_pool_guard_transitions();


CREATE FUNCTION token_pool_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO token_pool_counts AS c (pool, status, shard, n)
    SELECT pool, status, pg_backend_pid() % 64, count(*) FROM new_rows
    GROUP BY pool, status ORDER BY pool, status
    ON CONFLICT (pool, status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;

CREATE TRIGGER token_pool_on_insert
    AFTER INSERT ON token_pool
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION token_pool_count_inserts();


CREATE FUNCTION token_pool_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO token_pool_counts AS c (pool, status, shard, n)
    SELECT pool, status, pg_backend_pid() % 64, -count(*) FROM old_rows
    GROUP BY pool, status ORDER BY pool, status
    ON CONFLICT (pool, status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;

CREATE TRIGGER token_pool_on_delete
    AFTER DELETE ON token_pool
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION token_pool_count_deletes();

-- TRUNCATE would bypass the counts; nothing in tokenpool truncates, and neither should an operator.
CREATE FUNCTION token_pool_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'token_pool: TRUNCATE would lose issued tokens and desynchronise counts'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER token_pool_no_truncate
    BEFORE TRUNCATE ON token_pool
    FOR EACH STATEMENT EXECUTE FUNCTION token_pool_refuse_truncate();
