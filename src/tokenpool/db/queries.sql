-- Every statement tokenpool sends to PostgreSQL. Each starts with a header line `-- name --`
-- and a one-line description; tokenpool.db.queries parses this file into a dict by name.
-- Parameters use psycopg's %(name)s style; arrays go in binary (%(name)b): nothing to format in Python
-- nor to parse in the server (a 1,000-ref detokenize halves its audit insert). Only the stores in
-- tokenpool/db/ run them, and they read rows by column name (psycopg class_row), so reordering a
-- SELECT's columns cannot misassign a field.
--
-- Internal tokens never appear in clear: token_ct is their AES-256-GCM ciphertext (naming its key
-- version), token_digest their HMAC-SHA-256 digest, both computed in the application
-- (tokenpool.vault, docs/security.md); external_ref is the lookup key and stays in clear.

-- reserve --
-- Claim a pair of a pool for each of a batch of orders and lease it to the order's owner (the API key
-- holding it; NULL for library callers): one statement, one round trip, however many orders and owners.
-- One row per order comes back, in order: its reservation, or why none (over its owner's cap, or the pool
-- is short).
-- The cap: an owner may hold at most max_open live reservations (NULL: no cap). open_counts counts each
-- owner's live ones on token_pool_owner_idx (a range per owner over the few RESERVED rows), and an
-- owner's k-th order of the batch is admitted while open + k <= max_open. A lapsed lease the janitor has
-- not swept yet no longer counts. Concurrent statements do not see each other's claims, so a key can pass
-- its cap by the reservations it has in flight in other statements at that moment (docs/api.md).
-- first_lapse, for an order over its cap: when the owner's first lease lapses, the latest a slot frees
-- (the 429's Retry-After); seconds on the database's clock.
-- Why a random start: each claim leaves a dead entry in token_pool_claim_idx until VACUUM. Starting
-- every claim at a random claim_key spreads those entries (and concurrent claimers, who would
-- otherwise all race for the same first rows and skip each other's locks) across the index, instead
-- of piling them at its head where every later claim would step over all of them.
-- Why two CTEs: after_start reads from the start to the end of the pool's range; before_start wraps
-- around and is only read when after_start came up short, because the LIMIT on the UNION ALL stops
-- pulling (and locking) rows once n are found. Both are index range scans on token_pool_claim_idx.
-- Why the claim's LIMIT is the number of orders (n) and not of admitted ones: a constant keeps the plan
-- an index range scan; in the rare batch with an order over its cap, a pair locked and not taken is only
-- held until the statement ends.
-- Why CTEs and not `id IN (SELECT ...)`: the planner may turn the IN into a join that updates
-- more rows than the LIMIT; a CTE with FOR UPDATE is evaluated once, as written.
WITH orders AS (
    SELECT o.n, o.owner, row_number() OVER (PARTITION BY o.owner ORDER BY o.n) AS nth
    FROM unnest(%(owners)b::uuid[]) WITH ORDINALITY AS o(owner, n)
), open_counts AS (
    SELECT reserved_by AS owner, count(*) AS open, min(lease_expires_at) AS first_lapse
    FROM token_pool
    WHERE status = 'RESERVED' AND reserved_by IS NOT NULL AND reserved_by = ANY(%(owners)b::uuid[])
      AND lease_expires_at > now()
    GROUP BY reserved_by
), admitted AS (
    SELECT o.n, o.owner, row_number() OVER (ORDER BY o.n) AS k
    FROM orders o
    LEFT JOIN open_counts c ON c.owner = o.owner
    WHERE o.owner IS NULL OR %(max_open)s::int IS NULL OR coalesce(c.open, 0) + o.nth <= %(max_open)s::int
), after_start AS (
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
), paired AS (
    SELECT a.n, a.owner, c.id AS pair_id
    FROM admitted a
    JOIN (SELECT id, row_number() OVER () AS k FROM claimed) AS c USING (k)
), reserved AS (
    UPDATE token_pool AS t
    SET status = 'RESERVED',
        reservation_id = gen_random_uuid(),
        reserved_by = p.owner,
        reserved_at = now(),
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    FROM paired AS p
    WHERE t.id = p.pair_id
    RETURNING p.n, t.reservation_id, t.pool, t.token_ct, t.external_ref, t.lease_expires_at
)
SELECT o.n, r.reservation_id, r.pool, r.token_ct, r.external_ref, r.lease_expires_at,
       a.n IS NULL AS over_cap,
       CASE WHEN a.n IS NULL THEN greatest(extract(epoch FROM c.first_lapse - now()), 0)::float8 END
           AS retry_after_s
FROM orders AS o
LEFT JOIN admitted AS a USING (n)
LEFT JOIN reserved AS r USING (n)
LEFT JOIN open_counts AS c ON c.owner = o.owner
ORDER BY o.n;

-- commit --
-- Mark a reserved pair USED by a card; matches nothing when the reservation is unknown, another key's,
-- finished or lapsed. The lease is checked here, not only by the janitor: a holder past its lease must
-- not commit a pair the janitor is about to quarantine.
-- The owner: IS NOT DISTINCT FROM, so a library caller (owner NULL) commits its own unowned reservations
-- and no key ever commits another's (nor an unowned one).
UPDATE token_pool
SET status = 'USED', card_ref = %(card_ref)s, used_at = now()
WHERE reservation_id = %(reservation_id)s AND reserved_by IS NOT DISTINCT FROM %(owner)s::uuid
  AND status = 'RESERVED' AND lease_expires_at > now()
RETURNING reservation_id, pool, token_ct, external_ref, lease_expires_at;

-- release --
-- Give a reserved pair back to the pool (its holder did not use it) while the lease still holds; only
-- its owner may (see commit). The pair forgets its reservation and its owner.
UPDATE token_pool
SET status = 'AVAILABLE', reservation_id = NULL, reserved_by = NULL, reserved_at = NULL, lease_expires_at = NULL
WHERE reservation_id = %(reservation_id)s AND reserved_by IS NOT DISTINCT FROM %(owner)s::uuid
  AND status = 'RESERVED' AND lease_expires_at > now()
RETURNING id;

-- reservation_state --
-- Why a commit or release matched nothing: read the reservation as it is now, as its owner sees it.
-- Another key's reservation reads as no reservation at all: its existence is not revealed.
SELECT reservation_id, pool, token_ct, external_ref, lease_expires_at, status, card_ref,
       lease_expires_at <= now() AS lapsed
FROM token_pool
WHERE reservation_id = %(reservation_id)s AND reserved_by IS NOT DISTINCT FROM %(owner)s::uuid;

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
-- Detokenize from the pool: external reference IDs -> sealed internal tokens, one round trip for the batch.
SELECT external_ref, pool, token_ct
FROM token_pool
WHERE external_ref = ANY(%(external_refs)b);

-- create_staging --
-- Per-connection staging table for COPY; emptied at the end of every transaction.
CREATE TEMP TABLE IF NOT EXISTS token_pool_staging (
    token_digest bytea NOT NULL,
    token_ct     bytea NOT NULL,
    key_version  int   NOT NULL,
    external_ref text  NOT NULL
) ON COMMIT DELETE ROWS;

-- copy_staging --
-- Bulk load of pairs into the staging table (COPY: one stream instead of one row per statement).
COPY token_pool_staging (token_digest, token_ct, key_version, external_ref) FROM STDIN (FORMAT BINARY);

-- staging_conflicts --
-- Staged pairs that disagree with a stored pair or with each other (same token, other partner or pool).
-- Four separate probes rather than one OR-ed EXISTS, so each is a join on a unique index.
SELECT
    (SELECT count(*) FROM token_pool_staging s JOIN token_pool t ON t.token_digest = s.token_digest
     WHERE t.external_ref <> s.external_ref OR t.pool <> %(pool)s)
  + (SELECT count(*) FROM token_pool_staging s JOIN token_pool t ON t.external_ref = s.external_ref
     WHERE t.token_digest <> s.token_digest)
  + (SELECT count(*) FROM (SELECT token_digest FROM token_pool_staging
                           GROUP BY token_digest HAVING count(DISTINCT external_ref) > 1) AS twice_token)
  + (SELECT count(*) FROM (SELECT external_ref FROM token_pool_staging
                           GROUP BY external_ref HAVING count(DISTINCT token_digest) > 1) AS twice_ref);

-- load_staging_new --
-- The fast load: insert the staged pairs whose internal token is not stored yet, as a plain insert.
-- Why not always ON CONFLICT: its speculative insertion costs ~40% more per row (measured: 100k pairs
-- in 1.68 s against 2.35 s on PostgreSQL 15). Two loads of the same new pair at once, a pair staged
-- twice, or a contradicting reference end in a unique violation instead; the caller then rolls back
-- to its savepoint and runs load_staging, which skips what is there.
INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, batch_id)
SELECT %(pool)s, s.token_digest, s.token_ct, s.key_version, s.external_ref, %(batch_id)s
FROM token_pool_staging s
WHERE NOT EXISTS (SELECT 1 FROM token_pool t WHERE t.token_digest = s.token_digest);

-- load_staging --
-- Move staged pairs into the pool; pairs already there are skipped, which makes a reload idempotent.
INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, batch_id)
SELECT %(pool)s, token_digest, token_ct, key_version, external_ref, %(batch_id)s FROM token_pool_staging
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

