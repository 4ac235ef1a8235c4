-- The card and detokenize service: API keys, cards, idempotency keys, pairs learned from TOME,
-- the detokenize audit trail and runtime configuration (the canary share).

-- API keys: only a SHA-256 of the key is stored. The keys are 256-bit random strings, so a fast hash
-- is enough (a slow hash protects guessable secrets; nobody can enumerate 2^256 candidates), and it
-- lets every request check its key with one index probe. A revoked key keeps its row: audit rows
-- name it.
CREATE TABLE api_keys (
    api_key_id uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text        NOT NULL,
    key_hash   bytea       NOT NULL,
    scopes     text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT api_keys_name_key UNIQUE (name),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_hash_is_sha256 CHECK (octet_length(key_hash) = 32)
);


-- A card holds both tokens of its pair. The foreign key to token_pool makes "a card without its pair"
-- impossible whatever the code does: the pair row (claimed from the pool, or inserted as USED when it
-- came from TOME) must exist in the same transaction. UNIQUE (internal_token): one card per pair.
CREATE TABLE cards (
    card_id        uuid        PRIMARY KEY,
    program        text        NOT NULL,
    customer_ref   text        NOT NULL,
    internal_token text        NOT NULL,
    external_ref   text        NOT NULL,
    token_source   text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cards_internal_token_key UNIQUE (internal_token),
    CONSTRAINT cards_token_source_known CHECK (token_source IN ('pool', 'tome')),
    CONSTRAINT cards_pair_fk FOREIGN KEY (internal_token) REFERENCES token_pool (internal_token)
);


-- Idempotency-Key of POST /v1/cards, per API key. Inserted first in the card's own transaction: a
-- concurrent retry's INSERT waits on the unique index until that transaction ends, then sees the row
-- (and returns the same card) or, after a rollback, takes the key itself. The foreign key to the card
-- is deferred because the card is inserted after the key, in the same transaction.
CREATE TABLE idempotency_keys (
    api_key_id      uuid        NOT NULL REFERENCES api_keys (api_key_id),
    idempotency_key text        NOT NULL,
    request_hash    bytea       NOT NULL,
    card_id         uuid        NOT NULL REFERENCES cards (card_id) DEFERRABLE INITIALLY DEFERRED,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, idempotency_key)
);


-- Pairs that detokenize learned from TOME NS2 and that are not in token_pool (cards issued before
-- tokenpool existed). Kept apart from token_pool: they belong to no pool, batch or status, and would
-- distort its counts. Tokens are deterministic, so an entry never goes stale.
CREATE TABLE learned_pairs (
    external_ref   text        PRIMARY KEY,
    internal_token text        NOT NULL,
    learned_at     timestamptz NOT NULL DEFAULT now()
);


-- One row per detokenize request (PCI DSS tokenization guidelines; DSS 10.2.2: who, what, when,
-- outcome, origin, affected resources). References are stored as SHA-256 hex digests, never in clear.
CREATE TABLE detokenize_audit (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    api_key_name   text        NOT NULL,
    correlation_id text        NOT NULL,
    client_addr    text,
    outcome        text        NOT NULL,
    ref_count      int         NOT NULL,
    from_db        int         NOT NULL,
    from_tome      int         NOT NULL,
    unresolved     int         NOT NULL,
    ref_hashes     text[]      NOT NULL,
    CONSTRAINT detokenize_audit_outcome_known CHECK (outcome IN ('success', 'partial', 'failure'))
);

CREATE INDEX detokenize_audit_at_idx ON detokenize_audit (at);


-- Settings an operator changes at run time without a restart (the canary share); every instance
-- rereads them after a few seconds.
CREATE TABLE runtime_config (
    key        text        PRIMARY KEY,
    value      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
