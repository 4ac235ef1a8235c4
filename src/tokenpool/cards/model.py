"""A card and the origin of its token pair."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID


class TokenSource(StrEnum):
    POOL = "pool"  # claimed from the prefetched pool: no TOME call on the card's path
    TOME = "tome"  # issued by TOME for this card (pool empty, or routed there by the canary share)


@dataclass(frozen=True, slots=True)
class Card:
    card_id: UUID
    program: str
    customer_ref: str
    internal_token: str
    external_ref: str
    token_source: TokenSource
    created_at: datetime