-- ===== The HTTP service: cards, detokenize, API keys, idempotency, audit, runtime config =====

-- ping --
-- Readiness probe: the database answers.
SELECT 1;

-- card_create_from_pool --
-- Cards from the pool in ONE statement (one round trip, its own transaction in autocommit), for a batch of
-- orders that arrived together (tokenpool.cards.batching; a lone order is a batch of one): claim up to n
-- AVAILABLE pairs, pair them with the orders, take each order's Idempotency-Key, mark its pair USED by its
-- card, insert the cards. One row per order comes back, in order.
-- Why AVAILABLE -> USED with no RESERVED step: claim and commit are atomic here, so no lease is needed
-- (the status machine allows this one shortcut, migration 0008).
-- Why a key is taken only by an order that got a pair: with the pool empty nothing is written for it, and
-- the caller's TOME path takes the key itself. A concurrent retry with the same key waits on the key's
-- unique index until the first statement ends, then inserts nothing: its pair stays AVAILABLE (its
-- UPDATE requires the key) and key_claimed = false tells the caller to read the first card. Two orders
-- with one key in the same batch: the second inserts nothing (DO NOTHING sees the first's row) and
-- learns the same way.
-- The claim is the reserve statement's (random start, wrap-around; see reserve).
WITH orders AS (
    SELECT *
    FROM unnest(%(card_ids)b::uuid[], %(customer_refs)b::text[], %(api_key_ids)b::uuid[],
                %(idempotency_keys)b::text[], %(request_hashes)b::bytea[])
         WITH ORDINALITY AS o(card_id, customer_ref, api_key_id, idempotency_key, request_hash, n)
), after_start AS (
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
), paired AS (
    SELECT o.*, c.id AS pair_id
    FROM orders o
    JOIN (SELECT id, row_number() OVER () AS n FROM claimed) AS c USING (n)
), key AS (
    INSERT INTO idempotency_keys (api_key_id, idempotency_key, request_hash, card_id)
    SELECT api_key_id, idempotency_key, request_hash, card_id FROM paired WHERE idempotency_key IS NOT NULL
    ORDER BY api_key_id, idempotency_key  -- two batches holding the same keys take them in one order: no deadlock
    ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
    RETURNING card_id
), used AS (
    UPDATE token_pool AS t
    SET status = 'USED', card_ref = p.card_id::text, used_at = now()
    FROM paired AS p
    WHERE t.id = p.pair_id AND (p.idempotency_key IS NULL OR p.card_id IN (SELECT card_id FROM key))
    RETURNING t.id, t.token_digest, t.token_ct, t.external_ref
), card AS (
    INSERT INTO cards (card_id, program, customer_ref, token_digest, external_ref, token_source)
    SELECT p.card_id, %(pool)s, p.customer_ref, u.token_digest, u.external_ref, 'pool'
    FROM used AS u
    JOIN paired AS p ON p.pair_id = u.id
    RETURNING card_id, created_at
)
SELECT o.n, o.card_id, p.pair_id IS NOT NULL AS pair_claimed,
       (o.idempotency_key IS NULL OR o.card_id IN (SELECT card_id FROM key)) AS key_claimed,
       c.created_at, u.token_ct, u.external_ref
FROM orders AS o
LEFT JOIN paired AS p USING (n)
LEFT JOIN used AS u ON u.id = p.pair_id
LEFT JOIN card AS c ON c.card_id = o.card_id
ORDER BY o.n;

-- card_insert --
-- A new card on a pair obtained from TOME; runs in the transaction that inserted the pair.
INSERT INTO cards (card_id, program, customer_ref, token_digest, external_ref, token_source)
VALUES (%(card_id)s, %(program)s, %(customer_ref)s, %(token_digest)s, %(external_ref)s, %(token_source)s)
RETURNING card_id, program, customer_ref, external_ref, token_source, created_at;

-- card_get --
-- One card by id, with its pair's sealed token (the card stores only the token's digest).
SELECT c.card_id, c.program, c.customer_ref, c.external_ref, c.token_source, c.created_at, p.pool, p.token_ct
FROM cards c
JOIN token_pool p ON p.token_digest = c.token_digest
WHERE c.card_id = %(card_id)s;

