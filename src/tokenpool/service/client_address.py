"""The client address an audit row records (PCI DSS 10.2.2: origin).

The socket peer, unless the peer is a trusted proxy (``TOKENPOOL_TRUSTED_PROXIES``: IPs and CIDRs,
comma-separated; default none). Then the right-most ``X-Forwarded-For`` entry that is not itself a
trusted proxy: proxies append, so everything left of the last trusted hop was written by the client
and proves nothing. That entry must parse as an IP address, or the peer is recorded: a forged header
can neither plant text in the audit nor hide the connection it came over. uvicorn must not rewrite
the peer from these headers itself (``proxy_headers=False``, as ``tokenpool serve`` runs it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = "x-forwarded-for"


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """``10.0.0.0/8, 192.0.2.7`` -> networks; raises ValueError naming a bad entry."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as error:
                raise ValueError(f"TOKENPOOL_TRUSTED_PROXIES: {entry!r} is not an IP address or network") from error
    return tuple(networks)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class ClientAddresses:
    def __init__(self, trusted_proxies: Iterable[Network] = ()) -> None:
        self._trusted = tuple(trusted_proxies)

    def _is_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """``forwarded_for``: every X-Forwarded-For header value, in the order received."""
        if not self._trusted or not self._is_trusted(_address(peer or "")):
            return peer
        entries = [entry for value in forwarded_for for entry in value.split(",")]
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                return peer
            if not self._is_trusted(address):
                return str(address)
        return peer

    def of(self, request: Request) -> str | None:
        peer = request.client.host if request.client else None
        return self.resolve(peer, request.headers.getlist(FORWARDED_FOR))
