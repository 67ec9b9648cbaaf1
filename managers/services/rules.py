"""The rules a service's calls follow, apart from the HTTP client that applies them
(managers/service_client.py, imported only when an app declares a service): which addresses
may be reached, the circuit breaker, and a service's settings.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
BreakerState = Literal["closed", "open", "half_open"]


# --- where a service may go -------------------------------------------------------------


class DestinationRefused(Exception):
    """The destination resolves to an address the policy refuses."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(
            f"{host} resolves to {address}, which services.allow_networks does not list"
        )
        self.host = host
        self.address = address


def _addresses(text: str) -> list[Address]:
    """The address, and the IPv4 address it carries when it is an IPv6 form of one
    (IPv4-mapped, 6to4, Teredo): each must be allowed."""
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
    return found


def literal_address(host: str) -> str | None:
    """``host`` as an IP address when it is one, in any form a resolver takes as a number
    (``127.1``, ``2130706433``, ``0x7f.0.0.1``), else None (a name)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def address_kind(address: Address) -> str | None:
    """Why ``address`` is not a public destination (None: it is one)."""
    for kind, flag in (
        ("loopback", address.is_loopback),
        ("link-local (metadata)", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


class AddressPolicy:
    """Public addresses, plus the networks an operator lists."""

    def __init__(self, allowed: Iterable[Network] = ()) -> None:
        self.allowed = tuple(allowed)

    def refusal(self, text: str) -> str | None:
        """Why ``text`` (an IP address) may not be reached, or None."""
        for address in _addresses(text):
            if any(address in network for network in self.allowed):
                continue
            kind = address_kind(address)
            if kind is not None:
                return kind
        return None

    def literal_refusal(self, url: str) -> str | None:
        """For a URL whose host is an IP address: why it may not be reached, or None
        (a name is checked when it is resolved, at call time). ``ValueError`` when the
        URL cannot be read."""
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
        address = literal_address(parts.hostname or "")
        return None if address is None else self.refusal(address)


def parse_networks(texts: Sequence[str]) -> tuple[list[Network], list[str]]:
    """(networks, problems) of ``services.allow_networks``."""
    networks: list[Network] = []
    problems: list[str] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            problems.append(f"{text!r} is not a network in CIDR notation ({exc})")
    return networks, problems


# --- the breaker ------------------------------------------------------------------------


class Breaker:
    """closed → open after ``failures`` consecutive failed calls → after ``reset`` seconds
    one probe call (half-open) → closed when it succeeds, open again when it fails."""

    def __init__(
        self,
        failures: int,
        reset: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.failures = failures
        self.reset = reset
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._count = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.reset:
                return "half_open"
            return self._state

    def _set(self, state: BreakerState) -> None:
        if state != self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)

    def admit(self) -> bool:
        """Whether a call may go out now (a half-open breaker lets one probe through)."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._probing:
                return False
            if self._state == "open" and self._clock() - self._opened_at < self.reset:
                return False
            self._set("half_open")
            self._probing = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._count = 0
            self._probing = False
            self._set("closed")

    def failed(self) -> None:
        with self._lock:
            if self._state == "open":
                return  # a call admitted before it opened: the reset time stands
            self._count += 1
            if self._state == "half_open" or self._count >= self.failures:
                self._opened_at = self._clock()
                self._probing = False
                self._set("open")

    def abandoned(self) -> None:
        """The admitted call ended without telling whether the upstream works."""
        with self._lock:
            self._probing = False
            if self._state == "half_open":
                self._set("open")


# --- a service's settings ---------------------------------------------------------------


@dataclass(frozen=True)
class SecretHeader:
    """A header whose value is read from a secret at call time."""

    secret: str  # "path#field"
    prefix: str = ""


HeaderValue = str | SecretHeader
SecretReader = Callable[[str, str], Any]  # (secret path, field) -> value


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    base_url: str
    timeout: float
    retries: int
    headers: Mapping[str, HeaderValue]
    failures: int
    reset: float
    redirects: int
    max_response_bytes: int
