"""Outbound HTTP with a guard: the one way steplog calls a URL someone else chose
(webhooks, HTTP tasks).

Contracts
- `Outbound(policy)` owns one aiohttp ClientSession (`await start()`, `await close()`,
  or `async with`); `request(...)` sends one request and returns an `OutboundResponse`.
- Every call has a connect timeout and a total timeout (`OutboundPolicy`), reads at most
  `max_response_bytes` of the body (beyond: `OutboundTooLarge`, or the body cut there
  with `truncated=True` when the caller asks for an excerpt only), and follows no
  redirect: a 3xx is returned as it is, so a redirect can never lead to another host.
  No proxy from the environment is used (trust_env off).
- The address guard: by default no connection to a loopback, private (RFC 1918, CGNAT),
  link-local, unique-local, site-local, multicast, reserved or unspecified address, nor
  to a cloud metadata address (169.254.169.254, fd00:ec2::254, 100.100.100.200, ...);
  IPv4-mapped IPv6 addresses are judged by their IPv4 address. The check runs on the
  addresses the connector is about to connect to: a literal IP in the URL is checked
  before the request, a host name by the connector's resolver (`_GuardedResolver`), whose
  answer is the very list the connector connects to, so a name that resolves to a public
  address when checked and a private one later (DNS rebinding) does not get through.
  Resolved addresses that are refused are dropped; when none is left the call fails.
- `OutboundPolicy.allow` (setting STEPLOG_OUTBOUND_ALLOW: comma separated CIDRs and host
  names, e.g. "127.0.0.1/32,::1/128,localhost") lets chosen addresses or names through:
  a CIDR allows the addresses in it, a host name allows whatever that name resolves to.
- Failures come out in this module's vocabulary only (all `OutboundError`):
  `OutboundRefused` (the guard, or a URL that is not http(s)), `OutboundTimeout`,
  `OutboundTooLarge`, `OutboundConnectionFailed` (DNS, refused or reset connection, TLS,
  a malformed response). The driver's exception is chained, never returned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from engine.errors import SteplogError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance metadata endpoints (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS
# IPv6: fd00:ec2::254; Alibaba: 100.100.100.200; Oracle: 192.0.0.192). Most fall in the
# ranges below anyway; they are named so that no allow-list CIDR lets them through.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


class OutboundError(SteplogError):
    """An outbound HTTP call that did not produce a response (see the subclasses)."""

    code = "outbound_error"
    status = 502


class OutboundRefused(OutboundError):
    """The guard refused the destination (address not allowed, or not an http(s) URL)."""

    code = "outbound_refused"
    status = 422


class OutboundTimeout(OutboundError):
    code = "outbound_timeout"
    status = 504


class OutboundTooLarge(OutboundError):
    code = "outbound_response_too_large"
    status = 502


class OutboundConnectionFailed(OutboundError):
    code = "outbound_connection_failed"
    status = 502


class OutboundPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What every outbound call is held to (see the module doc)."""

    connect_timeout_s: float = 5.0
    total_timeout_s: float = 15.0
    max_response_bytes: int = 1_048_576
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.connect_timeout_s <= 0 or self.total_timeout_s <= 0:
            raise ValueError("outbound timeouts must be positive")
        if self.max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")

    def address_allowed(self, address: IPAddress) -> bool:
        """Whether the guard lets a connection to ``address`` through (by itself, without
        an allowed host name)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address in METADATA_ADDRESSES:
            return False  # never, whatever CIDR is allowed
        if any(address in net for net in self.allow_networks if net.version == address.version):
            return True
        return is_public(address)


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address and no metadata endpoint."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address in _SITE_LOCAL:
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
    )


def parse_allow(text: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """STEPLOG_OUTBOUND_ALLOW: comma separated CIDRs (or single addresses) and host names.
    ValueError naming the bad entry."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        if not name or "/" in name or any(c.isspace() or c in ":[]@" for c in name):
            raise ValueError(f"not a CIDR or a host name: {entry!r}")
        hosts.add(name)
    return tuple(networks), frozenset(hosts)


