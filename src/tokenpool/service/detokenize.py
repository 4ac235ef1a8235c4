"""Detokenize: external reference IDs -> internal tokens, from the database first, TOME NS2 second.

The database answers for every pair the pool ever held (including pairs fetched from TOME for cards)
and for pairs learned from NS2 before. The rest go to NS2 in one batched call; what it answers is
stored, so the next lookup of those refs is local. A request names no program, so "NS2" is every NS2 the
registered programs use (distinct; usually one): the misses go to the first, what it does not know to the
next, and so on.

When TOME is unavailable the request still succeeds with what the database knew: the other refs
come back null with ``source: null``, ``complete: false`` and a ``TOME_UNAVAILABLE`` warning. Only
when the database knew none of them is the answer a 503, since it would hold no information at all.

Every request writes an audit row (refs as keyed digests) before the answer is returned: no
detokenization without its audit record.

Read scaling (``TOKENPOOL_DATABASE_READ_URL``, the app role on a streaming standby): the lookup runs there
first, and the refs it lacks (a card created a moment ago that replication has not brought yet, or refs only
TOME knows) are looked up on the primary before TOME is asked. Learned pairs and the audit row are written
to the primary as without a standby. The standby never breaks a request: a lookup there is bounded by
``database_read_timeout_s``; if it fails (down, unreachable, too slow, a recovery conflict) the primary
answers, the failure is logged and counted (``tokenpool_detokenize_reads_total{outcome="failed"}``), and for
``database_read_retry_s`` the primary alone answers (``outcome="skipped"``), so an outage costs one bounded
wait per retry period, not one per request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Literal

from tokenpool.cards.errors import TemporarilyUnavailable
from tokenpool.db.audit_store import AuditEntry, AuditStore
from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseError, DatabaseUnavailable
from tokenpool.db.token_lookup_store import TokenLookupStore
from tokenpool.db.vault_store import Vault
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import (
    DETOKENIZE_READ_MISSES,
    DETOKENIZE_READS,
    DETOKENIZED_REFS,
    TOME_CALLS_AVOIDED,
)
from tokenpool.programs import ProgramCatalog
from tokenpool.service.auth import Principal
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings
from tokenpool.tome.contract import TomeError
from tokenpool.vault import VaultError

log = get_logger("tokenpool.service.detokenize")

Source = Literal["db", "tome"]


@dataclass(frozen=True, slots=True)
class Resolution:
    external_ref: str
    internal_token: str | None
    source: Source | None


@dataclass(frozen=True, slots=True)
class DetokenizeOutcome:
    results: list[Resolution]
    complete: bool


class DetokenizeService:
    def __init__(self, db: Database, lookups: TokenLookupStore, audit: AuditStore, vault: Vault, tome: TomePort,
                 settings: Settings, programs: ProgramCatalog, *, replica: Database | None = None) -> None:
        """``replica``: the pool on ``database_read_url`` (a standby), or None: the primary answers alone."""
        self._db = db
        self._replica = replica
        self._replica_rests_until = -math.inf  # time.monotonic(): after a failure, the primary alone until then
        self._lookups = lookups
        self._audit = audit
        self._vault = vault
        self._tome = tome
        self._settings = settings
        self._programs = programs

    async def ns2_namespaces(self) -> list[str]:
        """The NS2 of every registered program, distinct, the settings' own first; the settings' alone when no
        program is registered (the refs a deployment ever made are still TOME's)."""
        found = [program.ns2_in(self._settings) for program in await self._programs.registered()]
        default = self._settings.tome_ns2
        ordered = ([default] if default in found or not found else []) + sorted(set(found) - {default})
        return ordered

    async def _from_tome(self, misses: list[str], learned: dict[str, str]) -> None:
        """Adds to ``learned`` what the programs' NS2 namespaces know of ``misses``: each asked (one batched
        call) only for the refs the ones before did not know. Raises :class:`TomeError` if a call fails (what
        the namespaces before it answered stays in ``learned``)."""
        left = misses
        for namespace in await self.ns2_namespaces():
            values = await self._tome.detokenize(namespace, left)
            learned.update({ref: value for ref, value in zip(left, values, strict=True) if value is not None})
            left = [ref for ref in left if ref not in learned]
            if not left:
                break

    async def detokenize(
        self, refs: list[str], principal: Principal, correlation_id: str, client_addr: str | None
    ) -> DetokenizeOutcome:
        unique = list(dict.fromkeys(refs))
        if not self._vault.loaded:
            async with self._db.guard():
                await self._vault.ready()  # before taking a connection: loading the keys takes one too
        local = await self._lookup(unique)
        known: dict[str, tuple[str, Source]] = {ref: (token, "db") for ref, token in local.items()}

        misses = [ref for ref in unique if ref not in known]
        learned: dict[str, str] = {}
        tome_ok = True
        if misses:
            try:
                await self._from_tome(misses, learned)
            except TomeError as error:
                tome_ok = False
                log.warning("detokenize.tome_down", misses=len(misses), error=str(error)[:200])
        else:
            TOME_CALLS_AVOIDED.labels("detokenize").inc()
        known.update({ref: (token, "tome") for ref, token in learned.items()})

        results = [
            Resolution(ref, *known[ref]) if ref in known else Resolution(ref, None, None) for ref in refs
        ]
        from_db = len(unique) - len(misses)
        audit = AuditEntry(
            "detokenize", "success" if tome_ok else "partial", correlation_id, client_addr, principal.name,
            ref_digests=self._vault.hexdigests(refs), from_db=from_db, from_tome=len(learned),
            unresolved=len(unique) - len(known),
        )
        if not tome_ok and from_db == 0:
            await self._audit_best_effort(replace(audit, outcome="failure", reason="TOME_UNAVAILABLE"))
            raise TemporarilyUnavailable(
                "TOME_UNAVAILABLE", "None of the references is in the database and TOME is unavailable.",
                self._settings.service_retry_after_s,
            )

        if learned:
            async with self._db.transaction() as conn:
                await self._lookups.learn(conn, learned)
                await self._audit.record(conn, audit)  # last: the chain's head stays locked until commit
        else:
            # One statement in autocommit: the chain's head is locked only while the server runs it and
            # commits, not for a client round trip more (audit writers queue on that lock).
            async with self._db.connection() as conn:
                await self._audit.record(conn, audit)
        DETOKENIZED_REFS.labels("db").inc(from_db)
        DETOKENIZED_REFS.labels("tome").inc(len(learned))
        DETOKENIZED_REFS.labels("none").inc(len(unique) - len(known))
        log.info("detokenize.done", refs=len(refs), from_db=from_db, from_tome=len(learned), complete=tome_ok)
        return DetokenizeOutcome(results, complete=tome_ok)

    async def _lookup(self, refs: list[str]) -> dict[str, str]:
        """The database's pairs of ``refs``: on the standby first when there is one, then on the primary for
        what it lacks (or for all of them, if the standby failed or rests after a failure)."""
        if self._replica is None:
            return await self._lookup_on(self._db, refs)
        if time.monotonic() < self._replica_rests_until:
            DETOKENIZE_READS.labels("skipped").inc()
            return await self._lookup_on(self._db, refs)
        try:
            found = await self._lookup_on(self._replica, refs, self._settings.database_read_timeout_s)
        except (DatabaseError, VaultError) as error:
            # VaultError too: a token re-sealed on the primary under a newer key may still be on the standby
            # under a key since retired; the primary's copy decides (and raises if it is unreadable too).
            self._replica_rests_until = time.monotonic() + self._settings.database_read_retry_s
            DETOKENIZE_READS.labels("failed").inc()
            log.warning("detokenize.read_url_failed", error_type=type(error).__name__, error=str(error)[:200],
                        primary_alone_s=self._settings.database_read_retry_s)
            return await self._lookup_on(self._db, refs)
        DETOKENIZE_READS.labels("standby").inc()
        lacking = [ref for ref in refs if ref not in found]
        if lacking:
            DETOKENIZE_READ_MISSES.inc(len(lacking))
            found.update(await self._lookup_on(self._db, lacking))
        return found

    async def _lookup_on(self, db: Database, refs: list[str], timeout_s: float | None = None) -> dict[str, str]:
        async def read() -> dict[str, str]:
            async with db.connection(timeout_s) as conn:
                return await self._lookups.lookup(conn, refs)

        if db is self._db:  # a read: always safe to retry on the primary (a failover under way)
            return await db.run_retrying(read, idempotent=True, name="detokenize")
        return await read()  # the standby: a failure falls back to the primary instead

    async def _audit_best_effort(self, entry: AuditEntry) -> None:
        try:
            async with self._db.connection() as conn:
                await self._audit.record(conn, entry)
        except DatabaseUnavailable:
            log.error("detokenize.audit_failed", correlation_id=entry.correlation_id)
