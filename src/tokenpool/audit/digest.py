"""Keyed digests of external refs for audit rows: HMAC-SHA-256, hex.

A plain SHA-256 of a short structured ref is reversed by hashing candidates; an HMAC is not without
its key. The vault's digest key (``Vault.hexdigest``) is the one the service uses.
"""

from __future__ import annotations

from collections.abc import Callable

RefDigest = Callable[[str], str]
