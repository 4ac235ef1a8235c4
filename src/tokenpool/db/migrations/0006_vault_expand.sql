-- Field encryption of internal tokens, first of three migrations (expand, seal, contract): docs/security.md.
--
-- Every stored internal token becomes a ciphertext (AES-256-GCM, token_ct) naming its data-key version
-- (key_version), and, where a token is a lookup or uniqueness key, an HMAC-SHA-256 digest (token_digest).
-- The data keys and the digest key are stored here only wrapped by the key-encryption key of a key
-- provider (a local key file or AWS KMS), never in clear. This migration adds the new columns beside the
-- clear ones; 0007 encrypts rows written before it (in the application: the keys never reach SQL); 0008
-- drops the clear columns.

CREATE TABLE vault_keys (
    purpose    text        NOT NULL,
    version    int         NOT NULL,
    wrapped    bytea       NOT NULL,               -- the key, encrypted by the key-encryption key
    kek_id     text        NOT NULL,               -- which key-encryption key wrapped it
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (purpose, version),
    CONSTRAINT vault_keys_purpose_known CHECK (purpose IN ('data', 'digest')),
    CONSTRAINT vault_keys_version_positive CHECK (version > 0)
);

ALTER TABLE token_pool
    ADD COLUMN token_digest bytea,
    ADD COLUMN token_ct     bytea,
    ADD COLUMN key_version  int,
    ALTER COLUMN internal_token DROP NOT NULL;

-- The card -> pair foreign key moves from the clear token to the digest (0008).
ALTER TABLE cards
    DROP CONSTRAINT cards_pair_fk,
    ADD COLUMN token_digest bytea,
    ALTER COLUMN internal_token DROP NOT NULL;

ALTER TABLE learned_pairs
    ADD COLUMN token_ct    bytea,
    ADD COLUMN key_version int,
    ALTER COLUMN internal_token DROP NOT NULL;

ALTER TABLE refill_pending_tokens
    ADD COLUMN token_ct    bytea,
    ADD COLUMN key_version int,
    ALTER COLUMN internal_token DROP NOT NULL;
