"""A token pair straight from TOME (NS1 issue + NS2 tokenize), for the paths that bypass the pool.

No TOME-issued token may be lost: the pair is journaled (``tome_fallback_intent``) before TOME is
called, with the journal id as the issue's Idempotency-Key. The caller closes the intent in the same
transaction that stores the pair (:func:`close_intent`). If the request fails anywhere in between
(database lost, tokenize failing after issue), the refill later replays the issue with the same key and
loads the pair into the pool once the intent is older than ``refill_service_intent_grace_s``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from uuid import UUID

from tokenpool.db.queries import sql
from tokenpool.pool.model import TokenPair
from tokenpool.service.database import Conn, ServiceDatabase
from tokenpool.service.problems import ProblemError, unavailable
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings


@dataclass(frozen=True, slots=True)
class JournaledPair:
    pair: TokenPair
    intent_id: UUID


async def pair_from_tome(tome: TomePort, settings: Settings, db: ServiceDatabase, pool: str) -> JournaledPair:
    """Raises :class:`tokenpool.tome.contract.TomeError` when TOME cannot help, and
    ``DatabaseUnavailable`` (before any TOME call) when the journal cannot be written."""
    intent_id = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(sql("tome_fallback_intent"), {"batch_id": intent_id, "pool": pool})
    internal_token = (await tome.issue(settings.tome_ns1, 1, idempotency_key=str(intent_id)))[0]
    external_ref = (await tome.tokenize(settings.tome_ns2, [internal_token]))[0]
    return JournaledPair(TokenPair(internal_token, external_ref), intent_id)


class PairReclaimed(Exception):
    """The refill recovered this intent's pair into the pool first: the request outlived the grace.

    Nothing is lost (the pair is AVAILABLE in the pool) and nothing was stored by the request.
    """

    code = "TOME_PAIR_RECLAIMED"


async def close_intent(conn: Conn, journaled: JournaledPair, stored_by: UUID) -> None:
    """Marks the intent done, before the pair is written in the same transaction.

    Its row lock orders the request against a refill recovering the same intent (which locks the row
    before the pair too): whoever comes second finds the intent done. For the request that is
    :class:`PairReclaimed`; storing the pair anyway would break its unique constraint.
    """
    params = {"batch_id": journaled.intent_id, "run_id": stored_by, "added": 1}
    cursor = await conn.execute(sql("refill_batch_mark_done"), params)
    if cursor.rowcount == 0:
        raise PairReclaimed(str(journaled.intent_id))
    # A refill that began recovering this intent may have recorded its token, then died: nothing would
    # ever delete that row (done batches are not recovered), and it holds an internal token.
    await conn.execute(sql("refill_pending_tokens_delete"), {"batch_id": journaled.intent_id})


def reclaimed_problem(reclaimed: PairReclaimed, retry_after_s: float) -> ProblemError:
    return unavailable(
        reclaimed.code,
        "This request outlived the TOME-fallback grace and its pair went to the pool; nothing was stored. Retry.",
        retry_after_s,
    )
