-- Card programs are registered: a card, a reservation, a pool request or a refill for a name that is not
-- in `programs` is refused (the service answers 422 UNKNOWN_PROGRAM and neither creates a pool nor asks
-- TOME). Before this, any well-formed name was a program: a card on a new name made a new pool on the fly
-- through the TOME fallback, which is how a fuzzer left hundreds of pools behind.

-- One row per program, for good: `tokenpool program remove` sets removed_at (a soft removal) because
-- cards keep naming their program and its pairs stay in token_pool, answering detokenize; `program add`
-- of a removed name registers it again. The app role only reads this table (db/grants.sql); the owner
-- writes it (`tokenpool program add|set|remove`, `db upgrade`).
-- Why no foreign key from token_pool.pool: the pool table takes millions of bulk-loaded rows, a key would
-- add a probe per row and make a removal lock against it; the check is the service's and the refill's.
CREATE TABLE programs (
    name          text        PRIMARY KEY,
    -- NULL: follow the settings of the process that uses the program (TOKENPOOL_REFILL_TARGET,
    -- TOKENPOOL_TOME_NS1 / _NS2), as every program registered below does.
    refill_target int,
    ns1           text,
    ns2           text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    removed_at    timestamptz,
    -- The API's program pattern and TOME's namespace pattern (tokenpool.programs.model.NAME_PATTERN).
    CONSTRAINT programs_name_valid CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    CONSTRAINT programs_ns1_valid CHECK (ns1 ~ '^[A-Za-z0-9_.-]{1,64}$'),
    CONSTRAINT programs_ns2_valid CHECK (ns2 ~ '^[A-Za-z0-9_.-]{1,64}$'),
    CONSTRAINT programs_target_valid CHECK (refill_target >= 0)
);

-- Existing deployments keep working: `default`, and every pool that holds pairs (read from the exact,
-- trigger-kept counters rather than a scan of token_pool; a pool never loses its pairs, so "ever held"
-- and "holds" are the same). A name the API could never have taken (only `pool seed --pool` accepted any)
-- is left out: the CHECK above would refuse it.
-- Why target 0 for some: a pool that holds no live pair and that no refill, worker or health check ever
-- touched only ever got pairs from the TOME fallback of cards on a new name (the fuzzer's pools are such).
-- Registered with the settings' target, the refill of every program would now fill each of them; target
-- 0 keeps them exactly as they were (cards still work, through the fallback) at no TOME cost.
-- `tokenpool program list` shows them; `program remove` or `program set --target` decides (runbook).
INSERT INTO programs (name, refill_target)
SELECT c.pool,
       CASE WHEN sum(c.n) FILTER (WHERE c.status IN ('AVAILABLE', 'RESERVED')) > 0
                 OR c.pool = 'default'
                 OR EXISTS (SELECT 1 FROM refill_runs r WHERE r.pool = c.pool)
                 OR EXISTS (SELECT 1 FROM refill_batches b WHERE b.pool = c.pool AND b.origin = 'refill')
                 OR EXISTS (SELECT 1 FROM pool_alert_state a WHERE a.pool = c.pool)
            THEN NULL ELSE 0 END
FROM token_pool_counts c
WHERE c.pool ~ '^[A-Za-z0-9_.-]{1,64}$'
GROUP BY c.pool
HAVING sum(c.n) > 0;

INSERT INTO programs (name) VALUES ('default') ON CONFLICT (name) DO NOTHING;


-- The TOME namespaces a journaled batch was issued (and is to be tokenized) on. A program's namespaces may
-- change (`program set --ns1`) while one of its batches is unfinished; replaying the issue's
-- Idempotency-Key on the new namespace would issue new tokens and lose the first ones. NULL (batches
-- journaled before this migration): the program's namespaces, as then.
ALTER TABLE refill_batches ADD COLUMN ns1 text, ADD COLUMN ns2 text;
