"""Detokenize from the database: the pool (every pair it ever held) and the pairs learned from TOME NS2."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from psycopg.rows import class_row

from tokenpool.db.queries import sql
from tokenpool.db.types import Conn
from tokenpool.db.vault_store import Vault, learned_token_aad, pool_token_aads


@dataclass(frozen=True, slots=True)
class _SealedRef:
    external_ref: str
    pool: str | None  # None: a learned pair
    token_ct: bytes


class TokenLookupStore:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    async def lookup(self, conn: Conn, external_refs: Sequence[str]) -> dict[str, str]:
        """External reference IDs -> internal tokens, for the refs the database knows; one round trip."""
        cursor = conn.cursor(row_factory=class_row(_SealedRef))
        await cursor.execute(sql("detokenize_local"), {"external_refs": list(external_refs)})
        rows = await cursor.fetchall()
        aads: dict[str | None, Callable[[str], bytes]] = {None: learned_token_aad}  # each pool's part framed once
        for row in rows:
            if row.pool is not None and row.pool not in aads:
                aads[row.pool] = pool_token_aads(row.pool)
        tokens = await self._vault.open_all([(row.token_ct, aads[row.pool](row.external_ref)) for row in rows])
        return {row.external_ref: token for row, token in zip(rows, tokens, strict=True)}

    async def learn(self, conn: Conn, pairs: Mapping[str, str]) -> None:
        """Remembers pairs TOME NS2 answered (external ref -> internal token), sealed."""
        await self._vault.ready()
        sealed = [self._vault.seal(token, learned_token_aad(ref)) for ref, token in pairs.items()]
        await conn.execute(sql("learned_pairs_insert"), {
            "external_refs": list(pairs), "token_cts": [s.ciphertext for s in sealed],
            "key_versions": [s.key_version for s in sealed],
        })