-- tome_fallback_intent --
-- Journal one pair the service is about to ask TOME for, in its own short transaction, BEFORE the call:
-- batch_id becomes the issue's Idempotency-Key, so if the request fails after TOME issued, the refill
-- replays the issue and loads the pair into the pool. No database, no TOME call.
-- The namespaces are recorded so that a recovery replays the issue where it was made (migration 0010).
INSERT INTO refill_batches (batch_id, pool, count, run_id, origin, ns1, ns2)
VALUES (%(batch_id)s, %(pool)s, 1, %(batch_id)s, 'service', %(ns1)s, %(ns2)s);

-- pair_insert_used --
-- A pair obtained from TOME for one card (pool empty, or canary), recorded as USED by that card.
-- An INSERT is not a status transition, so the status machine allows it; the CHECK wants card_ref.
-- batch_id is the card's id: such a pair is a batch of its own.
INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, status, batch_id, used_at, card_ref)
VALUES (%(pool)s, %(token_digest)s, %(token_ct)s, %(key_version)s, %(external_ref)s, 'USED', %(card_id)s, now(),
        %(card_id)s::text);

-- pair_insert_reserved --
-- A pair obtained from TOME for POST /v1/reservations when the pool is empty, recorded as RESERVED
-- with a lease and its owner (the API key), so that commit, release and the lease sweep treat it like
-- any claimed pair.
INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, status, batch_id, reservation_id,
                        reserved_by, reserved_at, lease_expires_at)
VALUES (%(pool)s, %(token_digest)s, %(token_ct)s, %(key_version)s, %(external_ref)s, 'RESERVED', %(batch_id)s,
        gen_random_uuid(), %(owner)s, now(), now() + make_interval(secs => %(lease_seconds)s))
RETURNING reservation_id, pool, token_ct, external_ref, lease_expires_at;

-- idempotency_claim --
-- Take an Idempotency-Key for a card about to be created. When another transaction holds the same key
-- uncommitted, this waits on the primary key until it ends (bounded by statement_timeout), then
-- inserts nothing if it committed: the caller then reads the existing card (idempotency_get).
INSERT INTO idempotency_keys (api_key_id, idempotency_key, request_hash, card_id)
VALUES (%(api_key_id)s, %(idempotency_key)s, %(request_hash)s, %(card_id)s)
ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
RETURNING card_id;

-- idempotency_get --
-- The card an Idempotency-Key already created, with the fingerprint of the request that created it.
SELECT k.request_hash, c.card_id, c.program, c.customer_ref, c.external_ref, c.token_source, c.created_at,
       p.pool, p.token_ct
FROM idempotency_keys k
JOIN cards c ON c.card_id = k.card_id
JOIN token_pool p ON p.token_digest = c.token_digest
WHERE k.api_key_id = %(api_key_id)s AND k.idempotency_key = %(idempotency_key)s;

-- detokenize_local --
-- Detokenize from the database in one round trip: the pool (every pair it ever held, incl. pairs
-- fetched from TOME for cards) and the pairs learned from TOME NS2 earlier.
SELECT external_ref, pool, token_ct FROM token_pool WHERE external_ref = ANY(%(external_refs)b)
UNION ALL
SELECT external_ref, NULL, token_ct FROM learned_pairs WHERE external_ref = ANY(%(external_refs)b);

-- learned_pairs_insert --
-- Remember pairs that TOME NS2 answered, so the next detokenize of these refs stays local.
INSERT INTO learned_pairs (external_ref, token_ct, key_version)
SELECT * FROM unnest(%(external_refs)b::text[], %(token_cts)b::bytea[], %(key_versions)b::int[])
ON CONFLICT (external_ref) DO NOTHING;

-- detokenize_audit_insert --
-- One audit row per token read or refused attempt; refs as keyed digests only. The trigger sets seq,
-- prev_hash and row_hash, holding the chain's head locked until this transaction commits.
INSERT INTO detokenize_audit (event, outcome, reason, api_key_name, correlation_id, client_addr, card_id,
                              ref_count, from_db, from_tome, unresolved, ref_digests)
VALUES (%(event)s, %(outcome)s, %(reason)s, %(api_key_name)s, %(correlation_id)s, %(client_addr)s, %(card_id)s,
        %(ref_count)s, %(from_db)s, %(from_tome)s, %(unresolved)s, %(ref_digests)b);

