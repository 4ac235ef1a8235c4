-- Restoring a backup never hands out a pair twice: the restore fence (`tokenpool db after-restore`) and the
-- restore epoch (docs/runbook.md, Restore from a backup).
--
-- A backup brings pairs back as AVAILABLE or RESERVED that may have gone to cards after the backup point.
-- The fence moves every one of them to EXPIRED, the status that already means "never handed out again"
-- (no new status: every count, metric, health rule and the claim index already treat EXPIRED as gone),
-- and marks each with the fence that retired it (restore_fence_id): an EXPIRED pair with a fence id was
-- quarantined by a restore, one without lapsed from a reservation.

CREATE TABLE restore_fences (
    id                    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fenced_at             timestamptz NOT NULL DEFAULT now(),
    fenced_by             text        NOT NULL DEFAULT current_user,   -- the database role
    operator              text,                                        -- the OS user who ran the command
    available             bigint      NOT NULL,                        -- AVAILABLE pairs quarantined
    reserved              bigint      NOT NULL,                        -- RESERVED pairs quarantined
    refill_batches        bigint      NOT NULL,                        -- unfinished refill batches closed
    -- The database it fenced: pg_control_system()'s identifier (NULL where the role may not read it), the
    -- timeline, the server's start (a restored database always runs on a server started after the restore:
    -- a fence recorded on the running server is this restore's), the database's name and the WAL position.
    system_identifier     text,
    timeline_id           int,
    postmaster_started_at timestamptz NOT NULL,
    database_name         text        NOT NULL DEFAULT current_database(),
    wal_lsn               pg_lsn,
    epoch                 bigint      NOT NULL                         -- the restore epoch it set
);

-- Which fence quarantined a pair. No foreign key: it would add a check to the claim's updates for a
-- column only the owner's fence writes (the app role has no UPDATE on it, db/grants.sql).
-- Adding a nullable column without a default rewrites nothing.
ALTER TABLE token_pool ADD COLUMN restore_fence_id bigint;

-- The restore epoch, one row: a counter every tokenpool process advances (when TOKENPOOL_RESTORE_EPOCH_FILE
-- is set) here AND in a file outside the database. A database restored from a backup carries the epoch of
-- its backup point; the file kept the later one: older here than there = restored, the fence is needed.
CREATE TABLE restore_epoch (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch     bigint  NOT NULL CHECK (epoch >= 0)
);
INSERT INTO restore_epoch (epoch) VALUES (0);

-- Advances the epoch unless the database's is older than `known` (the file's): then returns NULL and
-- changes nothing, so a process can never advance a restored database past the file by itself (only the
-- fence may). SECURITY DEFINER: the app role may move the epoch forward through this, not set it.
CREATE FUNCTION tokenpool_advance_restore_epoch(known bigint) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.restore_epoch SET epoch = epoch + 1 WHERE epoch >= known RETURNING epoch;
$$;
REVOKE ALL ON FUNCTION tokenpool_advance_restore_epoch(bigint) FROM PUBLIC;

-- The status machine (0001, 0008, 0012), plus the fence's own move: AVAILABLE -> EXPIRED, only with the
-- fence's id (restore_fence_id, which only the owner may write), which is set once, with that move or
-- RESERVED -> EXPIRED, and never changes after.
CREATE OR REPLACE FUNCTION token_pool_guard_transitions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT o.id, o.status AS old_status, n.status AS new_status INTO bad
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.status <> n.status AND (o.status, n.status) NOT IN (
                ('AVAILABLE', 'RESERVED'), ('AVAILABLE', 'USED'), ('RESERVED', 'USED'),
                ('RESERVED', 'AVAILABLE'), ('RESERVED', 'EXPIRED'))
           AND NOT (o.status = 'AVAILABLE' AND n.status = 'EXPIRED' AND n.restore_fence_id IS NOT NULL))
       OR (n.restore_fence_id IS DISTINCT FROM o.restore_fence_id
           AND NOT (o.restore_fence_id IS NULL AND o.status IN ('AVAILABLE', 'RESERVED') AND n.status = 'EXPIRED'))
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
