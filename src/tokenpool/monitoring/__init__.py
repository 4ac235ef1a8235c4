"""Pool monitoring: consumption, the fill-target forecast, health (OK / LOW / CRITICAL / EMPTY) and its alerts.

Shared by the worker, the refill, the CLI, the Lambda and the API (``GET /v1/pools/{p}``), none of which
needs the others to watch a pool.
"""