-- audit_chain_ends --
-- The audit chain's head (newest row) and the prune watermark the remaining rows start from.
SELECT seq, hash, pruned_seq, pruned_hash FROM detokenize_audit_head;

-- audit_chain_page --
-- A page of the audit chain in seq order, for `tokenpool audit verify`. Keyset pages, each its own
-- statement: no snapshot is held across a long verification (it would stop VACUUM of token_pool).
-- The columns are AuditRecord's fields, in its order (the store builds it positionally).
SELECT seq, id, at, event, outcome, reason, api_key_name, correlation_id, client_addr, card_id, ref_count,
       from_db, from_tome, unresolved, ref_hashes, ref_digests, prev_hash, row_hash
FROM detokenize_audit
WHERE seq > %(after)s AND seq <= %(up_to)s
ORDER BY seq
LIMIT %(limit)s;

-- api_key_insert --
-- A new API key (its SHA-256 only), expiring after expires_in_s seconds on the database's clock (NULL: never).
INSERT INTO api_keys (name, key_hash, scopes, expires_at)
VALUES (%(name)s, %(key_hash)s, %(scopes)s,
        now() + make_interval(secs => %(expires_in_s)s::float8))
RETURNING api_key_id, name, scopes, expires_at;

-- api_key_revoke --
-- Revoke a key by name; the row stays for the audit trail. The api_keys trigger announces it on the
-- channel every service process listens on (api_keys_listen): it stops working everywhere at once.
UPDATE api_keys SET revoked_at = now()
WHERE name = %(name)s AND revoked_at IS NULL
RETURNING api_key_id;

-- api_key_by_hash --
-- Authenticate a request: the unrevoked key with this hash, if any, with its expiry (an expired key is
-- refused with its own code, so the row is read whatever its expiry).
SELECT api_key_id, name, scopes, expires_at
FROM api_keys
WHERE key_hash = %(key_hash)s AND revoked_at IS NULL;

-- api_key_touch --
-- Record a key's use. Each process sends it at most once a minute per key, and the condition makes it a
-- no-op (no row version, no lock) when another process recorded a use that recently: at most one write
-- per key per interval whatever the number of processes.
UPDATE api_keys SET last_used_at = now()
WHERE api_key_id = %(api_key_id)s
  AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => %(min_interval_s)s::float8));

-- api_key_list --
-- Every key, live, expired or revoked, without secrets.
SELECT name, scopes, created_at, expires_at, last_used_at, revoked_at, expires_at <= now() AS expired
FROM api_keys ORDER BY name;

-- api_keys_listen --
-- A service process's key-change listener subscribes to the api_keys trigger's notifications (migration
-- 0012): the id of each key revoked or changed, delivered when the change commits.
LISTEN tokenpool_api_keys;

-- api_keys_heartbeat --
-- The key-change listener's heartbeat, on its listening connection, every quarter second: notifications
-- committed before it was sent arrive before its answer, so its answer proves the listener missed nothing
-- older (db/api_key_listener.py). Its own text, not ping's (readiness), so the two are told apart.
SELECT true AS listening;

-- runtime_config_get --
-- Every runtime setting (a handful of rows).
SELECT key, value FROM runtime_config;

-- runtime_config_set --
-- Set one runtime setting; every instance picks it up within its cache TTL.
INSERT INTO runtime_config (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();

-- runtime_config_unset --
-- Remove a runtime setting; instances fall back to their environment default.
DELETE FROM runtime_config WHERE key = %(key)s;

-- ===== The refill: lease, batch journal, runs, consumption samples, alert state =====

-- refill_lease_acquire --
-- Take the pool's refill lease if it is free, lapsed, or already ours; returns a row only on success.
-- Why a row and not pg_advisory_lock: CockroachDB has no advisory locks, and a row with an expiry also
-- frees itself when its holder dies without a goodbye (SIGKILL, a frozen Lambda).
INSERT INTO refill_leases AS l (pool, holder, acquired_at, expires_at)
VALUES (%(pool)s, %(holder)s, now(), now() + make_interval(secs => %(ttl_s)s))
ON CONFLICT (pool) DO UPDATE
SET holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
WHERE l.expires_at <= now() OR l.holder = EXCLUDED.holder
RETURNING holder, expires_at;

-- refill_lease_get --
-- Who holds the pool's refill lease, and until when (for the "lease held by ..." message).
SELECT holder, expires_at, expires_at <= now() AS lapsed FROM refill_leases WHERE pool = %(pool)s;

-- refill_lease_renew --
-- Heartbeat, and the fence of every batch load: extend the lease only while we still hold it.
-- Why no `expires_at > now()` here: a holder that overslept its expiry but was not replaced still owns
-- the row (acquire would have changed holder), so extending it is safe and avoids a needless abort.
UPDATE refill_leases
SET expires_at = now() + make_interval(secs => %(ttl_s)s)
WHERE pool = %(pool)s AND holder = %(holder)s
RETURNING expires_at;

-- refill_lease_release --
-- Give the lease back at the end of a run (only if still ours).
DELETE FROM refill_leases WHERE pool = %(pool)s AND holder = %(holder)s;

-- refill_run_start --
-- Record a run as it starts (outcome 'running' until refill_run_finish).
INSERT INTO refill_runs (run_id, pool, trigger, holder, outcome, finished_at, error)
VALUES (%(run_id)s, %(pool)s, %(trigger)s, %(holder)s, %(outcome)s,
        CASE WHEN %(outcome)s = 'running' THEN NULL ELSE now() END, %(error)s);

-- refill_run_finish --
-- Record how a run ended.
UPDATE refill_runs
SET finished_at = now(), target = %(target)s, requested = %(requested)s, recovered = %(recovered)s,
    added = %(added)s, tome_requests = %(tome_requests)s, outcome = %(outcome)s, error = %(error)s
WHERE run_id = %(run_id)s;

-- refill_runs_recent --
-- The latest runs of a pool, newest first.
SELECT run_id, pool, trigger, holder, started_at, finished_at, target, requested, recovered, added,
       tome_requests, outcome, error
FROM refill_runs
WHERE pool = %(pool)s
ORDER BY started_at DESC
LIMIT %(limit)s;

-- refill_last_success --
-- When the pool's last successful refill finished, whoever ran it (the worker's "refill not running" gauge);
-- while none ever succeeded, when its first recorded run started; NULL when no run was ever recorded.
-- Each subquery walks refill_runs_pool_started_idx from one end and stops at its first match.
SELECT COALESCE(
    (SELECT finished_at FROM refill_runs WHERE pool = %(pool)s AND outcome = 'succeeded'
     ORDER BY started_at DESC LIMIT 1),
    (SELECT started_at FROM refill_runs WHERE pool = %(pool)s ORDER BY started_at LIMIT 1)
) AS at;

