"""Every Prometheus metric tokenpool exports, in one place so names stay consistent.

The refill job publishes the same names to CloudWatch (Embedded Metric Format), so a dashboard
reads alike whichever runtime produced the figures.

A labelled counter has no series until its first ``.labels(...)``; a series that first appears at 1 is
invisible to ``increase()``, so an alert on "any failure" would miss the first one. Each scraped process
(the API, the worker) therefore calls :func:`initialise_metrics` at start, which creates at 0 every
labelled counter it can emit, for the pools it serves (the TOME client does the same for its own families
on construction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

# --- The database ---------------------------------------------------------------------------------
DB_RETRIES = Counter(
    "tokenpool_db_retries", "Transactions run again after a retryable database failure, by operation and reason.",
    ["operation", "reason"],
)

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
REFILL_LAST_SUCCESS = Gauge(
    "tokenpool_refill_last_success_timestamp_seconds",
    "Unix time the last successful refill of the pool finished, by any runner (read from refill_runs by the "
    "worker); while no run ever succeeded, the start of the pool's first run.", ["pool"],
)
POOL_ALERTS = Counter(
    "tokenpool_pool_alerts", "Health alert deliveries by pool, channel (log, sns, webhook) and outcome (sent, failed).",
    ["pool", "channel", "outcome"],
)

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
    "tokenpool_cards_created_total",
    "Cards created, by program, where the token pair came from (token_source) and where the canary share "
    "routed the request (routed_to): routed_to=pool with token_source=tome is a fallback (the pool was empty).",
    ["program", "token_source", "routed_to"],
)
CARD_REPLAYS = Counter(
    "tokenpool_card_idempotent_replays_total", "Card creations answered with an existing card (Idempotency-Key)."
)
DETOKENIZED_REFS = Counter(
    "tokenpool_detokenized_refs_total", "Detokenized references by where the answer came from (db, tome, none).",
    ["source"],
)
DETOKENIZE_READS = Counter(
    "tokenpool_detokenize_reads_total",
    "Detokenize lookups with a read URL (standby) configured, by outcome: standby (it answered), failed (it "
    "failed: the primary answered), skipped (resting after a failure: the primary answered).",
    ["outcome"],
)
DETOKENIZE_READ_MISSES = Counter(
    "tokenpool_detokenize_read_misses_total",
    "Refs the standby did not know, looked up on the primary before TOME (replication lag, or refs only TOME knows).",
)
TOME_CALLS_AVOIDED = Counter(
    "tokenpool_tome_calls_avoided_total", "TOME calls the pool or the database made unnecessary.", ["operation"]
)
POOL_TRAFFIC_PERCENT = Gauge(
    "tokenpool_pool_traffic_percent", "Share of a program's card creations routed to the pool (canary), as last read.",
    ["program"],
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


def forget_pools(pools: Iterable[str]) -> None:
    """Drops the gauge series of pools no longer registered as programs (counters keep their totals)."""
    for pool in pools:
        for gauge in (POOL_HEALTH, POOL_HOURS_LEFT, POOL_AVAILABLE_BEFORE_REFILL, REFILL_LAST_SUCCESS):
            with contextlib.suppress(KeyError):
                gauge.remove(pool)
        for status in ("available", "reserved", "used", "expired"):
            with contextlib.suppress(KeyError):
                POOL_PAIRS.remove(pool, status)
# --- Label values, for initialise_metrics (the code that counts uses the same literals) ----------------
POOL_RESERVATION_OUTCOMES = ("reserved", "exhausted", "over_cap")
POOL_COMMIT_OUTCOMES = ("committed", "replayed", "conflict", "lease_expired")
DETOKENIZE_SOURCES = ("db", "tome", "none")
DETOKENIZE_READ_OUTCOMES = ("standby", "failed", "skipped")
TOME_OPERATIONS = ("issue", "tokenize", "detokenize")
TOME_OUTCOMES = ("ok", "bad_request", "rate_limited", "server_error", "timeout", "connection_error", "bad_response",
                 "cancelled", "breaker_open")
TOME_RETRY_REASONS = ("server_error", "timeout", "connection_error", "rate_limited")
TOME_BREAKER_STATES = ("closed", "half_open", "open")
REFILL_OUTCOMES = ("succeeded", "failed", "skipped_lease_held", "stopped", "lease_lost")
ALERT_OUTCOMES = ("sent", "failed")
HTTP_ERROR_STATUSES = ("500", "503")
CARD_SOURCES = ("pool", "tome")


def initialise_metrics(
    *,
    pools: Iterable[str] = (),
    cards: bool = False,
    refills: bool = False,
    alert_channels: Iterable[str] = (),
    http_routes: Iterable[tuple[str, str]] = (),
    pruned_tables: Iterable[str] = (),
) -> None:
    """Creates at 0 the labelled counters this process can emit, so that their first event is an increase.

    ``pools``: the pools (card programs) the process serves. ``cards``: the API's card, reservation and
    detokenize counters; ``refills``: the refill run counters; ``alert_channels``: the health alert
    channels configured; ``http_routes``: (route template, method) pairs, each with the error statuses the
    alerts read; ``pruned_tables``: the tables retention prunes. Cheap (a dictionary look-up per series):
    the API calls it again on every scrape with the pools the database knows. Gauges are left alone: a
    gauge at 0 would claim a value nobody measured (an empty pool).
    """
    pools = tuple(pools)
    for pool in pools:
        if cards:
            for routed_to in CARD_SOURCES:
                for source in CARD_SOURCES:
                    CARDS_CREATED.labels(pool, source, routed_to)
            for outcome in POOL_RESERVATION_OUTCOMES:
                POOL_RESERVATIONS.labels(pool, outcome)
        if refills:
            for outcome in REFILL_OUTCOMES:
                REFILL_RUNS.labels(pool, outcome)
            REFILL_PAIRS_ADDED.labels(pool)
            REFILL_TOME_REQUESTS.labels(pool)
            POOL_PAIRS_ADDED.labels(pool)
        for channel in alert_channels:
            for outcome in ALERT_OUTCOMES:
                POOL_ALERTS.labels(pool, channel, outcome)
    if cards:
        for outcome in POOL_COMMIT_OUTCOMES:
            POOL_COMMITS.labels(outcome)
        for source in DETOKENIZE_SOURCES:
            DETOKENIZED_REFS.labels(source)
        for outcome in DETOKENIZE_READ_OUTCOMES:
            DETOKENIZE_READS.labels(outcome)
        for operation in TOME_OPERATIONS:
            TOME_CALLS_AVOIDED.labels(operation)
    for route, method in http_routes:
        for status in HTTP_ERROR_STATUSES:
            HTTP_REQUESTS.labels(route, method, status)
    for table in pruned_tables:
        ROWS_PRUNED.labels(table)


def initialise_tome_metrics(target: str, namespaces: Iterable[str]) -> None:
    """The TOME client's counters at 0 for its base URL (``target``) and namespaces; called on construction."""
    for state in TOME_BREAKER_STATES:
        TOME_BREAKER_TRANSITIONS.labels(target, state)
    for operation in TOME_OPERATIONS:
        for reason in TOME_RETRY_REASONS:
            TOME_RETRIES.labels(operation, reason)
        for namespace in namespaces:
            TOME_ITEMS.labels(namespace, operation)
            for outcome in TOME_OUTCOMES:
                TOME_REQUESTS.labels(namespace, operation, outcome)
