-- Every statement tokenpool sends to PostgreSQL. Each starts with a header line `-- name --`
-- and a one-line description; tokenpool.db.queries parses this file into a dict by name.
-- Parameters use psycopg's %(name)s style.

-- reserve --
-- Claim up to n AVAILABLE pairs of a pool and lease them: one statement, one round trip.
-- Why a random start: each claim leaves a dead entry in token_pool_claim_idx until VACUUM. Starting
-- every claim at a random claim_key spreads those entries (and concurrent claimers, who would
-- otherwise all race for the same first rows and skip each other's locks) across the index, instead
-- of piling them at its head where every later claim would step over all of them.
-- Why two CTEs: after_start reads from the start to the end of the pool's range; before_start wraps
-- around and is only read when after_start came up short, because the LIMIT on the UNION ALL stops
-- pulling (and locking) rows once n are found. Both are index range scans on token_pool_claim_idx.
-- Why CTEs and not `id IN (SELECT ...)`: the planner may turn the IN into a join that updates
-- more rows than the LIMIT; a CTE with FOR UPDATE is evaluated once, as written.
WITH after_start AS (
    SELECT id FROM token_pool
    WHERE pool = %(pool)s AND status = 'AVAILABLE' AND claim_key >= %(start)s
    ORDER BY claim_key
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), before_start AS (
    SELECT id FROM token_pool
    WHERE pool = %(pool)s AND status = 'AVAILABLE' AND claim_key < %(start)s
    ORDER BY claim_key
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    SELECT id FROM after_start
    UNION ALL
    SELECT id FROM before_start
    LIMIT %(n)s
)
UPDATE token_pool AS t
SET status = 'RESERVED',
    reservation_id = gen_random_uuid(),
    reserved_at = now(),
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
FROM claimed
WHERE t.id = claimed.id
RETURNING t.reservation_id, t.pool, t.internal_token, t.external_ref, t.lease_expires_at;

-- commit --
-- Mark a reserved pair USED by a card; matches nothing when the reservation is unknown, finished or lapsed.
-- The lease is checked here, not only by the janitor: a holder past its lease must not commit a pair
-- the janitor is about to quarantine.
UPDATE token_pool
SET status = 'USED', card_ref = %(card_ref)s, used_at = now()
WHERE reservation_id = %(reservation_id)s AND status = 'RESERVED' AND lease_expires_at > now()
RETURNING reservation_id, pool, internal_token, external_ref, lease_expires_at;

-- release --
-- Give a reserved pair back to the pool (its holder did not use it) while the lease still holds.
UPDATE token_pool
SET status = 'AVAILABLE', reservation_id = NULL, reserved_at = NULL, lease_expires_at = NULL
WHERE reservation_id = %(reservation_id)s AND status = 'RESERVED' AND lease_expires_at > now()
RETURNING id;

-- reservation_state --
-- Why a commit or release matched nothing: read the reservation as it is now.
SELECT reservation_id, pool, internal_token, external_ref, lease_expires_at, status, card_ref,
       lease_expires_at <= now() AS lapsed
FROM token_pool
WHERE reservation_id = %(reservation_id)s;

-- expire_leases --
-- The janitor step: quarantine up to `limit` reservations whose lease lapsed (RESERVED -> EXPIRED).
-- Bounded and SKIP LOCKED so the sweep never holds many locks at once nor waits on a commit in flight
-- (a commit that wins simply leaves the row USED).
WITH lapsed AS (
    SELECT id FROM token_pool
    WHERE status = 'RESERVED' AND lease_expires_at <= now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE token_pool AS t
SET status = 'EXPIRED', expired_at = now()
FROM lapsed
WHERE t.id = lapsed.id;

-- lookup --
-- Detokenize from the pool: external reference IDs -> internal tokens, one round trip for the batch.
SELECT external_ref, internal_token
FROM token_pool
WHERE external_ref = ANY(%(external_refs)s);

-- create_staging --
-- Per-connection staging table for COPY; emptied at the end of every transaction.
CREATE TEMP TABLE IF NOT EXISTS token_pool_staging (
    internal_token text NOT NULL,
    external_ref   text NOT NULL
) ON COMMIT DELETE ROWS;

-- copy_staging --
-- Bulk load of pairs into the staging table (COPY: one stream instead of one row per statement).
COPY token_pool_staging (internal_token, external_ref) FROM STDIN;

-- staging_conflicts --
-- Staged pairs that disagree with a stored pair or with each other (same token, other partner or pool).
-- Four separate probes rather than one OR-ed EXISTS, so each is a join on a unique index.
SELECT
    (SELECT count(*) FROM token_pool_staging s JOIN token_pool t ON t.internal_token = s.internal_token
     WHERE t.external_ref <> s.external_ref OR t.pool <> %(pool)s)
  + (SELECT count(*) FROM token_pool_staging s JOIN token_pool t ON t.external_ref = s.external_ref
     WHERE t.internal_token <> s.internal_token)
  + (SELECT count(*) FROM (SELECT internal_token FROM token_pool_staging
                           GROUP BY internal_token HAVING count(DISTINCT external_ref) > 1) AS twice_token)
  + (SELECT count(*) FROM (SELECT external_ref FROM token_pool_staging
                           GROUP BY external_ref HAVING count(DISTINCT internal_token) > 1) AS twice_ref);

-- load_staging --
-- Move staged pairs into the pool; pairs already there are skipped, which makes a reload idempotent.
INSERT INTO token_pool (pool, internal_token, external_ref, batch_id)
SELECT %(pool)s, internal_token, external_ref, %(batch_id)s FROM token_pool_staging
ON CONFLICT DO NOTHING;

-- stats --
-- Counts by status from the trigger-kept counters: at most 4 x 64 rows, whatever the pool's size.
SELECT status, sum(n)::bigint AS n
FROM token_pool_counts
WHERE pool = %(pool)s
GROUP BY status;

-- exact_stats --
-- Counts by status from the pairs themselves: a full scan, for reconciliation and tests only.
SELECT status, count(*)::bigint AS n
FROM token_pool
WHERE pool = %(pool)s
GROUP BY status;

-- list_pools --
-- Pools that have ever held a pair.
SELECT DISTINCT pool FROM token_pool_counts ORDER BY pool;
