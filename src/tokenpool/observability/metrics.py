"""Every Prometheus metric tokenpool exports, in one place so names stay consistent.

The refill job publishes the same names to CloudWatch (Embedded Metric Format), so a dashboard
reads alike whichever runtime produced the figures.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# --- The pool ---------------------------------------------------------------------------------------
POOL_PAIRS = Gauge("tokenpool_pool_pairs", "Token pairs in the pool by status.", ["pool", "status"])
POOL_RESERVATIONS = Counter(
    "tokenpool_pool_reservations_total",
    "Pairs asked of the claim statement: reserved, exhausted (the pool had none left), or over_cap (the API key "
    "held its maximum of open reservations). A reservation made "
    "inside a caller's transaction counts even if that transaction later rolls back.",
    ["pool", "outcome"],
)
POOL_COMMITS = Counter(
    "tokenpool_pool_commits_total", "Commits by outcome: committed, replayed, conflict, lease_expired.", ["outcome"]
)
POOL_LEASES_EXPIRED = Counter(
    "tokenpool_pool_leases_expired_total", "Reservations quarantined because their lease lapsed."
)
POOL_PAIRS_ADDED = Counter("tokenpool_pool_pairs_added_total", "Pairs bulk-loaded into the pool.", ["pool"])

# --- Refill ------------------------------------------------------------------------------------------
# EMF (the Lambda) publishes the same families under the same names: a counter's family name (its
# Prometheus sample carries the `_total` suffix), pool pairs as POOL_PAIRS above.
REFILL_PAIRS_ADDED = Counter("tokenpool_refill_pairs_added", "Pairs the refill job loaded into the pool.", ["pool"])
REFILL_RUNS = Counter("tokenpool_refill_runs", "Refill runs by outcome.", ["pool", "outcome"])
REFILL_DURATION = Histogram(
    "tokenpool_refill_duration_seconds", "Wall time of one refill run.", ["pool"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)
REFILL_TOME_REQUESTS = Counter(
    "tokenpool_refill_tome_requests", "TOME HTTP requests sent by the refill job.", ["pool"]
)
POOL_HEALTH = Gauge(
    "tokenpool_pool_health", "Pool health: 0 OK, 1 LOW, 2 CRITICAL, 3 EMPTY.", ["pool"]
)
POOL_HOURS_LEFT = Gauge("tokenpool_pool_hours_left", "Hours of available pairs at the current rate.", ["pool"])
POOL_AVAILABLE_BEFORE_REFILL = Gauge(
    "tokenpool_pool_available_before_refill",
    "Available pairs when the last refill run planned: the pool's low point between scheduled runs.", ["pool"],
)
POOL_ALERTS = Counter("tokenpool_pool_alerts", "Health alerts by channel and outcome.", ["channel", "outcome"])

# --- Service -----------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "tokenpool_http_requests_total", "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "tokenpool_http_request_duration_seconds", "HTTP request latency by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_PROBLEMS = Counter(
    "tokenpool_http_problems_total", "Problem responses by status and stable code (e.g. 503 SERVICE_BUSY).",
    ["status", "code"],
)
CARDS_CREATED = Counter(
    "tokenpool_cards_created_total", "Cards created, by program and where the token pair came from.",
    ["program", "token_source"],
)
CARD_REPLAYS = Counter(
    "tokenpool_card_idempotent_replays_total", "Card creations answered with an existing card (Idempotency-Key)."
)
DETOKENIZED_REFS = Counter(
    "tokenpool_detokenized_refs_total", "Detokenized references by where the answer came from (db, tome, none).",
    ["source"],
)
TOME_CALLS_AVOIDED = Counter(
    "tokenpool_tome_calls_avoided_total", "TOME calls the pool or the database made unnecessary.", ["operation"]
)
POOL_TRAFFIC_PERCENT = Gauge(
    "tokenpool_pool_traffic_percent", "Share of card creations routed to the pool (canary), as last read."
)
RATE_LIMITED = Counter(
    "tokenpool_rate_limited_total",
    "Requests refused with 429 by a per-key limit: cards, detokenize_refs, open_reservations.",
    ["limit"],
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "tokenpool_rate_limit_storage_errors_total",
    "Failed or timed-out calls to the shared rate-limit storage (Redis); the process then counts alone for a while.",
)
RATE_LIMIT_SHARED = Gauge(
    "tokenpool_rate_limit_shared", "1 while limits are counted in the shared storage, 0 while this process counts "
    "alone (no storage configured, or it failed: fail open to per-process limits).",
)
# "down" rather than "up": a process that never listens (the worker, the CLI) shows 0 and alerts on nothing.
API_KEY_LISTENER_DOWN = Gauge(
    "tokenpool_api_key_listener_down",
    "1 while this service process does not hear API key revocations (LISTEN/NOTIFY not yet or no longer "
    "connected): its key checks are cached 1 s at most meanwhile; 0 while it listens.",
)
API_KEY_LISTENER_RECONNECTS = Counter(
    "tokenpool_api_key_listener_reconnects_total", "Times the API key listener lost its connection and reconnected."
)

# --- TOME -----------------------------------------------------------------------------------------
# The TOME client (tokenpool.tome). One HTTP attempt = one request sample; a logical call that retried
# shows as several requests plus retries. Outcomes: ok, bad_request, rate_limited, server_error, timeout,
# connection_error, bad_response, breaker_open (fail fast: no request reached TOME).
TOME_REQUESTS = Counter(
    "tokenpool_tome_requests_total",
    "TOME calls by namespace, operation and outcome.",
    ["namespace", "operation", "outcome"],
)
TOME_REQUEST_SECONDS = Histogram(
    "tokenpool_tome_request_duration_seconds",
    "Latency of one HTTP attempt to TOME.",
    ["namespace", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TOME_ITEMS = Counter(
    "tokenpool_tome_items_total",
    "Items (tokens or values) sent to TOME in successful calls.",
    ["namespace", "operation"],
)
TOME_RETRIES = Counter(
    "tokenpool_tome_retries_total",
    "Retries of a TOME call by the reason of the failed attempt.",
    ["operation", "reason"],
)
TOME_BREAKER_STATE = Gauge(
    "tokenpool_tome_breaker_state", "TOME circuit breaker: 0 closed, 1 half-open, 2 open.", ["target"]
)
TOME_BREAKER_TRANSITIONS = Counter(
    "tokenpool_tome_breaker_transitions_total", "TOME circuit breaker state changes.", ["target", "to_state"]
)

# --- Database housekeeping: retention and the bloat watch (docs/pool.md, "Retention and bloat") ---------
ROWS_PRUNED = Counter(
    "tokenpool_rows_pruned_total", "Rows deleted by retention (tokenpool db prune, the worker), by table.", ["table"]
)
DB_OLDEST_TRANSACTION = Gauge(
    "tokenpool_db_oldest_transaction_seconds",
    "Age of the oldest open transaction in the database (its snapshot holds back VACUUM); alarm above 60 s.",
)
