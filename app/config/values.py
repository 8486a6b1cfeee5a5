"""Addresses, host names and origins as the configuration writes them, and the error that
every check of the configuration raises (it names the offending key)."""

from __future__ import annotations

import ipaddress
import re

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


def parse_networks(values: list[str], key: str) -> list[IpNetwork]:
    """Addresses and CIDR ranges; a plain address is a /32 (or /128) network."""
    networks: list[IpNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not an IP address or CIDR range") from None
    return networks


_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
_ORIGIN = re.compile(r"(https?)://(\[[0-9a-f:.]+\]|[^/:\[\]]+)(?::([0-9]{1,5}))?")


def parse_host(value: str, key: str) -> str:
    """A host name or IP address as the Host header carries it, without a port;
    lower case, without brackets or a trailing dot."""
    host = value.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    if _HOST_NAME.fullmatch(host) is None:
        raise ConfigError(f"{key}: {value!r} is not a host name or IP address (no scheme, port or path)")
    return host


def parse_origin(value: str, key: str) -> str:
    """An origin, ``scheme://host[:port]``, normalised as ``app.http.origin`` compares
    them: lower case, the default port left out."""
    match = _ORIGIN.fullmatch(value.strip().lower().rstrip("/"))
    if match is None:
        raise ConfigError(f"{key}: {value!r} is not an origin (http(s)://host[:port], no path)")
    scheme, host, port = match.groups()
    host = parse_host(host, key)
    if port is not None and not 1 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} has no valid port")
    if port is None or int(port) == (443 if scheme == "https" else 80):
        return f"{scheme}://{_bracketed(host)}"
    return f"{scheme}://{_bracketed(host)}:{int(port)}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