-- refill_batch_intent --
-- Journal a batch BEFORE asking TOME to issue it; batch_id becomes the issue's Idempotency-Key. Its
-- namespaces are recorded with it: a recovery replays the issue on the namespace the key was used on, even
-- if the program's namespaces changed since (migration 0010).
INSERT INTO refill_batches (batch_id, pool, count, run_id, ns1, ns2)
VALUES (%(batch_id)s, %(pool)s, %(count)s, %(run_id)s, %(ns1)s, %(ns2)s);

-- refill_batches_unfinished --
-- Batches an earlier run left behind (crash, timeout, failure): finished first, oldest first.
-- A service intent (a card's or reservation's TOME fallback) is taken only once it is older than any
-- request can live: before that, the request may still store the pair itself.
SELECT batch_id, count, state, created_at, ns1, ns2
FROM refill_batches
WHERE pool = %(pool)s AND state <> 'done'
  AND (origin = 'refill' OR created_at < now() - make_interval(secs => %(service_grace_s)s))
ORDER BY created_at;

-- refill_pending_tokens_insert --
-- Record the tokens TOME issued for a batch before tokenizing them. A replayed issue (same key) gives
-- the same tokens in the same order, so a second insert of the same batch changes nothing.
INSERT INTO refill_pending_tokens (batch_id, position, token_ct, key_version)
SELECT %(batch_id)s, t.position, t.token_ct, t.key_version
FROM unnest(%(token_cts)b::bytea[], %(key_versions)b::int[]) WITH ORDINALITY AS t(token_ct, key_version, position)
ON CONFLICT (batch_id, position) DO NOTHING;

-- refill_batch_mark_issued --
-- intent -> issued, in the transaction that recorded the batch's tokens.
UPDATE refill_batches SET state = 'issued', issued_at = now()
WHERE batch_id = %(batch_id)s AND state = 'intent';

-- refill_pending_tokens_get --
-- A batch's issued tokens, in TOME's order.
SELECT position, token_ct FROM refill_pending_tokens WHERE batch_id = %(batch_id)s ORDER BY position;

-- refill_pending_tokens_delete --
-- The batch's pairs are in token_pool (same transaction): its pending tokens are no longer needed.
DELETE FROM refill_pending_tokens WHERE batch_id = %(batch_id)s;

-- refill_batch_lock_open --
-- First statement of the transaction that stores a batch's pairs: locks its journal row. No row: the
-- batch is done already (a card request stored its own TOME-fallback pair first, or the refill did).
-- Both writers take this row before the pairs' unique index entries, so they never deadlock on them and
-- exactly one of them stores the pair.
SELECT 1 FROM refill_batches WHERE batch_id = %(batch_id)s AND state <> 'done' FOR UPDATE;

-- refill_batch_mark_done --
-- issued -> done, in the transaction that loaded the batch's pairs. For a service intent it is the first
-- statement of the request's storing transaction (row count 0: the refill took the pair meanwhile).
UPDATE refill_batches SET state = 'done', done_at = now(), done_by = %(run_id)s, added = %(added)s
WHERE batch_id = %(batch_id)s AND state <> 'done';

-- pool_sample_insert --
-- A consumption sample for the forecast, at most one per pool per min_interval_s (keeps the table a few
-- rows per hour however often health is checked).
INSERT INTO pool_level_samples (pool, consumed, available)
SELECT %(pool)s, %(consumed)s, %(available)s
WHERE NOT EXISTS (
    SELECT 1 FROM pool_level_samples
    WHERE pool = %(pool)s AND sampled_at > now() - make_interval(secs => %(min_interval_s)s)
)
ON CONFLICT DO NOTHING;

-- pool_sample_span --
-- The oldest and newest consumption samples inside the window: the consumption rate between them.
-- Two index probes on the primary key, whatever the number of samples.
SELECT first.consumed AS first_consumed, last.consumed AS last_consumed,
       extract(epoch FROM last.sampled_at - first.sampled_at)::float8 AS seconds
FROM (SELECT consumed, sampled_at FROM pool_level_samples
      WHERE pool = %(pool)s AND sampled_at >= now() - make_interval(secs => %(window_s)s)
      ORDER BY sampled_at LIMIT 1) AS first,
     (SELECT consumed, sampled_at FROM pool_level_samples
      WHERE pool = %(pool)s
      ORDER BY sampled_at DESC LIMIT 1) AS last;

-- pool_samples_prune --
-- Samples older than the retention are of no use to any forecast.
DELETE FROM pool_level_samples WHERE pool = %(pool)s AND sampled_at < now() - make_interval(secs => %(keep_s)s);