class OutboundResponse(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # The body was longer than the cap and is cut there (only when truncate=True).
    truncated: bool = False
    latency_s: float = 0.0


class _GuardedResolver(AbstractResolver):
    """The default resolver, with the addresses the policy refuses dropped."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower().rstrip(".") in self._policy.allow_hosts:
            results = [r for r in results if _ip(r["host"]) not in METADATA_ADDRESSES]
            if results:
                return results
        allowed = [r for r in results if self._policy.address_allowed(_ip(r["host"]))]
        if not allowed:
            shown = ", ".join(sorted({r["host"] for r in results}))
            raise OutboundRefused(f"{host} resolves to addresses not allowed: {shown}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _ip(host: str) -> IPAddress:
    return ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id


def check_url(url: str | URL, policy: OutboundPolicy) -> URL:
    """The URL parsed, when its scheme is http(s) and, for a literal IP host, the guard
    allows it (a host name is checked at connect time). OutboundRefused otherwise."""
    try:
        parsed = URL(url) if isinstance(url, str) else url
        host = parsed.host
    except (ValueError, TypeError) as exc:
        raise OutboundRefused(f"not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not host:
        raise OutboundRefused("only absolute http:// and https:// URLs are allowed")
    if parsed.user is not None or parsed.password is not None:
        raise OutboundRefused("URLs with credentials (user:password@) are not allowed")
    try:
        literal: IPAddress | None = _ip(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        allowed = host.lower() in policy.allow_hosts or policy.address_allowed(literal)
        if not allowed:
            raise OutboundRefused(f"address not allowed: {host}")
    return parsed


class Outbound:
    """One guarded client session (see the module doc)."""

    def __init__(self, policy: OutboundPolicy, *, user_agent: str = "steplog") -> None:
        self.policy = policy
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_GuardedResolver(self.policy),
                limit=100,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                auto_decompress=True,
                headers={"User-Agent": self.user_agent},
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Outbound:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
        truncate: bool = False,
        total_timeout_s: float | None = None,
    ) -> OutboundResponse:
        """Send one request under the policy; see the module doc for what it raises."""
        if self._session is None:
            raise RuntimeError("Outbound.start() was not called")
        target = check_url(url, self.policy)
        total = min(total_timeout_s or self.policy.total_timeout_s, self.policy.total_timeout_s)
        timeout = aiohttp.ClientTimeout(
            total=total,
            connect=min(self.policy.connect_timeout_s, total),
            sock_connect=min(self.policy.connect_timeout_s, total),
        )
        cap = self.policy.max_response_bytes
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"allow_redirects": False, "timeout": timeout}
        try:
            async with self._session.request(
                method, target, headers=headers, data=body, **kwargs
            ) as response:
                declared = response.content_length
                if declared is not None and declared > cap and not truncate:
                    raise OutboundTooLarge(f"response of {declared} bytes, the cap is {cap}")
                content = bytearray()
                while len(content) <= cap:  # one byte past the cap tells "too large"
                    more = await response.content.read(cap + 1 - len(content))
                    if not more:
                        break
                    content += more
                truncated = len(content) > cap
                if truncated and not truncate:
                    raise OutboundTooLarge(f"response larger than the cap of {cap} bytes")
                return OutboundResponse(
                    status=response.status,
                    headers=tuple((k, v) for k, v in response.headers.items()),
                    body=bytes(content[:cap]),
                    truncated=truncated,
                    latency_s=time.perf_counter() - started,
                )
        except OutboundError:
            raise
        except TimeoutError as exc:  # asyncio.TimeoutError and aiohttp's timeouts
            raise OutboundTimeout(f"no complete response within {total:g} s") from exc
        except (aiohttp.ClientError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
            refused = _refusal_in(exc)
            if refused is not None:
                raise refused from exc
            raise OutboundConnectionFailed(f"{type(exc).__name__}: {exc}") from exc


def _refusal_in(exc: BaseException) -> OutboundRefused | None:
    """The guard's refusal when the driver wrapped it in one of its own errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OutboundRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
