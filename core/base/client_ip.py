"""Who the client is, network-wise: ``X-Forwarded-For`` only counts when a trusted proxy says it.

A request straight from an untrusted peer is that peer, whatever headers it sends (so a
spoofed header buys no new rate-limit budget). From a trusted proxy, the client is the
right-most address in ``X-Forwarded-For`` that is not itself a trusted proxy: every hop to
its right was added by infrastructure we trust, the ones to its left by the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from core.base.errors import ConfigError, Problem

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(
    entries: Iterable[str], setting: str = "http.trusted_proxies"
) -> tuple[Network, ...]:
    """A setting's IPs and CIDRs as networks; a bad entry is a boot error naming it."""
    networks = []
    problems = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            problems.append(
                Problem(f"{entry!r} is not an IP address or CIDR network", field=setting)
            )
    if problems:
        raise ConfigError(problems)
    return tuple(networks)


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """The client's address given the socket peer and the ``X-Forwarded-For`` header."""
    if peer is None or not trusted or not forwarded_for or not in_networks(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    closest_trusted = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return closest_trusted  # garbage: believe only what our own proxies vouch for
        if not in_networks(hop, trusted):
            return hop
        closest_trusted = hop
    return closest_trusted  # every hop is one of ours
