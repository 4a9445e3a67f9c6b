"""Whom a call counts against for fair share (service.infra.concurrency), decided when its headers
arrive, before its message is read.

A call with credentials this config knows counts against them (`vk:<id>`, `admin`, `key:<digest>`:
service.usecases.auth.Authenticator.caller_key). Any other call counts against its address: the
peer itself on the direct gRPC port; through Envoy, the address Envoy saw, which it appends to
x-forwarded-for (`use_remote_address`). That header is believed only from a trusted peer: Envoy
over a worker's own Unix socket, or an address in `client.limits.trusted_proxies`; anyone else could
name any address in it. IPv6 callers count per /64 (one host is usually given a whole /64).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

FORWARDED_FOR_HEADER = "x-forwarded-for"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def peer_address(peer: str) -> Address | None:
    """The IP address of a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:%5B::1%5D:5`); None for
    anything else (a Unix socket is `unix:`)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = unquote(rest).rpartition(":")[0].strip("[]")
    return _address(host)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_key(address: Address) -> str:
    """`ip:1.2.3.4`, or `ip:2001:db8:1:2::/64` for an IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


def trusted(peer: str, address: Address | None, proxies: Iterable[Network]) -> bool:
    """Whether the peer is a proxy whose x-forwarded-for names the caller."""
    if peer.startswith("unix:"):
        return True
    return address is not None and any(address in network for network in proxies)


@functools.lru_cache(maxsize=4096)
def _forwarded_key(forwarded: str) -> str | None:
    """The address key of the last x-forwarded-for entry (cached: callers come back)."""
    named = _address(forwarded.rpartition(",")[2])
    return address_key(named) if named is not None else None


def address_of(headers: Mapping[str, str], peer: str, proxies: Iterable[Network]) -> str:
    """The caller's address key: the last x-forwarded-for entry from a trusted peer, else the peer."""
    if peer.startswith("unix:"):  # Envoy over a worker's own socket: no address to parse
        return _forwarded_key(headers.get(FORWARDED_FOR_HEADER, "")) or "ip:local"
    address = peer_address(peer)
    if trusted(peer, address, proxies):
        named = _forwarded_key(headers.get(FORWARDED_FOR_HEADER, ""))
        if named is not None:
            return named
    if address is not None:
        return address_key(address)
    return "ip:local"  # a peer of no address that named none: the machine itself
