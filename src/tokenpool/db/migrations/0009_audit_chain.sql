-- detokenize_audit becomes the audit of every token read (PCI DSS 10.2, 10.3): detokenize requests,
-- card reads that show the whole internal token, and refused attempts at either. Each row is sealed
-- in a hash chain kept by a trigger, so a deleted, changed or re-linked row is found by
-- `tokenpool audit verify`. The canonical row encoding is written out in tokenpool/audit/chain.py; the
-- SQL below must stay byte-for-byte the same (tests/integration/test_audit_chain.py checks it).
-- Needs PostgreSQL 14+ (extract() returns numeric, so microseconds since the epoch are exact).

-- Why the table is locked first: every ALTER below takes ACCESS EXCLUSIVE anyway; taking it at once
-- means no row can be written between the chaining of the old rows and the trigger's creation.
LOCK TABLE detokenize_audit IN ACCESS EXCLUSIVE MODE;

ALTER TABLE detokenize_audit
    ADD COLUMN seq         bigint,
    ADD COLUMN prev_hash   bytea,
    ADD COLUMN row_hash    bytea,
    ADD COLUMN event       text NOT NULL DEFAULT 'detokenize',
    ADD COLUMN reason      text,
    ADD COLUMN card_id     uuid,
    -- HMAC-SHA-256 hex digests of the refs, computed by the service with the vault's digest key. Rows
    -- written before this migration keep ref_hashes instead: plain SHA-256, which anyone can confirm
    -- for a guessed ref. Exactly one of the two is set, so the kind of digest is never in doubt.
    ADD COLUMN ref_digests text[],
    ALTER COLUMN api_key_name DROP NOT NULL,  -- an attempt with an unknown key, or none
    ALTER COLUMN ref_hashes DROP NOT NULL,
    ALTER COLUMN ref_count SET DEFAULT 0,
    ALTER COLUMN from_db SET DEFAULT 0,
    ALTER COLUMN from_tome SET DEFAULT 0,
    ALTER COLUMN unresolved SET DEFAULT 0,
    DROP CONSTRAINT detokenize_audit_outcome_known,
    ADD CONSTRAINT detokenize_audit_outcome_known
        CHECK (outcome IN ('success', 'partial', 'failure', 'refused')),
    ADD CONSTRAINT detokenize_audit_event_known CHECK (event IN ('detokenize', 'card_read')),
    -- reason: the problem code of a refused (or failed) attempt; bounded, so a row stays small.
    ADD CONSTRAINT detokenize_audit_reason_is_a_code CHECK (reason ~ '^[A-Z][A-Z0-9_]{0,63}$'),
    ADD CONSTRAINT detokenize_audit_refusal_has_reason CHECK (outcome <> 'refused' OR reason IS NOT NULL),
    ADD CONSTRAINT detokenize_audit_one_digest_kind CHECK ((ref_hashes IS NULL) <> (ref_digests IS NULL)),
    -- The chain encodes an array as its elements in order: a NULL element or a second dimension
    -- would make two different arrays encode alike.
    ADD CONSTRAINT detokenize_audit_flat_ref_hashes
        CHECK (coalesce(array_ndims(ref_hashes), 1) = 1 AND array_position(ref_hashes, NULL) IS NULL),
    ADD CONSTRAINT detokenize_audit_flat_ref_digests
        CHECK (coalesce(array_ndims(ref_digests), 1) = 1 AND array_position(ref_digests, NULL) IS NULL);

-- New rows say what they are; the default above only labelled the old ones.
ALTER TABLE detokenize_audit ALTER COLUMN event DROP DEFAULT;


