"""TOME, the tokenization service: its contract, the resilient client and the emulator.

``from tokenpool.tome import TomeClient`` is all most callers need.
"""

from tokenpool.tome.client import TomeClient
from tokenpool.tome.contract import (
    TomeBadRequest,
    TomeBadResponse,
    TomeError,
    TomeRateLimited,
    TomeUnavailable,
)

__all__ = ["TomeBadRequest", "TomeBadResponse", "TomeClient", "TomeError", "TomeRateLimited", "TomeUnavailable"]
