"""The invariants every chaos scenario checks once the system has recovered.

1. No pair on two cards: internal tokens (digests) and external refs are distinct across cards; every USED pair
   has its card, every card matches its pair, and no two answers the clients saw share a pair.
   No lost card: every card a client was given exists.
2. Every token TOME NS1 issued is in ``token_pool`` exactly once (a card's pair is a USED row there),
   reconciled against the emulator's ledger; nothing is left in the refill journal.
3. No request hung past its timeout (every call has one; timeouts are counted and must be zero).
4. Every failure is a clean 503 problem response (``application/problem+json`` with a ``code``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tests.chaos.load import Call, summarize
from tests.chaos.report import ScenarioResult
from tests.chaos.stack import Stack
from tests.fixtures.database import pool_pairs


def check_no_pair_on_two_cards(stack: Stack, calls: Sequence[Call], result: ScenarioResult) -> None:
    dup_tokens = stack.sql("SELECT count(*) FROM (SELECT token_digest FROM cards GROUP BY 1 HAVING count(*) > 1) d")
    dup_refs = stack.sql("SELECT count(*) FROM (SELECT external_ref FROM cards GROUP BY 1 HAVING count(*) > 1) d")
    orphans = stack.sql(
        "SELECT count(*) FROM token_pool p WHERE p.status = 'USED'"
        " AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.token_digest = p.token_digest"
        "                 AND c.card_id::text = p.card_ref)"
    )
    mismatched = stack.sql(
        "SELECT count(*) FROM cards c JOIN token_pool p USING (token_digest)"
        " WHERE p.external_ref <> c.external_ref OR p.status <> 'USED'"
    )
    db_problems = {"duplicate internal tokens": dup_tokens[0][0], "duplicate external refs": dup_refs[0][0],
                   "USED pairs without their card": orphans[0][0], "cards not matching their pair": mismatched[0][0]}
    result.check("no pair on two cards (database)", not any(db_problems.values()),
                 ", ".join(f"{k}: {v}" for k, v in db_problems.items()))

    seen = [c.body for c in calls if c.kind == "card" and c.ok and c.body]
    tokens = Counter(card["internal_token"] for card in {c["card_id"]: c for c in seen}.values())
    client_dups = sum(1 for n in tokens.values() if n > 1)
    result.check("no pair on two cards (answers clients saw)", client_dups == 0, f"{len(tokens)} distinct pairs")

    ids = {c["card_id"] for c in seen}
    stored = {str(row[0]) for row in stack.sql("SELECT card_id FROM cards")}
    lost = ids - stored
    result.check("no lost card (every card a client got exists)", not lost, f"{len(ids)} cards answered, "
                 f"{len(stored)} stored, {len(lost)} missing")
    # With an Idempotency-Key per order, an order failed over to another process cannot make a second card.
    result.notes["cards stored but never answered (process died after commit)"] = len(stored - ids)


def check_ledger(stack: Stack, result: ScenarioResult, *, expect_ok: bool = True) -> tuple[int, int, int]:
    """Reconciles the emulator's NS1 ledger with token_pool. Returns (missing, twice, unknown)."""
    issued = stack.tome.issued(stack.ns1)
    in_pool = Counter(pool_pairs(stack.database_url).values())
    ledger = Counter(issued)
    missing = [t for t in ledger if t not in in_pool]
    twice = [t for t, n in in_pool.items() if n > 1] + [t for t, n in ledger.items() if n > 1]
    unknown = [t for t in in_pool if t not in ledger]
    batches, pending = stack.sql(
        "SELECT (SELECT count(*) FROM refill_batches WHERE state <> 'done'),"
        " (SELECT count(*) FROM refill_pending_tokens)"
    )[0]
    detail = (f"NS1 issued {len(ledger)}, token_pool {sum(in_pool.values())}; missing {len(missing)},"
              f" twice {len(twice)}, not issued by NS1 {len(unknown)}; journal left: {batches} batches,"
              f" {pending} pending tokens")
    result.check("every NS1-issued token in the pool or on a card exactly once",
                 not missing and not twice and not unknown and batches == 0 and pending == 0, detail)
    if missing:
        result.notes["NS1 tokens recorded nowhere"] = len(missing)
    return len(missing), len(twice), len(unknown)


def check_calls(calls: Sequence[Call], result: ScenarioResult, *, request_timeout_s: float,
                transport_errors_allowed: bool = False) -> None:
    """Fills the load figures in and checks invariants 3 and 4."""
    summary = summarize(calls)
    result.requests, result.succeeded = summary.requests, summary.succeeded
    result.errors_by_code, result.timeouts = summary.errors_by_code, summary.timeouts
    result.p50_ms, result.p99_ms, result.max_ms = summary.p50_ms, summary.p99_ms, summary.max_ms
    slowest_s = (summary.max_ms or 0) / 1000
    result.check("no request hung past its timeout", summary.timeouts == 0 and slowest_s <= request_timeout_s + 2.5,
                 f"{summary.timeouts} timeouts; slowest {slowest_s:.2f} s (timeout {request_timeout_s:.0f} s)")
    unclean = [u for u in summary.unclean_failures if not (transport_errors_allowed and "no answer" in u
                                                           and "timeout" not in u)]
    result.check("every failure a clean 503 problem response", not unclean,
                 f"{len(unclean)} unclean: {Counter(unclean).most_common(3)}" if unclean else
                 f"{summary.requests - summary.succeeded} failures, all 503 problem+json with a code")
