"""Where outgoing notification requests may go: a guard against server-side request forgery.

A webhook or Slack URL is written by a tenant's operator, but the request leaves from the
platform's network. So a target is refused when its scheme is not http/https, or when its host
resolves (every address DNS gives) to an address that is not public: loopback, link-local (cloud
metadata at 169.254.169.254), private, CGNAT, unique-local, unspecified, multicast or reserved.
``TELEMETRA_NOTIFY_ALLOW`` names hosts, addresses and networks that are allowed all the same.

The check returns the address it checked; the caller connects to that address (not to the name
again), so a DNS answer that changes between check and connection cannot point elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_SETTING = "TELEMETRA_NOTIFY_ALLOW"

# Checked in order; the first match names the class in the refusal.
_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("CGNAT", ("100.64.0.0/10",)),
    ("unique-local", ("fc00::/7",)),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
)
_NETWORKS = [
    (name, ipaddress.ip_network(net)) for name, nets in _CLASSES for net in nets
]  # fmt: skip


class Refused(Exception):
    """A target that notifications may not reach; the message names the address and the
    setting that would allow it."""


@dataclass(frozen=True, slots=True)
class AllowList:
    """Host names, addresses and networks allowed despite the rules (``TELEMETRA_NOTIFY_ALLOW``)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def parse_allow(text: str | None) -> AllowList:
    """``"127.0.0.1,10.0.0.0/8,hooks.internal"`` → an AllowList; ValueError for a bad network."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for item in (text or "").split(","):
        item = item.strip().strip("[]")
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            if "/" in item:
                raise ValueError(
                    f"{ALLOW_SETTING}: {item!r} is not a network (10.0.0.0/8)"
                ) from None
            hosts.add(item.lower().rstrip("."))
    return AllowList(frozenset(hosts), tuple(networks))


def address_class(address: IPAddress) -> str | None:
    """Why this address is not public ("loopback", "private" …), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_class(address.ipv4_mapped)
    for name, net in _NETWORKS:
        if address.version == net.version and address in net:
            return name
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: its parts and the address to connect to."""

    url: str
    scheme: str
    host: str  # as written (lower case, no brackets)
    port: int
    address: IPAddress

    @property
    def host_header(self) -> str:
        """The Host header the URL implies (the port only when not the scheme's default)."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        parts = urlsplit(self.url)
        ip = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        path = parts.path or "/"
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.scheme}://{ip}:{self.port}{path}{query}"


def _refusal(url: str, host: str, address: IPAddress, why: str) -> Refused:
    via = "" if host == str(address) else f" ({host} resolves to it)"
    return Refused(
        f"refused to send to {url}: {address}{via} is a {why} address; add it (or the host, or "
        f"its network) to {ALLOW_SETTING} to allow it"
    )


def _split(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise Refused(f"refused to send to {url!r}: not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused(f"refused to send to {url!r}: only http and https URLs are allowed")
    if not parts.hostname:
        raise Refused(f"refused to send to {url!r}: the URL names no host")
    return scheme, parts.hostname.lower().rstrip("."), port or (443 if scheme == "https" else 80)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise socket.gaierror(f"{host} has no address")
    return found


async def check_url(url: str, allow: AllowList) -> Target:
    """Resolve ``url``'s host and check every address it has: the Target to connect to, or
    Refused. A failed look-up raises ``socket.gaierror`` (the caller may try again later)."""
    scheme, host, port = _split(url)
    addresses = await _resolve(host, port)
    if not allow.allows_host(host):
        for address in addresses:
            why = address_class(address)
            if why is not None and not allow.allows_address(address):
                raise _refusal(url, host, address, why)
    return Target(url, scheme, host, port, addresses[0])
