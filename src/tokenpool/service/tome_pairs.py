"""A token pair straight from TOME (NS1 issue + NS2 tokenize), for the paths that bypass the pool."""

from __future__ import annotations

from tokenpool.pool.model import TokenPair
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings


async def pair_from_tome(tome: TomePort, settings: Settings) -> TokenPair:
    """Raises a :class:`tokenpool.tome.contract.TomeError` when TOME cannot help.

    If tokenize fails after issue succeeded, the issued token is simply never used: TOME never
    re-issues a token, so nothing can collide with it later.
    """
    internal_token = (await tome.issue(settings.tome_ns1, 1))[0]
    external_ref = (await tome.tokenize(settings.tome_ns2, [internal_token]))[0]
    return TokenPair(internal_token, external_ref)
