"""Card creation and retrieval.

A card's pair comes from the pool (``reserve`` -> insert card -> ``commit``, one transaction) or, when
the pool is empty or the canary share routes the request there, from TOME (the pair is inserted as
USED together with the card, one transaction). Either way there is never a used pair without a card
nor a card without its pair; the foreign key cards -> token_pool holds the second half in SQL too.

Idempotency-Key: the key row is inserted first in the card's transaction. A concurrent retry's
insert waits on the primary key until the first transaction ends, then finds the key taken and
answers with that card. TOME calls never happen inside a transaction (they can take seconds); a
retry that raced a TOME-path creation puts its unused TOME pair into the pool instead of wasting it.
A TOME pair is journaled before TOME is asked (see tome_pairs): if the card's transaction fails, the
refill recovers the pair into the pool, so no token TOME issued is lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from tokenpool.cards import Card, TokenSource
from tokenpool.cards.idempotency import request_fingerprint
from tokenpool.cards.routing import TrafficSplitter
from tokenpool.db.pool_store import PostgresTokenPool, copy_pairs
from tokenpool.db.queries import sql
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import CARD_REPLAYS, CARDS_CREATED, TOME_CALLS_AVOIDED
from tokenpool.pool.errors import PoolExhausted
from tokenpool.pool.model import TokenPair
from tokenpool.service.auth import Principal
from tokenpool.service.database import Conn, DatabaseUnavailable, ServiceDatabase
from tokenpool.service.problems import ProblemError, unavailable
from tokenpool.service.runtime_config import RuntimeConfig
from tokenpool.service.tome_pairs import JournaledPair, PairReclaimed, close_intent, pair_from_tome, reclaimed_problem
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings
from tokenpool.tome.contract import TomeError

log = get_logger("tokenpool.service.cards")


@dataclass(frozen=True, slots=True)
class CardOrder:
    program: str
    customer_ref: str
    idempotency_key: str | None
    principal: Principal

    @property
    def fingerprint(self) -> bytes:
        return request_fingerprint({"program": self.program, "customer_ref": self.customer_ref})


class _KeyTaken(Exception):
    """Another request committed a card under this Idempotency-Key first."""


def _card(row: Any) -> Card:
    card_id, program, customer_ref, internal_token, external_ref, token_source, created_at = row
    return Card(card_id, program, customer_ref, internal_token, external_ref, TokenSource(token_source), created_at)


def _retry_after(error: TomeError, default_s: float) -> float:
    value = getattr(error, "retry_after_s", None)
    return float(value) if value else default_s


class CardService:
    def __init__(
        self, db: ServiceDatabase, store: PostgresTokenPool, tome: TomePort, config: RuntimeConfig,
        settings: Settings,
    ) -> None:
        self._db = db
        self._store = store
        self._tome = tome
        self._config = config
        self._settings = settings
        self._splitter = TrafficSplitter()

    async def get(self, card_id: UUID) -> Card | None:
        async with self._db.connection() as conn:
            row = await (await conn.execute(sql("card_get"), {"card_id": card_id})).fetchone()
        return _card(row) if row else None

    async def create(self, order: CardOrder) -> tuple[Card, bool]:
        """The card and whether it was created now (False: an Idempotency-Key replay)."""
        if order.idempotency_key is not None:
            existing = await self._existing(order)
            if existing is not None:
                return existing, False
        percent = await self._config.pool_traffic_percent()
        try:
            if self._splitter.choose(percent) is TokenSource.POOL:
                return await self._create_routed_to_pool(order)
            return await self._create_routed_to_tome(order, pool_allowed=percent > 0)
        except _KeyTaken:
            existing = await self._existing(order)
            if existing is None:  # the winner's row is committed before _KeyTaken is raised
                raise ProblemError(409, "IDEMPOTENCY_KEY_IN_USE", "Retry: this key is being used.") from None
            return existing, False

    async def _create_routed_to_pool(self, order: CardOrder) -> tuple[Card, bool]:
        try:
            return await self._create_from_pool(order), True
        except PoolExhausted:
            log.info("card.pool_empty.tome_fallback", program=order.program)
        try:
            journaled = await pair_from_tome(self._tome, self._settings, self._db, order.program)
        except TomeError as error:
            log.warning("card.pool_empty.tome_down", program=order.program, error=str(error)[:200])
            raise unavailable(
                "POOL_EXHAUSTED_TOME_UNAVAILABLE",
                f"Pool {order.program!r} is empty and TOME is unavailable; nothing was written.",
                _retry_after(error, self._settings.service_retry_after_s),
            ) from error
        return await self._create_from_tome_pair(order, journaled), True

    async def _create_routed_to_tome(self, order: CardOrder, *, pool_allowed: bool) -> tuple[Card, bool]:
        try:
            journaled = await pair_from_tome(self._tome, self._settings, self._db, order.program)
        except TomeError as error:
            if not pool_allowed:  # traffic percent 0 is a rollback: the pool stays out of it
                raise unavailable(
                    "TOME_UNAVAILABLE", "TOME is unavailable and the pool is switched off (traffic 0%).",
                    _retry_after(error, self._settings.service_retry_after_s),
                ) from error
            log.warning("card.tome_down.pool_fallback", program=order.program, error=str(error)[:200])
            try:
                return await self._create_from_pool(order), True
            except PoolExhausted:
                raise unavailable(
                    "POOL_EXHAUSTED_TOME_UNAVAILABLE",
                    f"TOME is unavailable and pool {order.program!r} is empty; nothing was written.",
                    _retry_after(error, self._settings.service_retry_after_s),
                ) from None
        return await self._create_from_tome_pair(order, journaled), True

    async def _create_from_pool(self, order: CardOrder) -> Card:
        card_id = uuid.uuid4()
        async with self._db.transaction() as conn:
            await self._claim_key(conn, order, card_id)
            reservation = await self._store.reserve(order.program, self._settings.lease_seconds, conn=conn)
            card = await self._insert_card(conn, order, card_id, reservation.pair, TokenSource.POOL)
            await self._store.commit(reservation.reservation_id, str(card_id), conn=conn)
        CARDS_CREATED.labels(order.program, TokenSource.POOL.value).inc()
        TOME_CALLS_AVOIDED.labels("issue").inc()
        TOME_CALLS_AVOIDED.labels("tokenize").inc()
        log.info("card.created", card_id=str(card_id), program=order.program, source=TokenSource.POOL.value)
        return card

    async def _create_from_tome_pair(self, order: CardOrder, journaled: JournaledPair) -> Card:
        card_id = uuid.uuid4()
        pair = journaled.pair
        try:
            async with self._db.transaction() as conn:
                await self._claim_key(conn, order, card_id)
                await close_intent(conn, journaled, card_id)
                await conn.execute(
                    sql("pair_insert_used"),
                    {"pool": order.program, "internal_token": pair.internal_token,
                     "external_ref": pair.external_ref, "card_id": card_id},
                )
                card = await self._insert_card(conn, order, card_id, pair, TokenSource.TOME)
        except _KeyTaken:
            # A concurrent retry won; this valid, never-used pair joins the pool rather than being lost
            # (or, if even that fails, stays journaled for the refill to recover).
            try:
                async with self._db.transaction() as conn:
                    await close_intent(conn, journaled, journaled.intent_id)
                    await copy_pairs(conn, order.program, [pair], journaled.intent_id)
            except PairReclaimed:
                pass  # the refill has put it in the pool already
            except DatabaseUnavailable:
                log.warning("card.spare_pair.left_to_refill", program=order.program)
            raise
        except PairReclaimed as reclaimed:
            raise reclaimed_problem(reclaimed, self._settings.service_retry_after_s) from None
        CARDS_CREATED.labels(order.program, TokenSource.TOME.value).inc()
        log.info("card.created", card_id=str(card_id), program=order.program, source=TokenSource.TOME.value)
        return card

    async def _claim_key(self, conn: Conn, order: CardOrder, card_id: UUID) -> None:
        if order.idempotency_key is None:
            return
        cursor = await conn.execute(
            sql("idempotency_claim"),
            {"api_key_id": order.principal.api_key_id, "idempotency_key": order.idempotency_key,
             "request_hash": order.fingerprint, "card_id": card_id},
        )
        if await cursor.fetchone() is None:
            raise _KeyTaken

    async def _insert_card(
        self, conn: Conn, order: CardOrder, card_id: UUID, pair: TokenPair, source: TokenSource
    ) -> Card:
        cursor = await conn.execute(
            sql("card_insert"),
            {"card_id": card_id, "program": order.program, "customer_ref": order.customer_ref,
             "internal_token": pair.internal_token, "external_ref": pair.external_ref,
             "token_source": source.value},
        )
        row = await cursor.fetchone()
        assert row is not None
        return _card(row)

    async def _existing(self, order: CardOrder) -> Card | None:
        async with self._db.connection() as conn:
            cursor = await conn.execute(
                sql("idempotency_get"),
                {"api_key_id": order.principal.api_key_id, "idempotency_key": order.idempotency_key},
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        if bytes(row[0]) != order.fingerprint:
            raise ProblemError(
                422, "IDEMPOTENCY_KEY_REUSED",
                "This Idempotency-Key was used with a different request body; use a new key.",
            )
        CARD_REPLAYS.inc()
        return _card(row[1:])
