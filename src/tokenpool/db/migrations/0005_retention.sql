-- Retention (`tokenpool db prune`, and the worker once a day): an index on the timestamp each prune
-- deletes by, so a chunk finds its oldest rows with an index range scan instead of reading the whole
-- table once per chunk. detokenize_audit has one already (detokenize_audit_at_idx). token_pool is
-- never pruned, and pool_level_samples is pruned by its primary key (pool, sampled_at).
--
-- Why IF NOT EXISTS: migrate.py runs a file in one transaction, where CREATE INDEX CONCURRENTLY is not
-- allowed, and a plain build blocks writes to its table while it runs. On a large idempotency_keys (a
-- row per card created with a key) an operator can build the index first, without blocking card
-- creation, with `CREATE INDEX CONCURRENTLY` under the same name and definition; this file then skips it.

CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx ON idempotency_keys (created_at);

-- A run still 'running' has no finished_at and is never pruned (it is the record of a crash).
CREATE INDEX IF NOT EXISTS refill_runs_finished_idx ON refill_runs (finished_at);

-- Only done batches are ever pruned; unfinished ones have refill_batches_unfinished_idx.
CREATE INDEX IF NOT EXISTS refill_batches_done_idx ON refill_batches (done_at) WHERE state = 'done';
