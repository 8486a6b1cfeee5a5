"""Where a job's webhook may point (``webhooks.allowed_hosts``), checked when the job is
submitted and again at each delivery attempt (the list may have changed since).

An entry is a host name, a ``*.suffix`` wildcard (any name under the suffix), an IP
address or a CIDR range. A URL whose host is an IP address needs an IP/CIDR entry; a host
name needs a name entry, and at delivery each address it resolves to must also pass:
an address inside an IP/CIDR entry, or, for a name entry alone, a public one (a name entry
never allows loopback, private, link-local or other special addresses: a listed name
that resolves to ``127.0.0.1`` is refused, which is the SSRF this list is for).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.config.values import ConfigError, IpNetwork, parse_host

#: The longest webhook URL accepted.
MAX_URL_LENGTH = 2048

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: What no URL may hold: control characters, spaces and any other Unicode white space
#: (``\s`` is ``str.isspace``); one regex search, checked on every submitted webhook.
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f\s]")


class WebhookInvalid(ValueError):
    """Not a webhook URL at all; the message is the end of a sentence about the field."""


def webhook_host(url: str) -> str:
    """The URL's host, normalised (lower case, no brackets or trailing dot); or
    ``WebhookInvalid``: not an absolute http(s) URL, or longer than ``MAX_URL_LENGTH``."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookInvalid(f"is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        raise WebhookInvalid("is not an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or _SPACE_OR_CONTROL.search(url) is not None:
        raise WebhookInvalid("is not an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise WebhookInvalid("must not carry credentials")
    return parts.hostname.lower().rstrip(".")


def _address(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class AllowList:
    names: frozenset[str]
    #: ``*.example.com`` as ``.example.com``.
    suffixes: tuple[str, ...]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def parse(cls, entries: list[str], key: str = "webhooks.allowed_hosts") -> AllowList:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IpNetwork] = []
        for i, entry in enumerate(entries):
            value = entry.strip().lower()
            if value.startswith("*."):
                suffixes.append("." + parse_host(value[2:], f"{key}[{i}]"))
                continue
            try:
                networks.append(ipaddress.ip_network(value.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host = parse_host(value, f"{key}[{i}]")
            if _address(host) is not None:  # pragma: no cover - ip_network took it
                raise ConfigError(f"{key}[{i}]: {entry!r}")
            names.add(host)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def _in_networks(self, address: IpAddress) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)

    def name_listed(self, host: str) -> bool:
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def allows_host(self, host: str) -> bool:
        """The URL's host as written: an address in an IP/CIDR entry, or a listed name."""
        address = _address(host)
        if address is not None:
            return self._in_networks(address)
        return self.name_listed(host)

    def allows_url(self, url: str) -> bool:
        """``WebhookInvalid`` for what is no webhook URL."""
        return self.allows_host(webhook_host(url))

    def allows_address(self, host: str, address: str) -> bool:
        """May ``host`` (a listed name) be reached at ``address``, one it resolved to?"""
        ip = _address(address)
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self._in_networks(ip):
            return True
        return self.name_listed(host) and ip.is_global and not ip.is_multicast
