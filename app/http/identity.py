"""Who is asking: the peer address, or ``X-Forwarded-For`` from a trusted proxy only.

The ASGI server's own proxy-header handling stays off (see ``app.cli``), so nothing but
this module decides a client's address, and body fields never do.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from litestar.connection import ASGIConnection

from app.config.values import IpNetwork


@functools.lru_cache(maxsize=4096)
def normalize_address(host: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 is its IPv4 address, IPv6 compressed.
    Cached: the same few peers ask every millisecond, and parsing showed in the node's profile."""
    try:
        ip = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class ClientIdentity:
    def __init__(self, trusted_proxies: list[IpNetwork]) -> None:
        self.trusted_proxies = trusted_proxies

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies if network.version == ip.version)

    def address(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        peer = normalize_address(connection.client.host) if connection.client else "unknown"
        if not self.trusted_proxies or not self._trusted(peer):
            return peer
        # Walk the chain from the nearest hop back; the first untrusted hop is the client.
        # A hop that is not an IP address ends the walk: the trusted hop that reported it
        # is the client (a client is always an address, never text from a header).
        hops = [normalize_address(h) for h in ",".join(connection.headers.getall("x-forwarded-for", [])).split(",")]
        reported_by = peer
        for hop in reversed([h for h in hops if h]):
            if not _is_address(hop):
                return reported_by
            if not self._trusted(hop):
                return hop
            reported_by = hop
        return peer


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
