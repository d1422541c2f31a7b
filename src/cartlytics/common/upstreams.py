"""``ANALYTICS_GATEWAY_UPSTREAM``: where the in-process gateway sends each service's calls.

The value is comma-separated entries; an entry is ``service=addresses`` (``ingest``, ``metrics``,
``export``, ``privacy``) or bare ``addresses``, for every service not named. ``addresses`` is one
``host:port``, or the replicas of the service as IP addresses joined by ``|``::

    ingest=127.0.0.1:7001|127.0.0.1:7002,metrics=10.0.0.5:7003|10.0.0.6:7003,export=...

Several addresses become one gRPC target of the ``ipv4:``/``ipv6:`` scheme, balanced by gRPC
itself (``round_robin``, health-checked: ``gateway/module.py``), which is why they must be IP
addresses of one family: that resolver takes no names. A host name stays one upstream (its first
address that answers, gRPC's ``pick_first``). Checked at start by the configuration, for every
target, so a typo fails there and names the variable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# The services behind the gateway (admin is gRPC only).
SERVICES = ("ingest", "metrics", "export", "privacy")
REPLICA_SEPARATOR = "|"
# Host names: dot-separated labels of letters, digits, inner hyphens (RFC 1123) and underscores
# (which Docker Compose's names have).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


@dataclass(frozen=True)
class Upstreams:
    """The addresses of every service named, and of the others (``default``; empty: none)."""

    default: tuple[str, ...] = ()
    per_service: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def parse_upstreams(value: str) -> Upstreams:
    """Read the setting; ValueError saying which entry is wrong and why."""
    default: tuple[str, ...] = ()
    per_service: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, sep, addresses = entry.rpartition("=")
        if sep and name not in SERVICES:
            raise ValueError(f"{entry!r}: unknown service {name!r} (one of {', '.join(SERVICES)})")
        if (name in per_service) if sep else bool(default):
            raise ValueError(f"{entry!r}: {name or 'the default upstream'} is given twice")
        parsed = _addresses(entry, addresses)
        if sep:
            per_service[name] = parsed
        else:
            default = parsed
    return Upstreams(default, per_service)


def grpc_target(addresses: Sequence[str]) -> str:
    """The gRPC target of one service's addresses: the address itself, or for replicas the
    ``ipv4:``/``ipv6:`` list gRPC's sockaddr resolver reads."""
    if len(addresses) == 1:
        return addresses[0]
    family = "ipv6" if addresses[0].startswith("[") else "ipv4"
    return f"{family}:{','.join(addresses)}"


def _addresses(entry: str, text: str) -> tuple[str, ...]:
    addresses = tuple(a.strip() for a in text.split(REPLICA_SEPARATOR))
    families = {_check_address(entry, a) for a in addresses}
    if len(addresses) > 1:
        if None in families:
            raise ValueError(
                f"{entry!r}: several addresses must be IP addresses (gRPC balances over an IP "
                "list only); a host name must stand alone"
            )
        if len(families) > 1:
            raise ValueError(f"{entry!r}: mixes IPv4 and IPv6 addresses")
        if len(set(addresses)) < len(addresses):
            raise ValueError(f"{entry!r}: an address is listed twice")
    return addresses


def _check_address(entry: str, address: str) -> int | None:
    """Check ``host:port`` (IPv6 in brackets); the IP version, or None for a host name."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"{entry!r}: {address!r} is not host:port")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r}: port {port} is not between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1]).version
        except ValueError:
            raise ValueError(f"{entry!r}: {host} is not an IPv6 address") from None
    try:
        return ipaddress.IPv4Address(host).version
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(
            f"{entry!r}: {host!r} is not a host name or an IP address (IPv6: in brackets)"
        )
    return None
