"""The card domain: cards, where their token pair came from, idempotency fingerprints and canary routing.

No I/O here; the service package stores and serves cards.
"""

from tokenpool.cards.model import Card, TokenSource

__all__ = ["Card", "TokenSource"]
