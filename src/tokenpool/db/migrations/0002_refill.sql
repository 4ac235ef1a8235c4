-- The refill job: its lease, its crash-safe batch journal, its run history, the consumption
-- samples behind the forecast and the last alerted health state per pool.

-- One row per pool: who runs its refill and until when. A row lock-free lease (no advisory lock) so
-- the same SQL works on CockroachDB. A runner that dies stops renewing; the row lapses at expires_at.
CREATE TABLE refill_leases (
    pool        text        PRIMARY KEY,
    holder      text        NOT NULL,              -- host:pid:uuid of the runner
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);


-- Every refill run, whatever its end. outcome 'running' is the state while it runs; a run killed
-- hard stays 'running' forever (its finished_at stays NULL), which is itself the record of the crash.
CREATE TABLE refill_runs (
    run_id        uuid        PRIMARY KEY,
    pool          text        NOT NULL,
    trigger       text        NOT NULL,            -- cli, lambda, worker:schedule, worker:watermark
    holder        text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    target        int,
    requested     int         NOT NULL DEFAULT 0,  -- pairs this run decided to add
    recovered     int         NOT NULL DEFAULT 0,  -- pairs loaded from batches an earlier run left unfinished
    added         int         NOT NULL DEFAULT 0,  -- pairs loaded by this run, recovered ones included
    tome_requests int         NOT NULL DEFAULT 0,  -- HTTP attempts sent to TOME by this run
    outcome       text        NOT NULL DEFAULT 'running',
    error         text,
    CONSTRAINT refill_runs_outcome_known CHECK (outcome IN
        ('running', 'succeeded', 'failed', 'skipped_lease_held', 'stopped', 'lease_lost'))
);

CREATE INDEX refill_runs_pool_started_idx ON refill_runs (pool, started_at DESC);


-- The batch journal. A batch is recorded ('intent') BEFORE TOME is asked to issue its tokens, with
-- batch_id as the Idempotency-Key; the issued tokens are recorded ('issued', rows in
-- refill_pending_tokens) BEFORE they are tokenized; the pairs are loaded and the batch marked 'done'
-- in one transaction. Whatever step a crash interrupts, the next run can finish the batch.
CREATE TABLE refill_batches (
    batch_id   uuid        PRIMARY KEY,
    pool       text        NOT NULL,
    count      int         NOT NULL CHECK (count > 0),
    run_id     uuid        NOT NULL,               -- the run that created it (not a FK: runs may be pruned)
    state      text        NOT NULL DEFAULT 'intent',
    created_at timestamptz NOT NULL DEFAULT now(),
    issued_at  timestamptz,
    done_at    timestamptz,
    done_by    uuid,                               -- the run that loaded it (another one after a crash)
    added      int,
    CONSTRAINT refill_batches_state_known CHECK (state IN ('intent', 'issued', 'done'))
);

-- What the next run must finish first: few rows, found without reading the done ones.
CREATE INDEX refill_batches_unfinished_idx ON refill_batches (pool, created_at) WHERE state <> 'done';


-- Internal tokens TOME issued for a batch, kept until their pairs are in token_pool (then deleted, in
-- the same transaction). position keeps TOME's order, so a replayed issue maps onto the same rows.
CREATE TABLE refill_pending_tokens (
    batch_id       uuid NOT NULL REFERENCES refill_batches (batch_id),
    position       int  NOT NULL,
    internal_token text NOT NULL,
    PRIMARY KEY (batch_id, position)
);


-- Consumption samples for the forecast: the pool's consumed counter (reserved + used + expired, read
-- from the trigger-kept counts, not from token_pool) at a point in time. A few rows per hour per pool.
CREATE TABLE pool_level_samples (
    pool       text        NOT NULL,
    sampled_at timestamptz NOT NULL DEFAULT now(),
    consumed   bigint      NOT NULL,
    available  bigint      NOT NULL,
    PRIMARY KEY (pool, sampled_at)
);


-- The health state last alerted per pool: an alert goes out on a change of state, not on every check.
CREATE TABLE pool_alert_state (
    pool       text        PRIMARY KEY,
    status     text        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pool_alert_state_status_known CHECK (status IN ('OK', 'LOW', 'CRITICAL', 'EMPTY'))
);