-- pool_alert_claim --
-- The alert channels that must be told the pool's state, each claimed for this checker for %(claim_s)s
-- seconds: a channel whose last delivered state differs and that no live claim holds. A channel's first row
-- is claimed at once, unless the pool is OK: a healthy pool checked for the first time has nothing to
-- tell, and is recorded as told. Each claim comes back with the state the channel last delivered (NULL:
-- none); a row recorded without a claim comes back with claimed = false.
-- Why one upsert: it decides and claims in one statement, so of concurrent checkers exactly one gets each
-- channel (the others' DO UPDATE finds the claim, its WHERE fails, and nothing comes back for them).
INSERT INTO pool_alert_deliveries AS d (pool, channel, status, delivered_at, sending, sending_until)
SELECT %(pool)s, channel,
       CASE WHEN %(status)s = 'OK' THEN 'OK' END,
       CASE WHEN %(status)s = 'OK' THEN now() END,
       CASE WHEN %(status)s <> 'OK' THEN %(status)s END,
       CASE WHEN %(status)s <> 'OK' THEN now() + make_interval(secs => %(claim_s)s) END
FROM unnest(%(channels)s::text[]) AS channel
ON CONFLICT (pool, channel) DO UPDATE
SET sending = %(status)s, sending_until = now() + make_interval(secs => %(claim_s)s)
WHERE d.status IS DISTINCT FROM %(status)s AND (d.sending_until IS NULL OR d.sending_until <= now())
RETURNING d.channel, d.status AS previous_status, d.sending IS NOT NULL AS claimed;

-- pool_alert_finish --
-- After sending: each channel that accepted the alert records the state as delivered, and every claim of
-- this checker is released, so a channel that failed is tried again at the next check. Only claims on
-- %(status)s match: a lapsed claim another checker took over for a newer state is left to that checker.
UPDATE pool_alert_deliveries
SET status = CASE WHEN channel = ANY(%(delivered)s::text[]) THEN sending ELSE status END,
    delivered_at = CASE WHEN channel = ANY(%(delivered)s::text[]) THEN now() ELSE delivered_at END,
    sending = NULL, sending_until = NULL
WHERE pool = %(pool)s AND channel = ANY(%(channels)s::text[]) AND sending = %(status)s;

-- ===== Card programs: the registered names, their refill targets and TOME namespaces (tokenpool program) =====
-- A handful of rows. The service caches them (tokenpool.programs.catalog); the refill, the worker and the
-- Lambda read them at each run or poll; only the owner writes them (db/grants.sql).

-- programs_registered --
-- Every registered (not removed) program: the service's snapshot, the refill of every program, the worker's
-- poll. Why all of them in one statement: a few rows, and one round trip answers every name until the TTL.
SELECT name, refill_target, ns1, ns2, created_at, updated_at, removed_at
FROM programs
WHERE removed_at IS NULL
ORDER BY name;

-- programs_all --
-- Every program ever registered, removed ones included (tokenpool program list --all).
SELECT name, refill_target, ns1, ns2, created_at, updated_at, removed_at
FROM programs
ORDER BY name;

-- program_get --
-- One program by name, removed or not (a refill run reads its target and namespaces when it starts).
SELECT name, refill_target, ns1, ns2, created_at, updated_at, removed_at
FROM programs
WHERE name = %(name)s;

-- program_insert --
-- Register a new program; nothing when the name has a row already (registered, or removed: see
-- program_reregister).
INSERT INTO programs (name, refill_target, ns1, ns2)
VALUES (%(name)s, %(refill_target)s, %(ns1)s, %(ns2)s)
ON CONFLICT (name) DO NOTHING
RETURNING name, refill_target, ns1, ns2, created_at, updated_at, removed_at;

-- program_reregister --
-- Register a removed program again, with the target and namespaces given now. created_at stays: its cards
-- and pairs are older than the new registration.
UPDATE programs
SET refill_target = %(refill_target)s, ns1 = %(ns1)s, ns2 = %(ns2)s, removed_at = NULL, updated_at = now()
WHERE name = %(name)s AND removed_at IS NOT NULL
RETURNING name, refill_target, ns1, ns2, created_at, updated_at, removed_at;

-- program_update --
-- Change a registered program's target and namespaces (program set). A column whose set_* flag is false
-- keeps its value; set to NULL, it follows the settings again.
UPDATE programs
SET refill_target = CASE WHEN %(set_target)s THEN %(refill_target)s::int ELSE refill_target END,
    ns1 = CASE WHEN %(set_ns1)s THEN %(ns1)s::text ELSE ns1 END,
    ns2 = CASE WHEN %(set_ns2)s THEN %(ns2)s::text ELSE ns2 END,
    updated_at = now()
WHERE name = %(name)s AND removed_at IS NULL
RETURNING name, refill_target, ns1, ns2, created_at, updated_at, removed_at;

-- program_lock --
-- First statement of a removal: locks the program's row, so two removals (or a removal and a `set`) do not
-- interleave between the check of its pairs and the removal itself.
SELECT name FROM programs WHERE name = %(name)s AND removed_at IS NULL FOR UPDATE;

-- program_live_pairs --
-- What a removal would strand: the pool's AVAILABLE and RESERVED pairs (from the trigger-kept counters, not
-- a scan) and its refill batches TOME issued that are not loaded yet.
SELECT coalesce((SELECT sum(n) FROM token_pool_counts WHERE pool = %(name)s AND status = 'AVAILABLE'), 0)::bigint
           AS available,
       coalesce((SELECT sum(n) FROM token_pool_counts WHERE pool = %(name)s AND status = 'RESERVED'), 0)::bigint
           AS reserved,
       (SELECT count(*) FROM refill_batches WHERE pool = %(name)s AND state <> 'done')::bigint
           AS unfinished_batches;

-- program_remove --
-- The soft removal: the row stays (cards name it; `program add` brings it back), the program is refused from
-- now on (the service within its cache TTL).
UPDATE programs SET removed_at = now(), updated_at = now()
WHERE name = %(name)s AND removed_at IS NULL;

-- program_pair_counts --
-- Pairs by status of every program, in one statement over the trigger-kept counters (program list).
SELECT p.name AS pool, c.status, sum(c.n)::bigint AS n
FROM programs p
JOIN token_pool_counts c ON c.pool = p.name
GROUP BY p.name, c.status;

