"""Every labelled counter a process can emit exists at 0 from its start, so its first event is an increase.

A series that first appears at 1 is invisible to ``increase()``: the alerts on a first failure (a lost
lease, a 500, an undelivered alert, a breaker opening) would miss it. The label values initialised here
must be the ones the code counts with, or the initialised series are not the ones that later move.
"""

from __future__ import annotations

import inspect
import re

from prometheus_client import REGISTRY

import tokenpool.db.card_store as card_store_module
import tokenpool.db.pool_store as pool_store_module
import tokenpool.service.detokenize as detokenize_module
import tokenpool.tome.client as tome_client_module
from tokenpool.cards.model import TokenSource
from tokenpool.observability import metrics
from tokenpool.refill.model import Outcome
from tokenpool.settings import Settings
from tokenpool.tome.client import TomeClient
from tokenpool.tome.contract import Operation
from tokenpool.tome.resilience import BreakerState


def _literals(module: object, pattern: str) -> set[str]:
    return set(re.findall(pattern, inspect.getsource(module)))  # type: ignore[arg-type]


def test_the_label_values_initialised_are_the_ones_the_code_counts_with():
    assert set(metrics.REFILL_OUTCOMES) == {outcome.value for outcome in Outcome} - {Outcome.RUNNING.value}
    assert set(metrics.CARD_SOURCES) == {source.value for source in TokenSource}
    assert set(metrics.TOME_OPERATIONS) == {operation.value for operation in Operation}
    assert set(metrics.TOME_BREAKER_STATES) == {state.value for state in BreakerState}
    tome_outcomes = _literals(tome_client_module, r'outcome_label = (?:Outcome\.\w+, )?"(\w+)"') | _literals(
        tome_client_module, r'TOME_REQUESTS\.labels\([^)]*, "(\w+)"\)')
    assert set(metrics.TOME_OUTCOMES) == tome_outcomes
    commits = _literals(pool_store_module, r'POOL_COMMITS\.labels\("(\w+)"\)') | _literals(
        card_store_module, r'POOL_COMMITS\.labels\("(\w+)"\)')
    assert set(metrics.POOL_COMMIT_OUTCOMES) == commits
    reservations = _literals(pool_store_module, r'POOL_RESERVATIONS\.labels\(\w+, "(\w+)"\)')
    assert set(metrics.POOL_RESERVATION_OUTCOMES) == reservations
    assert set(metrics.DETOKENIZE_SOURCES) == _literals(detokenize_module, r'DETOKENIZED_REFS\.labels\("(\w+)"\)')
    assert set(metrics.DETOKENIZE_READ_OUTCOMES) == _literals(detokenize_module,
                                                               r'DETOKENIZE_READS\.labels\("(\w+)"\)')


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_process_finds_its_counters_at_zero_before_anything_happened():
    metrics.initialise_metrics(pools=["init-p"], cards=True, refills=True, alert_channels=("log", "webhook"),
                               http_routes=[("/init-route", "POST")], pruned_tables=["init_table"])
    for outcome in metrics.REFILL_OUTCOMES:
        assert _value("tokenpool_refill_runs_total", pool="init-p", outcome=outcome) == 0.0
    for routed_to in ("pool", "tome"):
        for source in ("pool", "tome"):
            assert _value("tokenpool_cards_created_total", program="init-p", token_source=source,
                          routed_to=routed_to) == 0.0
    for channel in ("log", "webhook"):
        for outcome in ("sent", "failed"):
            assert _value("tokenpool_pool_alerts_total", pool="init-p", channel=channel, outcome=outcome) == 0.0
    for status in ("500", "503"):
        assert _value("tokenpool_http_requests_total", route="/init-route", method="POST", status=status) == 0.0
    assert _value("tokenpool_pool_reservations_total", pool="init-p", outcome="exhausted") == 0.0
    assert _value("tokenpool_rows_pruned_total", table="init_table") == 0.0
    assert _value("tokenpool_refill_pairs_added_total", pool="init-p") == 0.0


def test_initialising_again_keeps_what_was_counted_and_sets_no_gauge():
    metrics.initialise_metrics(pools=["init-q"], refills=True)
    metrics.REFILL_RUNS.labels("init-q", "failed").inc()
    metrics.initialise_metrics(pools=["init-q"], refills=True)
    assert _value("tokenpool_refill_runs_total", pool="init-q", outcome="failed") == 1.0
    # A gauge at 0 would claim an empty pool, or a last success at 1970.
    assert _value("tokenpool_pool_pairs", pool="init-q", status="available") is None
    assert _value("tokenpool_refill_last_success_timestamp_seconds", pool="init-q") is None


async def test_a_tome_client_initialises_its_breaker_retry_and_request_counters():
    settings = Settings(tome_url="http://tome-init.test", tome_ns1="N1", tome_ns2="N2")
    await TomeClient(settings).aclose()
    for state in ("closed", "half_open", "open"):
        assert _value("tokenpool_tome_breaker_transitions_total", target="http://tome-init.test", to_state=state) == 0
    # No target or namespace label on retries: other clients in this process may have counted some.
    assert _value("tokenpool_tome_retries_total", operation="tokenize", reason="server_error") is not None
    assert _value("tokenpool_tome_requests_total", namespace="N2", operation="detokenize", outcome="timeout") == 0.0
    assert _value("tokenpool_tome_breaker_state", target="http://tome-init.test") == 0.0