-- The canonical encoding (chain.py: frame, encode_record). A field is 0x00 when NULL, otherwise 0x01,
-- its length as 4 bytes big-endian, and its bytes: text in UTF-8, integers in decimal, `at` as
-- microseconds since 1970-01-01 UTC in decimal, a uuid in its lowercase text form, an array as the
-- concatenation of (4-byte length, UTF-8 bytes) of each element. Length prefixes make it unambiguous.
CREATE FUNCTION tokenpool_audit_frame(value bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN value IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || int4send(octet_length(value)) || value END
$$;

CREATE FUNCTION tokenpool_audit_text(value text) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT tokenpool_audit_frame(convert_to(value, 'UTF8'))
$$;

CREATE FUNCTION tokenpool_audit_array(value text[]) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT tokenpool_audit_frame(CASE WHEN value IS NULL THEN NULL ELSE coalesce(
        (SELECT string_agg(int4send(octet_length(convert_to(e, 'UTF8'))) || convert_to(e, 'UTF8'), ''::bytea
                           ORDER BY n)
         FROM unnest(value) WITH ORDINALITY AS element (e, n)),
        ''::bytea) END)
$$;

-- row_hash = SHA-256(prev_hash || encoding of every stored value but the two hashes).
CREATE FUNCTION tokenpool_detokenize_audit_row_hash(r detokenize_audit) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(
        r.prev_hash
        || tokenpool_audit_text('tokenpool.detokenize_audit.v1')
        || tokenpool_audit_text(r.seq::text)
        || tokenpool_audit_text(r.id::text)
        || tokenpool_audit_text((extract(epoch FROM r.at) * 1000000)::bigint::text)
        || tokenpool_audit_text(r.event)
        || tokenpool_audit_text(r.outcome)
        || tokenpool_audit_text(r.reason)
        || tokenpool_audit_text(r.api_key_name)
        || tokenpool_audit_text(r.correlation_id)
        || tokenpool_audit_text(r.client_addr)
        || tokenpool_audit_text(r.card_id::text)
        || tokenpool_audit_text(r.ref_count::text)
        || tokenpool_audit_text(r.from_db::text)
        || tokenpool_audit_text(r.from_tome::text)
        || tokenpool_audit_text(r.unresolved::text)
        || tokenpool_audit_array(r.ref_hashes)
        || tokenpool_audit_array(r.ref_digests))
$$;


-- One row: the newest row of the chain (seq, hash) and where the remaining chain starts after a prune
-- (pruned_seq, pruned_hash: the last pruned row; 0 and 32 zero bytes before any prune). No role but
-- the owner may touch it: the trigger and the prune function below are SECURITY DEFINER.
CREATE TABLE detokenize_audit_head (
    only_row    boolean     PRIMARY KEY DEFAULT true,
    seq         bigint      NOT NULL,
    hash        bytea       NOT NULL,
    pruned_seq  bigint      NOT NULL,
    pruned_hash bytea       NOT NULL,
    pruned_at   timestamptz,
    CONSTRAINT detokenize_audit_head_one_row CHECK (only_row),
    CONSTRAINT detokenize_audit_head_hashes CHECK (octet_length(hash) = 32 AND octet_length(pruned_hash) = 32)
);
REVOKE ALL ON detokenize_audit_head FROM PUBLIC;

-- The rows written so far, chained in id order (their order of insertion).
DO $$
DECLARE
    genesis CONSTANT bytea := decode(repeat('00', 32), 'hex');
    r detokenize_audit;
    n bigint := 0;
    prev bytea := genesis;
BEGIN
    FOR r IN SELECT * FROM detokenize_audit ORDER BY id LOOP
        n := n + 1;
        r.seq := n;
        r.prev_hash := prev;
        prev := tokenpool_detokenize_audit_row_hash(r);
        UPDATE detokenize_audit SET seq = n, prev_hash = r.prev_hash, row_hash = prev WHERE id = r.id;
    END LOOP;
    INSERT INTO detokenize_audit_head (seq, hash, pruned_seq, pruned_hash) VALUES (n, prev, 0, genesis);
END
$$;

ALTER TABLE detokenize_audit
    ALTER COLUMN seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN row_hash SET NOT NULL,
    ADD CONSTRAINT detokenize_audit_seq_key UNIQUE (seq);


-- Seals each new row. Why a lock on the head row: writers must be serialised or two of them chain to
-- the same predecessor (a fork). The lock is held to commit, so chain order is commit order and a
-- rolled-back insert leaves no gap (its head update rolls back with it). The cost: audited requests
-- commit one at a time; keep the audit INSERT the last statement of its transaction.
-- Values the caller sent for seq, prev_hash or row_hash are overwritten.
CREATE FUNCTION tokenpool_detokenize_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    head detokenize_audit_head;
BEGIN
    IF NEW.ref_hashes IS NOT NULL THEN
        RAISE EXCEPTION 'detokenize_audit: new rows carry keyed digests (ref_digests), not ref_hashes'
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT * INTO STRICT head FROM detokenize_audit_head FOR UPDATE;
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.row_hash := tokenpool_detokenize_audit_row_hash(NEW);
    UPDATE detokenize_audit_head SET seq = NEW.seq, hash = NEW.row_hash;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION tokenpool_detokenize_audit_chain() FROM PUBLIC;

CREATE TRIGGER detokenize_audit_chain
    BEFORE INSERT ON detokenize_audit
    FOR EACH ROW EXECUTE FUNCTION tokenpool_detokenize_audit_chain();


-- Retention of the audit: deletes up to max_rows of the oldest rows older than cutoff and moves the
-- prune watermark in the same transaction, so the remaining chain still verifies.
-- Why in chain order, stopping at the first row not older than cutoff: `at` is the writer's
-- transaction start and may run slightly out of seq order; the chain may only lose its oldest end.
-- Why the rows are checked before they go: a prune must never destroy evidence. A chunk that is not
-- intact (a gap, a changed or re-linked row) is refused, and `tokenpool audit verify` names the row.
-- Why the head lock: pruners serialise with each other and with writers (a chunk takes milliseconds).
-- PCI DSS 10.5.1 keeps audit trails 12 months: a cutoff younger than 366 days is refused.
CREATE FUNCTION tokenpool_prune_detokenize_audit(cutoff timestamptz, max_rows integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    head detokenize_audit_head;
    expected_seq bigint;
    expected_prev bytea;
    last_seq bigint;
    last_hash bytea;
    r detokenize_audit;
BEGIN
    IF cutoff IS NULL OR cutoff > now() - interval '366 days' THEN
        RAISE EXCEPTION 'detokenize_audit is kept at least 366 days: cutoff % is too recent', cutoff
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO STRICT head FROM detokenize_audit_head FOR UPDATE;
    expected_seq := head.pruned_seq + 1;
    expected_prev := head.pruned_hash;
    FOR r IN SELECT * FROM detokenize_audit WHERE seq > head.pruned_seq ORDER BY seq LIMIT max_rows LOOP
        EXIT WHEN r.at >= cutoff;
        IF r.seq <> expected_seq OR r.prev_hash <> expected_prev
                OR r.row_hash <> tokenpool_detokenize_audit_row_hash(r) THEN
            RAISE EXCEPTION 'detokenize_audit chain is not intact at seq %: refusing to prune it', expected_seq
                USING ERRCODE = 'data_corrupted', HINT = 'Run tokenpool audit verify.';
        END IF;
        last_seq := r.seq;
        last_hash := r.row_hash;
        expected_seq := r.seq + 1;
        expected_prev := r.row_hash;
    END LOOP;
    IF last_seq IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM detokenize_audit WHERE seq > head.pruned_seq AND seq <= last_seq;
    UPDATE detokenize_audit_head SET pruned_seq = last_seq, pruned_hash = last_hash, pruned_at = now();
    RETURN last_seq - head.pruned_seq;
END
$$;
REVOKE EXECUTE ON FUNCTION tokenpool_prune_detokenize_audit(timestamptz, integer) FROM PUBLIC;
