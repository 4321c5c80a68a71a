"""Which callback URLs Earshot may call: a URL from a client must not reach inside the cluster.

Two checks, because a name can resolve to one address when the job is created and another
when the callback is sent (DNS rebinding):

- :func:`check_callback_url` when a job takes a URL (and again before each attempt):
  ``https`` only (``EARSHOT_CALLBACK_ALLOW_HTTP`` allows ``http``), no user info, the host in
  ``EARSHOT_CALLBACK_ALLOWED_HOSTS`` if that is set, and a literal address must be public;
- :class:`PinnedTransport` at connect time: the host is resolved once, *every* address it
  resolves to must be public, and the connection goes to that checked address (TLS still
  verifies the certificate against the name, via SNI).

"Public" is :attr:`ipaddress.IPv4Address.is_global` and not multicast, on the address itself
and on any IPv4 address embedded in an IPv6 one (IPv4-mapped, 6to4, Teredo, NAT64), so
loopback, private, link-local (cloud metadata 169.254.169.254), CGNAT, multicast, reserved
and unspecified addresses are refused in every spelling the resolver accepts: decimal
``2130706433``, octal ``0177.0.0.1``, hex ``0x7f.1``, short ``127.1``, ``[::ffff:127.0.0.1]``.
``EARSHOT_CALLBACK_ALLOW_PRIVATE`` turns the address checks off (development and tests).
Redirects are never followed (see :mod:`earshot.callbacks.outbox`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from earshot.config import Settings
from earshot.errors import InputError

__all__ = [
    "CallbackRefused",
    "PinnedTransport",
    "check_callback_url",
    "forbidden_reason",
    "literal_address",
    "resolve_allowed",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class CallbackRefused(InputError):
    """The callback URL or the address it resolves to is not allowed."""

    code = "callback_refused"


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why a connection to ``ip`` is refused, or None for a public unicast address."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates.extend(_embedded_v4(ip))
    for addr in candidates:
        if addr.is_multicast:
            return f"{addr} is a multicast address"
        if addr.is_loopback:
            return f"{addr} is a loopback address"
        if addr.is_link_local:
            return f"{addr} is a link-local address (cloud metadata lives there)"
        if addr.is_unspecified:
            return f"{addr} is the unspecified address"
        if not addr.is_global:
            return f"{addr} is not a public address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host string spells, in any encoding the C resolver accepts, or None."""
    text = host.strip().strip("[]").split("%", 1)[0]  # an IPv6 zone id names an interface
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        # inet_aton is what getaddrinfo uses for IPv4 literals: 2130706433, 0177.0.0.1, 0x7f.1
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry:
            return True
    return False


def check_callback_url(url: str, *, settings: Settings) -> str:
    """Refuse a URL Earshot must not call; returns it unchanged when it may be called."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"callback URL is malformed: {exc}") from exc
    del port  # parsed only to reject bad ports
    schemes = ("https", "http") if settings.callback_allow_http else ("https",)
    if parts.scheme not in schemes:
        raise CallbackRefused(
            f"callback URL must use {' or '.join(schemes)}, not {parts.scheme or 'no scheme'!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("callback URL must not carry user info")
    host = parts.hostname
    if not host:
        raise CallbackRefused("callback URL has no host")
    if settings.callback_allowed_hosts and not _host_allowed(host, settings.callback_allowed_hosts):
        raise CallbackRefused(f"callback host {host!r} is not in EARSHOT_CALLBACK_ALLOWED_HOSTS")
    if not settings.callback_allow_private:
        if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(
            ".localhost"
        ):
            raise CallbackRefused(f"callback host {host!r} is this machine")
        ip = literal_address(host)
        if ip is not None and (reason := forbidden_reason(ip)):
            raise CallbackRefused(f"callback host {host!r} refused: {reason}")
    return url


def resolve_allowed(
    host: str, port: int, *, settings: Settings, resolver: Resolver = socket.getaddrinfo
) -> str:
    """Resolve ``host`` once; every address must be allowed. Returns the address to connect to."""
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CallbackRefused(f"cannot resolve callback host {host!r}: {exc}") from exc
    addresses = [literal_address(str(info[4][0])) for info in infos]
    if not addresses or any(a is None for a in addresses):
        raise CallbackRefused(f"callback host {host!r} resolved to no usable address")
    if not settings.callback_allow_private:
        for addr in addresses:
            assert addr is not None
            if reason := forbidden_reason(addr):
                raise CallbackRefused(f"callback host {host!r} resolves to {addr}: {reason}")
    return str(addresses[0])


class PinnedTransport(httpx.BaseTransport):
    """Connects to the address checked by :func:`resolve_allowed`, never re-resolving."""

    def __init__(self, settings: Settings, *, resolver: Resolver = socket.getaddrinfo) -> None:
        self._settings = settings
        self._resolver = resolver
        self._inner = httpx.HTTPTransport(retries=0)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        address = resolve_allowed(host, port, settings=self._settings, resolver=self._resolver)
        # Host header (already set) and TLS SNI/certificate check keep the name
        request.url = request.url.copy_with(host=address)
        request.extensions = {**request.extensions, "sni_hostname": host}
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()
