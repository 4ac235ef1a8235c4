"""The refill job: prefetch pairs from TOME into the pool (issue 4)."""
