"""X-Forwarded-For is believed only from trusted proxies, right-most untrusted hop first."""

from __future__ import annotations

import pytest

from core.base.client_ip import client_ip, parse_networks
from core.base.errors import ConfigError

TRUSTED = parse_networks(["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # an untrusted peer is the client, whatever it claims
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),
        ("203.0.113.9", "10.0.0.5, 1.2.3.4", "203.0.113.9"),
        # a trusted proxy: the right-most hop that is not ours
        ("10.0.0.2", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # 6.6.6.6 was typed by the client
        ("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.1.1.1, 192.0.2.1", "198.51.100.7"),
        ("10.0.0.2", " 198.51.100.7 ,10.9.9.9 ", "198.51.100.7"),
        # every hop is ours: the left-most
        ("10.0.0.2", "10.3.3.3, 10.4.4.4", "10.3.3.3"),
        # garbage from the client side stops the walk at the last hop we vouch for
        ("10.0.0.2", "not-an-ip", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.7, garbage, 10.4.4.4", "10.4.4.4"),
        # no header, empty header
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", "", "10.0.0.2"),
        # IPv6
        ("2001:db8::1", "2001:db9::42", "2001:db9::42"),
        ("2001:db9::1", "198.51.100.7", "2001:db9::1"),
    ],
)
def test_client_ip(peer: str, forwarded: str | None, expected: str) -> None:
    assert client_ip(peer, forwarded, TRUSTED) == expected


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert client_ip("10.0.0.2", "198.51.100.7", ()) == "10.0.0.2"


def test_bad_trusted_proxy_entries_are_boot_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_networks(["10.0.0.0/8", "not-a-network", "300.1.1.1"])
    assert [p.field for p in caught.value.problems] == ["http.trusted_proxies"] * 2
    assert "'not-a-network'" in str(caught.value)
