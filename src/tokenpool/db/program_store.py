"""Card programs on PostgreSQL (``programs``, migration 0010): read by everyone, written by the owner.

Reads go through a :class:`Database` (the app role's or the owner's); :func:`ensure_program` is for
``db upgrade``, which runs as the owner on a plain connection like the migrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

from tokenpool.db.database import Database
from tokenpool.db.hosts import primary_url
from tokenpool.db.queries import sql
from tokenpool.pool.model import PairStatus, PoolStats
from tokenpool.programs import InvalidProgram, Program, ProgramChange, ProgramExists, ProgramInUse, UnknownProgram
from tokenpool.programs.model import validate_name, validate_namespace


@dataclass(frozen=True, slots=True)
class LivePairs:
    available: int
    reserved: int
    unfinished_batches: int

    @property
    def any(self) -> bool:
        return bool(self.available or self.reserved or self.unfinished_batches)


@dataclass(frozen=True, slots=True)
class _Count:
    pool: str
    status: str
    n: int


@dataclass(frozen=True, slots=True)
class Registration:
    program: Program
    reregistered: bool  # the name had been removed and is registered again


class ProgramStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def registered(self) -> list[Program]:
        """Every registered program, by name (removed ones left out)."""
        return await self._programs("programs_registered", {})

    async def everything(self) -> list[Program]:
        """Every program ever registered, removed ones included."""
        return await self._programs("programs_all", {})

    async def get(self, name: str) -> Program | None:
        """The program ``name``, removed or not; None if it never was one."""
        found = await self._programs("program_get", {"name": name})
        return found[0] if found else None

    async def require(self, name: str) -> Program:
        """The registered program ``name``; :class:`UnknownProgram` if it is not (or no longer) registered."""
        program = await self.get(name)
        if program is None or not program.registered:
            raise UnknownProgram(name)
        return program

    async def add(self, name: str, *, refill_target: int | None = None, ns1: str | None = None,
                  ns2: str | None = None) -> Registration:
        """Registers ``name`` (or registers a removed one again); :class:`ProgramExists` if it is registered."""
        params = _registration(name, refill_target, ns1, ns2)
        async with self._db.transaction() as conn:
            cursor = conn.cursor(row_factory=class_row(Program))
            await cursor.execute(sql("program_insert"), params)
            if (added := await cursor.fetchone()) is not None:
                return Registration(added, reregistered=False)
            await cursor.execute(sql("program_reregister"), params)
            if (again := await cursor.fetchone()) is not None:
                return Registration(again, reregistered=True)
        raise ProgramExists(name)

    async def change(self, name: str, change: ProgramChange) -> Program:
        """Applies ``change`` to a registered program; :class:`UnknownProgram` if there is none."""
        params = {
            "name": name,
            "set_target": change.refill_target is not None or change.reset_target,
            "refill_target": change.refill_target,
            "set_ns1": change.ns1 is not None or change.reset_namespaces,
            "ns1": change.ns1,
            "set_ns2": change.ns2 is not None or change.reset_namespaces,
            "ns2": change.ns2,
        }
        found = await self._programs("program_update", params)
        if not found:
            raise UnknownProgram(name)
        return found[0]

    async def remove(self, name: str, *, force: bool = False) -> LivePairs:
        """Removes a registered program (softly: see the migration); returns what its pool still held.

        Refused with :class:`ProgramInUse` while the pool holds AVAILABLE or RESERVED pairs or unfinished
        refill batches, unless ``force``; :class:`UnknownProgram` if it is not registered.
        """
        async with self._db.transaction() as conn:
            if await (await conn.execute(sql("program_lock"), {"name": name})).fetchone() is None:
                raise UnknownProgram(name)
            cursor = conn.cursor(row_factory=class_row(LivePairs))
            await cursor.execute(sql("program_live_pairs"), {"name": name})
            live = await cursor.fetchone()
            assert live is not None
            if live.any and not force:
                raise ProgramInUse(name, live.available, live.reserved, live.unfinished_batches)
            await conn.execute(sql("program_remove"), {"name": name})
        return live

    async def pair_counts(self) -> dict[str, PoolStats]:
        """Pairs by status of every program (one statement over the trigger-kept counters)."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(_Count))
            await cursor.execute(sql("program_pair_counts"))
            rows = await cursor.fetchall()
        counts: dict[str, dict[PairStatus, int]] = {}
        for row in rows:
            counts.setdefault(row.pool, {})[PairStatus(row.status)] = int(row.n)
        return {pool: PoolStats(pool, by_status) for pool, by_status in counts.items()}

    async def _programs(self, query: str, params: dict[str, Any]) -> list[Program]:
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Program))
            await cursor.execute(sql(query), params)
            return await cursor.fetchall()


def _registration(name: str, refill_target: int | None, ns1: str | None, ns2: str | None) -> dict[str, Any]:
    validate_name(name)
    for namespace in (ns1, ns2):
        if namespace is not None:
            validate_namespace(namespace)
    if refill_target is not None and refill_target < 0:
        raise InvalidProgram("a refill target is 0 or more")
    return {"name": name, "refill_target": refill_target, "ns1": ns1, "ns2": ns2}


def ensure_program(url: str, name: str) -> bool:
    """Registers ``name`` with the settings' target and namespaces unless it has a row (registered, or removed
    on purpose: not brought back). As the owner, for ``db upgrade``. Returns whether it registered it."""
    with psycopg.connect(primary_url(url), autocommit=True) as conn:
        cursor = conn.execute(sql("program_insert"), _registration(name, None, None, None))
        return cursor.fetchone() is not None
