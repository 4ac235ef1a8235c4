"""The refill job: prefetch pairs from TOME into the pool.

``refill_pool`` (job.py) is the one routine every entry point calls: the CLI, the Lambda handler and
the worker (worker.py). Pool health lives in :mod:`tokenpool.monitoring`.
"""
