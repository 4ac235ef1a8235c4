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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from tokenpool.cards.errors import TemporarilyUnavailable
from tokenpool.db.audit_store import AuditEntry, AuditStore
from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseUnavailable
from tokenpool.db.token_lookup_store import TokenLookupStore
from tokenpool.db.vault_store import Vault
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import DETOKENIZED_REFS, TOME_CALLS_AVOIDED
from tokenpool.programs import ProgramCatalog
from tokenpool.service.auth import Principal
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings
from tokenpool.tome.contract import TomeError

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
                 settings: Settings, programs: ProgramCatalog) -> None:
        self._db = db
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
        async def read() -> dict[str, str]:
            async with self._db.connection() as conn:
                return await self._lookups.lookup(conn, unique)

        local = await self._db.run_retrying(read, idempotent=True, name="detokenize")  # a read: always safe
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

    async def _audit_best_effort(self, entry: AuditEntry) -> None:
        try:
            async with self._db.connection() as conn:
                await self._audit.record(conn, entry)
        except DatabaseUnavailable:
            log.error("detokenize.audit_failed", correlation_id=entry.correlation_id)
