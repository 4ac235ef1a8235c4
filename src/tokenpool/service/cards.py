"""Card creation and retrieval.

From the pool, a card is one statement (``CardStore.create_from_pool``): claim a pair, take the
Idempotency-Key, mark the pair USED, insert the card, atomically and in one round trip; cards ordered at
the same moment share that statement (``tokenpool.cards.batching``). When the pool is
empty, or the canary share routes the request there, the pair comes from TOME (journaled first, see
tokenpool.issuance) and is inserted as USED together with the card, in one transaction. Either way there is
never a used pair without a card nor a card without its pair; the foreign key cards -> token_pool holds the
second half in SQL too.

Idempotency-Key: a concurrent retry's insert of the same key waits on its unique index until the first
request's transaction ends, then finds the key taken and answers with that card. TOME calls never happen
inside a transaction (they can take seconds); a retry that raced a TOME-path creation puts its unused TOME
pair into the pool instead of wasting it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from tokenpool.cards import Card, TokenSource
from tokenpool.cards.batching import CardBatcher
from tokenpool.cards.errors import IdempotencyKeyInUse, IdempotencyKeyReused, TemporarilyUnavailable
from tokenpool.cards.idempotency import request_fingerprint
from tokenpool.cards.routing import TrafficSplitter
from tokenpool.db.card_store import CardStore, IdempotencyClaim, PoolCardOrder, PoolCardOutcome
from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseUnavailable
from tokenpool.db.pool_store import PostgresTokenPool, random_claim_start
from tokenpool.db.vault_store import Vault
from tokenpool.issuance import JournaledPair, PairReclaimed, TomePairs
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import CARD_REPLAYS, CARDS_CREATED, TOME_CALLS_AVOIDED
from tokenpool.pool.errors import PoolExhausted
from tokenpool.programs import ProgramCatalog
from tokenpool.service.auth import Principal
from tokenpool.service.runtime_config import RuntimeConfig
from tokenpool.settings import Settings
from tokenpool.tome.contract import TomeError

log = get_logger("tokenpool.service.cards")


@dataclass(frozen=True, slots=True)
class CardOrder:
    program: str
    customer_ref: str
    idempotency_key: str | None
    principal: Principal


class _KeyTaken(Exception):
    """Another request committed a card under this Idempotency-Key first."""


def _fingerprint(order: CardOrder) -> bytes:
    return request_fingerprint({"program": order.program, "customer_ref": order.customer_ref})


def _retry_after(error: TomeError, default_s: float) -> float:
    value = getattr(error, "retry_after_s", None)
    return float(value) if value else default_s


class CardService:
    def __init__(
        self, db: Database, store: PostgresTokenPool, cards: CardStore, pairs: TomePairs, vault: Vault,
        config: RuntimeConfig, settings: Settings, programs: ProgramCatalog,
    ) -> None:
        self._db = db
        self._store = store
        self._cards = cards
        self._pairs = pairs
        self._vault = vault
        self._config = config
        self._settings = settings
        self._programs = programs
        # One splitter per program: each program's share is exact on its own (10 % of gold's cards, not 10 %
        # of all cards landing wherever). Only registered programs get here, so the dict stays small.
        self._splitters: defaultdict[str, TrafficSplitter] = defaultdict(TrafficSplitter)
        self._batcher: CardBatcher[PoolCardOrder, PoolCardOutcome] = CardBatcher(
            self._create_many_from_pool, isolate=lambda error: not isinstance(error, DatabaseUnavailable))

    async def _create_many_from_pool(self, program: str, orders: Sequence[PoolCardOrder]) -> list[PoolCardOutcome]:
        """The card statement, run again after a failover, deadlock or serialization failure (db/retry.py).

        A failure that may have committed (the connection lost after the statement was sent) is retried only
        when every order carries an Idempotency-Key: the retry then finds the key taken and replays the card.
        Without a key it is a 503: a retry could create a second card (and use a second pair) for one request.
        """
        async def statement() -> list[PoolCardOutcome]:
            async with self._db.connection() as conn:
                return await self._cards.create_from_pool(conn, program, orders, random_claim_start())

        keyed = all(order.claim.idempotency_key is not None for order in orders)
        return await self._db.run_retrying(statement, idempotent=keyed, name="card")

    async def get(self, card_id: UUID) -> Card | None:
        async def read() -> Card | None:
            async with self._db.connection() as conn:
                return await self._cards.get(conn, card_id)

        return await self._db.run_retrying(read, idempotent=True, name="card_read")

    async def create(self, order: CardOrder) -> tuple[Card, bool]:
        """The card and whether it was created now (False: an Idempotency-Key replay).

        Raises :class:`tokenpool.programs.UnknownProgram` first of all for an unregistered program: nothing
        is written for it and TOME is not asked."""
        program = await self._programs.require(order.program)
        pairs = self._pairs.on(program.ns1_in(self._settings), program.ns2_in(self._settings))
        if not self._vault.loaded:
            async with self._db.guard():
                await self._vault.ready()
        claim = self._claim(order)
        percent = await self._config.pool_traffic_percent(order.program)
        try:
            if self._splitters[order.program].choose(percent) is TokenSource.POOL:
                return await self._create_routed_to_pool(order, claim, pairs)
            return await self._create_routed_to_tome(order, claim, pairs, pool_allowed=percent > 0)
        except _KeyTaken:
            existing = await self._existing(order, claim)
            if existing is None:  # the winner's row is committed before _KeyTaken is raised
                raise IdempotencyKeyInUse() from None
            return existing, False

    def _claim(self, order: CardOrder) -> IdempotencyClaim:
        if order.idempotency_key is None:  # nothing is stored under no key: no fingerprint to compute
            return IdempotencyClaim(order.principal.api_key_id, None, b"")
        # A keyed digest of the request, not a plain hash: customer_ref may be guessable.
        return IdempotencyClaim(order.principal.api_key_id, order.idempotency_key,
                                self._vault.digest(_fingerprint(order).hex()))

    async def _create_routed_to_pool(self, order: CardOrder, claim: IdempotencyClaim,
                                     pairs: TomePairs) -> tuple[Card, bool]:
        # No look-up of the Idempotency-Key first: the card statement takes the key itself, and a replay's
        # statement finds it taken (one round trip either way).
        try:
            return await self._create_from_pool(order, claim, routed_to=TokenSource.POOL), True
        except PoolExhausted:
            log.info("card.pool_empty.tome_fallback", program=order.program)
        if (replayed := await self._replayed(order, claim)) is not None:
            return replayed, False  # a replay must not cost a TOME call
        try:
            journaled = await pairs.one_pair(order.program)
        except TomeError as error:
            log.warning("card.pool_empty.tome_down", program=order.program, error=str(error)[:200])
            raise TemporarilyUnavailable(
                "POOL_EXHAUSTED_TOME_UNAVAILABLE",
                f"Pool {order.program!r} is empty and TOME is unavailable; nothing was written.",
                _retry_after(error, self._settings.service_retry_after_s),
            ) from error
        return await self._create_from_tome_pair(order, claim, journaled, routed_to=TokenSource.POOL), True

    async def _create_routed_to_tome(self, order: CardOrder, claim: IdempotencyClaim, pairs: TomePairs, *,
                                     pool_allowed: bool) -> tuple[Card, bool]:
        if (replayed := await self._replayed(order, claim)) is not None:
            return replayed, False  # a replay must not cost a TOME call
        try:
            journaled = await pairs.one_pair(order.program)
        except TomeError as error:
            if not pool_allowed:  # traffic percent 0 is a rollback: the pool stays out of it
                raise TemporarilyUnavailable(
                    "TOME_UNAVAILABLE", "TOME is unavailable and the pool is switched off (traffic 0%).",
                    _retry_after(error, self._settings.service_retry_after_s),
                ) from error
            log.warning("card.tome_down.pool_fallback", program=order.program, error=str(error)[:200])
            try:
                return await self._create_from_pool(order, claim, routed_to=TokenSource.TOME), True
            except PoolExhausted:
                raise TemporarilyUnavailable(
                    "POOL_EXHAUSTED_TOME_UNAVAILABLE",
                    f"TOME is unavailable and pool {order.program!r} is empty; nothing was written.",
                    _retry_after(error, self._settings.service_retry_after_s),
                ) from None
        return await self._create_from_tome_pair(order, claim, journaled, routed_to=TokenSource.TOME), True

    async def _create_from_pool(self, order: CardOrder, claim: IdempotencyClaim, *, routed_to: TokenSource) -> Card:
        card_id = uuid.uuid4()
        outcome = await self._batcher.create(order.program, PoolCardOrder(card_id, order.customer_ref, claim))
        if outcome.card is None:
            if not outcome.pair_claimed:
                raise PoolExhausted(order.program)
            raise _KeyTaken
        # routed_to: where the canary share sent the request; a TOME card routed to the pool is a fallback.
        CARDS_CREATED.labels(order.program, TokenSource.POOL.value, routed_to.value).inc()
        TOME_CALLS_AVOIDED.labels("issue").inc()
        TOME_CALLS_AVOIDED.labels("tokenize").inc()
        log.info("card.created", card_id=str(card_id), program=order.program, source=TokenSource.POOL.value)
        return await self._cards.open_pool_card(outcome.card)

    async def _create_from_tome_pair(self, order: CardOrder, claim: IdempotencyClaim, journaled: JournaledPair, *,
                                     routed_to: TokenSource) -> Card:
        card_id = uuid.uuid4()
        pair = journaled.pair
        async def store() -> Card:
            async with self._db.transaction() as conn:
                if not await self._cards.claim_key(conn, card_id, claim):
                    raise _KeyTaken
                await self._pairs.close(conn, journaled, card_id)
                await self._store.insert_used_pair(conn, order.program, pair, card_id)
                return await self._cards.insert(conn, card_id, order.program, order.customer_ref, pair,
                                                TokenSource.TOME)

        try:
            # Retried only when known not committed: after an ambiguous failure a second run would find its
            # own intent closed (PairReclaimed) rather than the card.
            card = await self._db.run_retrying(store, idempotent=False, name="card_tome")
        except _KeyTaken:
            # A concurrent retry won; this valid, never-used pair joins the pool rather than being lost
            # (or, if even that fails, stays journaled for the refill to recover).
            try:
                async with self._db.transaction() as conn:
                    await self._pairs.close(conn, journaled, journaled.intent_id)
                    await self._store.copy_pairs(conn, order.program, [pair], journaled.intent_id)
            except PairReclaimed:
                pass  # the refill has put it in the pool already
            except DatabaseUnavailable:
                log.warning("card.spare_pair.left_to_refill", program=order.program)
            raise
        except PairReclaimed as reclaimed:
            raise TemporarilyUnavailable(reclaimed.code, reclaimed.detail,
                                         self._settings.service_retry_after_s) from None
        CARDS_CREATED.labels(order.program, TokenSource.TOME.value, routed_to.value).inc()
        log.info("card.created", card_id=str(card_id), program=order.program, source=TokenSource.TOME.value)
        return card

    async def _replayed(self, order: CardOrder, claim: IdempotencyClaim) -> Card | None:
        return None if order.idempotency_key is None else await self._existing(order, claim)

    async def _existing(self, order: CardOrder, claim: IdempotencyClaim) -> Card | None:
        assert order.idempotency_key is not None
        async with self._db.connection() as conn:
            keyed = await self._cards.by_idempotency_key(conn, order.principal.api_key_id, order.idempotency_key)
        if keyed is None:
            return None
        # A key stored before fingerprints were keyed holds the plain hash (until retention prunes it).
        if keyed.request_hash not in (claim.request_hash, _fingerprint(order)):
            raise IdempotencyKeyReused()
        CARD_REPLAYS.inc()
        return keyed.card
