-- The service's TOME fallback journals its single-pair issues in refill_batches too, so that a token
-- TOME issued for a request that then failed (database lost, TOME failing after issue) is recovered
-- into the pool by the next refill instead of being lost. `origin` tells the refill which intents a
-- live request may still be completing (service ones younger than a grace period are left alone).
ALTER TABLE refill_batches ADD COLUMN origin text NOT NULL DEFAULT 'refill';
ALTER TABLE refill_batches ADD CONSTRAINT refill_batches_origin_known CHECK (origin IN ('refill', 'service'));
