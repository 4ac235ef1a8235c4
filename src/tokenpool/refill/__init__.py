"""The refill job: prefetch pairs from TOME into the pool (issue 4).

``refill_pool`` (job.py) is the one routine every entry point calls: the CLI, the Lambda handler and
the worker. ``check_pool_health`` (health.py) reports how long the pool will last.
"""