-- ===== retention and bloat watch (tokenpool db prune, the worker; docs/pool.md "Retention and bloat") =====
-- Never token_pool (USED pairs answer detokenize; the other statuses are live or quarantined) and never
-- an unfinished refill batch (the crash-safety journal). Each delete takes at most %(limit)s rows, the
-- oldest first through the table's timestamp index, in its own short transaction; the caller repeats
-- it until a chunk comes back short. Why SKIP LOCKED: two pruners at once (two workers, a worker and
-- the CLI) share the rows instead of waiting on each other, and neither can deadlock.
-- Why a CTE and not `key IN (SELECT ... LIMIT n)`: the CTE is evaluated once, so a chunk never deletes
-- more than its limit (see reserve). DELETE ... USING and SKIP LOCKED work on CockroachDB too.

-- retention_now --
-- The database's clock: every cutoff of one prune is computed from it once, so a dry run and the
-- prune that follows it judge rows by the same clock, and the chunks of one prune by the same cutoff.
SELECT now();

-- retention_count_idempotency_keys --
-- Idempotency-Keys a prune would delete (dry run).
SELECT count(*) FROM idempotency_keys WHERE created_at < %(cutoff)s;

-- retention_delete_idempotency_keys --
-- A chunk of Idempotency-Keys past their retention. Nothing references a key; its card stays.
WITH doomed AS (
    SELECT api_key_id, idempotency_key FROM idempotency_keys
    WHERE created_at < %(cutoff)s
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM idempotency_keys AS k
USING doomed
WHERE k.api_key_id = doomed.api_key_id AND k.idempotency_key = doomed.idempotency_key;

-- retention_count_detokenize_audit --
-- Detokenize audit rows a prune would delete (dry run); at most: the prune stops at the first row, in
-- chain order, that is not older than the cutoff.
SELECT count(*) FROM detokenize_audit WHERE at < %(cutoff)s;

-- retention_delete_detokenize_audit --
-- A chunk of audit rows past their retention (at least 12 months: PCI DSS 10.5.1), the oldest end of
-- the hash chain; the function moves the chain's prune watermark with them and returns the row count.
SELECT tokenpool_prune_detokenize_audit(%(cutoff)s::timestamptz, %(limit)s::integer);

-- retention_count_refill_runs --
-- Finished refill runs a prune would delete (dry run).
SELECT count(*) FROM refill_runs WHERE finished_at < %(cutoff)s;

-- retention_delete_refill_runs --
-- A chunk of finished refill runs past their retention. A run still 'running' (finished_at NULL: in
-- progress, or the record of a crash) never matches. refill_batches.run_id is no foreign key on purpose.
WITH doomed AS (
    SELECT run_id FROM refill_runs
    WHERE finished_at < %(cutoff)s
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM refill_runs AS r
USING doomed
WHERE r.run_id = doomed.run_id;

-- retention_count_refill_batches --
-- Done refill batches a prune would delete (dry run).
SELECT count(*) FROM refill_batches b
WHERE b.state = 'done' AND b.done_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM refill_pending_tokens p WHERE p.batch_id = b.batch_id);

-- retention_delete_refill_batches --
-- A chunk of done batches past their retention; an unfinished batch (intent, issued) never matches.
-- refill_pending_tokens references refill_batches: a done batch's tokens are deleted in the transaction
-- that marks it done, but a batch that still has any is skipped rather than failing the whole chunk.
WITH doomed AS (
    SELECT b.batch_id FROM refill_batches b
    WHERE b.state = 'done' AND b.done_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM refill_pending_tokens p WHERE p.batch_id = b.batch_id)
    ORDER BY b.done_at
    LIMIT %(limit)s
    FOR UPDATE OF b SKIP LOCKED
)
DELETE FROM refill_batches AS b
USING doomed
WHERE b.batch_id = doomed.batch_id;

-- db_oldest_transaction_age --
-- Seconds since the oldest open transaction in this database began (0 when none): one transaction left
-- open holds back every VACUUM, and the claim slows as dead entries pile up (docs/pool.md). Client
-- backends only: an autovacuum worker's long transaction does not hold vacuum back. Sees other roles'
-- sessions only with pg_read_all_stats (or pg_monitor); PostgreSQL only (CockroachDB: crdb_internal).
SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0)::float8
FROM pg_stat_activity
WHERE datname = current_database()
  AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
  AND xact_start IS NOT NULL;

-- ===== The vault: wrapped keys, re-encryption (tokenpool keys ...; docs/security.md) =====

-- vault_keys_get --
-- Every wrapped key (a handful of rows); the process unwraps them with the key provider.
SELECT purpose, version, wrapped, kek_id FROM vault_keys ORDER BY purpose, version;

-- vault_key_insert --
-- The first keys, created by whichever process needs them first; a concurrent first start inserts nothing.
INSERT INTO vault_keys (purpose, version, wrapped, kek_id)
VALUES (%(purpose)s, %(version)s, %(wrapped)s, %(kek_id)s)
ON CONFLICT (purpose, version) DO NOTHING;

-- vault_data_key_next --
-- A new data-key version (keys rotate): the next number, in one statement. Two rotations at once: the
-- second fails on the primary key and is retried by the operator, never two keys under one version.
INSERT INTO vault_keys (purpose, version, wrapped, kek_id)
SELECT 'data', coalesce(max(version), 0) + 1, %(wrapped)s, %(kek_id)s FROM vault_keys WHERE purpose = 'data'
RETURNING version;

-- vault_key_rewrap --
-- One key re-wrapped under the current key-encryption key; compare-and-set on the old wrapping.
UPDATE vault_keys SET wrapped = %(wrapped)s, kek_id = %(kek_id)s
WHERE purpose = %(purpose)s AND version = %(version)s AND wrapped = %(old_wrapped)s;

