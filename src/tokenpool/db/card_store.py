"""Cards and their Idempotency-Keys on PostgreSQL.

A card stores its pair's digest, not its token: the token is read through the pair (``token_pool``), the
one place it is kept, sealed. Creation from the pool is one statement (``card_create_from_pool``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg.rows import class_row

from tokenpool.cards import Card, TokenSource
from tokenpool.db.queries import sql
from tokenpool.db.types import Conn
from tokenpool.db.vault_store import Vault, pool_token_aad
from tokenpool.observability.metrics import POOL_COMMITS, POOL_RESERVATIONS
from tokenpool.pool.model import TokenPair


@dataclass(frozen=True, slots=True)
class _InsertedCard:
    card_id: UUID
    program: str
    customer_ref: str
    external_ref: str
    token_source: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _SealedCard(_InsertedCard):
    """A stored card with its pair's sealed token (read through the join)."""

    pool: str
    token_ct: bytes


@dataclass(frozen=True, slots=True)
class _KeyedCard(_SealedCard):
    """A card and the fingerprint of the request that created it under an Idempotency-Key."""

    request_hash: bytes


@dataclass(frozen=True, slots=True)
class _PoolCardRow:
    n: int
    card_id: UUID
    pair_claimed: bool
    key_claimed: bool
    created_at: datetime | None  # None: no card was created for this order
    token_ct: bytes | None
    external_ref: str | None


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """Who asks: the API key and its Idempotency-Key (None: no key sent), and the request's fingerprint."""

    api_key_id: UUID
    idempotency_key: str | None
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class PoolCardOrder:
    """One card to create from the pool: its id (chosen by the caller), customer and Idempotency-Key."""

    card_id: UUID
    customer_ref: str
    claim: IdempotencyClaim


@dataclass(frozen=True, slots=True)
class SealedPoolCard:
    """A card just created from the pool, its token still sealed (each caller opens its own)."""

    card_id: UUID
    program: str
    customer_ref: str
    external_ref: str
    created_at: datetime
    token_ct: bytes


@dataclass(frozen=True, slots=True)
class PoolCardOutcome:
    """``card`` when created; else either no pair was available or the Idempotency-Key was taken first."""

    card: SealedPoolCard | None
    pair_claimed: bool
    key_claimed: bool


@dataclass(frozen=True, slots=True)
class KeyedCard:
    request_hash: bytes
    card: Card


class CardStore:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    async def create_from_pool(self, conn: Conn, program: str, orders: Sequence[PoolCardOrder],
                               claim_start: int) -> list[PoolCardOutcome]:
        """One statement for every order: claim pairs, take the keys, use the pairs, insert the cards
        (autocommit: atomic). One outcome per order, in order. Nothing here can fail once the statement has
        committed: the tokens stay sealed until each caller opens its own (:meth:`open_pool_card`), so one
        unreadable pair costs its own order, never the batch's committed cards."""
        cursor = conn.cursor(row_factory=class_row(_PoolCardRow))
        await cursor.execute(sql("card_create_from_pool"), {
            "pool": program, "start": claim_start, "n": len(orders),
            "card_ids": [order.card_id for order in orders],
            "customer_refs": [order.customer_ref for order in orders],
            "api_key_ids": [order.claim.api_key_id for order in orders],
            "idempotency_keys": [order.claim.idempotency_key for order in orders],
            "request_hashes": [order.claim.request_hash for order in orders],
        })
        rows = await cursor.fetchall()
        outcomes = []
        for order, row in zip(orders, rows, strict=True):
            if row.created_at is None or row.external_ref is None or row.token_ct is None:
                if not row.pair_claimed:
                    POOL_RESERVATIONS.labels(program, "exhausted").inc()
                outcomes.append(PoolCardOutcome(None, row.pair_claimed, row.key_claimed))
                continue
            # The pair was claimed and used at once: counted as a reservation and its commit, so the
            # pool's consumption reads the same whichever path took it.
            POOL_RESERVATIONS.labels(program, "reserved").inc()
            POOL_COMMITS.labels("committed").inc()
            sealed = SealedPoolCard(row.card_id, program, order.customer_ref, row.external_ref, row.created_at,
                                    row.token_ct)
            outcomes.append(PoolCardOutcome(sealed, True, True))
        return outcomes

    async def open_pool_card(self, sealed: SealedPoolCard) -> Card:
        token = await self._vault.open(sealed.token_ct, pool_token_aad(sealed.program, sealed.external_ref))
        return Card(sealed.card_id, sealed.program, sealed.customer_ref, token, sealed.external_ref,
                    TokenSource.POOL, sealed.created_at)

    async def claim_key(self, conn: Conn, card_id: UUID, claim: IdempotencyClaim) -> bool:
        """Takes the Idempotency-Key for ``card_id`` in the caller's transaction; False when it is taken.

        A concurrent holder's uncommitted key makes this wait (bounded by statement_timeout) until it ends.
        """
        if claim.idempotency_key is None:
            return True
        cursor = await conn.execute(sql("idempotency_claim"), {
            "api_key_id": claim.api_key_id, "idempotency_key": claim.idempotency_key,
            "request_hash": claim.request_hash, "card_id": card_id,
        })
        return await cursor.fetchone() is not None

    async def insert(self, conn: Conn, card_id: UUID, program: str, customer_ref: str, pair: TokenPair,
                     source: TokenSource) -> Card:
        """A card on a pair stored in the same transaction (TOME path)."""
        await self._vault.ready()
        cursor = conn.cursor(row_factory=class_row(_InsertedCard))
        await cursor.execute(sql("card_insert"), {
            "card_id": card_id, "program": program, "customer_ref": customer_ref,
            "token_digest": self._vault.digest(pair.internal_token), "external_ref": pair.external_ref,
            "token_source": source.value,
        })
        row = await cursor.fetchone()
        assert row is not None
        return Card(row.card_id, row.program, row.customer_ref, pair.internal_token, row.external_ref,
                    TokenSource(row.token_source), row.created_at)

    async def get(self, conn: Conn, card_id: UUID) -> Card | None:
        cursor = conn.cursor(row_factory=class_row(_SealedCard))
        await cursor.execute(sql("card_get"), {"card_id": card_id})
        row = await cursor.fetchone()
        return None if row is None else await self._open(row)

    async def by_idempotency_key(self, conn: Conn, api_key_id: UUID, idempotency_key: str) -> KeyedCard | None:
        cursor = conn.cursor(row_factory=class_row(_KeyedCard))
        await cursor.execute(sql("idempotency_get"), {"api_key_id": api_key_id, "idempotency_key": idempotency_key})
        row = await cursor.fetchone()
        if row is None:
            return None
        return KeyedCard(bytes(row.request_hash), await self._open(row))

    async def _open(self, row: _SealedCard) -> Card:
        token = await self._vault.open(row.token_ct, pool_token_aad(row.pool, row.external_ref))
        return Card(row.card_id, row.program, row.customer_ref, token, row.external_ref,
                    TokenSource(row.token_source), row.created_at)