-- vault_version_counts --
-- Sealed tokens per table and key version (keys status): a scan of token_pool (an operator command; an
-- index on key_version would slow every bulk load), an index-only scan of learned_pairs, and
-- refill_pending_tokens holds a few batches at most.
SELECT 'token_pool' AS table_name, key_version, count(*)::bigint AS rows FROM token_pool GROUP BY key_version
UNION ALL
SELECT 'learned_pairs', key_version, count(*)::bigint FROM learned_pairs GROUP BY key_version
UNION ALL
SELECT 'refill_pending_tokens', key_version, count(*)::bigint FROM refill_pending_tokens GROUP BY key_version
ORDER BY 1, 2;

-- reencrypt_token_pool_page --
-- The next page of pairs sealed under an older key version, by id (keyset on the primary key: resumable,
-- no OFFSET, one pass over the table for the whole run). No lock: the write below is a compare-and-set.
SELECT id, pool, external_ref, token_ct FROM token_pool
WHERE id > %(after_id)s AND key_version = %(key_version)s
ORDER BY id
LIMIT %(limit)s;

-- reencrypt_token_pool_write --
-- The page re-sealed under the primary key. Compare-and-set on the old ciphertext: a row changed since
-- the page was read keeps its value (the next run picks it up). Short: a page is one statement.
UPDATE token_pool AS t
SET token_ct = u.new_ct, key_version = %(key_version)s
FROM unnest(%(ids)b::bigint[], %(old_cts)b::bytea[], %(new_cts)b::bytea[]) AS u(id, old_ct, new_ct)
WHERE t.id = u.id AND t.token_ct = u.old_ct;

-- reencrypt_learned_pairs_page --
-- As reencrypt_token_pool_page, for pairs learned from TOME (keyset on external_ref).
SELECT external_ref, token_ct FROM learned_pairs
WHERE key_version = %(key_version)s AND external_ref > %(after_ref)s
ORDER BY key_version, external_ref
LIMIT %(limit)s;

-- reencrypt_learned_pairs_write --
-- As reencrypt_token_pool_write.
UPDATE learned_pairs AS t
SET token_ct = u.new_ct, key_version = %(key_version)s
FROM unnest(%(refs)b::text[], %(old_cts)b::bytea[], %(new_cts)b::bytea[]) AS u(external_ref, old_ct, new_ct)
WHERE t.external_ref = u.external_ref AND t.token_ct = u.old_ct;

-- reencrypt_pending_tokens_page --
-- As reencrypt_token_pool_page, for the refill journal's issued tokens (a few batches at most).
SELECT batch_id, position, token_ct FROM refill_pending_tokens
WHERE key_version = %(key_version)s
LIMIT %(limit)s;

-- reencrypt_pending_tokens_write --
-- As reencrypt_token_pool_write.
UPDATE refill_pending_tokens AS t
SET token_ct = u.new_ct, key_version = %(key_version)s
FROM unnest(%(batch_ids)b::uuid[], %(positions)b::int[], %(old_cts)b::bytea[], %(new_cts)b::bytea[])
     AS u(batch_id, position, old_ct, new_ct)
WHERE t.batch_id = u.batch_id AND t.position = u.position AND t.token_ct = u.old_ct;

-- restore_epoch_read --
-- The restore epoch (migration 0013): one row.
SELECT epoch FROM restore_epoch;

-- restore_epoch_advance --
-- One step forward, unless the database's epoch is older than the one kept outside it (a restore): NULL.
SELECT tokenpool_advance_restore_epoch(%(known)s);

-- restore_fence_lock --
-- The fence runs alone: no claim, commit, load or refill step between its reads and its writes.
LOCK TABLE token_pool, refill_batches, restore_fences, restore_epoch IN SHARE ROW EXCLUSIVE MODE;

-- restore_fence_latest_here --
-- The fence recorded on this very server run (a restored database runs on a server started after the
-- restore, so a fence recorded since that start is this restore's).
SELECT id, fenced_at, fenced_by, available + reserved FROM restore_fences
WHERE postmaster_started_at = pg_postmaster_start_time()
ORDER BY id DESC LIMIT 1;

-- restore_fence_system_identifier --
-- Needs the right to read pg_control (a superuser, or a grant): NULL otherwise (read in a savepoint).
SELECT (pg_control_system()).system_identifier::text, (pg_control_checkpoint()).timeline_id;

-- restore_fence_set_epoch --
UPDATE restore_epoch SET epoch = %(epoch)s WHERE epoch <= %(epoch)s RETURNING epoch;

-- restore_fence_insert --
INSERT INTO restore_fences (operator, available, reserved, refill_batches, system_identifier, timeline_id,
                            postmaster_started_at, wal_lsn, epoch)
VALUES (%(operator)s, 0, 0, 0, %(system_identifier)s, %(timeline_id)s, pg_postmaster_start_time(),
        CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, %(epoch)s)
RETURNING id, fenced_at;

-- restore_fence_quarantine --
-- Every pair a card may have taken after the backup point: never handed out again (EXPIRED, marked with
-- the fence; the status machine allows AVAILABLE -> EXPIRED only with a fence id, migration 0013).
UPDATE token_pool SET status = 'EXPIRED', expired_at = now(), restore_fence_id = %(fence_id)s
WHERE status = %(status)s;

-- restore_fence_close_batches --
-- Unfinished refill batches: their tokens may have been loaded and handed out after the backup point, so
-- the refill must not load them again. Closed with nothing added; their journaled tokens deleted.
WITH closed AS (
    UPDATE refill_batches SET state = 'done', done_at = now(), added = 0
    WHERE state <> 'done'
    RETURNING batch_id
), dropped AS (
    DELETE FROM refill_pending_tokens WHERE batch_id IN (SELECT batch_id FROM closed)
)
SELECT count(*) FROM closed;

-- restore_fence_record_counts --
UPDATE restore_fences SET available = %(available)s, reserved = %(reserved)s, refill_batches = %(batches)s
WHERE id = %(fence_id)s;
