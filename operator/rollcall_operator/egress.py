"""Where the operator may send a completion webhook: SSRF rules for ``spec.callback.url``.

A callback URL is written by whoever can create an RJ (a school), yet the POST leaves from the
operator, inside the cluster. Without rules a school could make the operator reach the cloud
metadata service, loopback ports, the apiserver or another school's services, and learn from
``status.webhook`` whether they answered. So, by default, only public unicast addresses are reached:

- ``vet_url`` (pure): scheme (https; http only with an explicit opt-in), no userinfo, no cluster
  names (``*.svc``, ``*.cluster.local``, single-label names, ``localhost``), literal IPs vetted,
  numeric IPv4 shorthands (``127.1``, ``0x7f.1``) refused; all checked on the host as the client
  dials it (IDNA-folded, so full-width digits cannot smuggle in ``127.0.0.1``);
- ``vet_address`` (pure): an address is denied when it is private, loopback, link-local, CGNAT,
  multicast, reserved, unspecified or documentation space, IPv4 embedded in IPv6 (mapped, NAT64,
  6to4, Teredo) included, or inside an operator-configured cluster range;
- ``VettingResolver``: the aiohttp resolver that resolves a name once and returns only the vetted
  addresses, so the connector connects to exactly what was vetted (a DNS answer that changes between
  a check and the connect, "DNS rebinding", cannot slip in a private address); aiohttp keeps the
  original name for the Host header and TLS SNI.

An ``Allowlist`` (operator settings, chart values) lets named destinations through anyway: CIDRs,
and host names (exact, or ``*.suffix``) whose every resolved address is then accepted.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from rollcall_contract.model import NON_PUBLIC_CIDRS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not reachable from the public internet, or not unicast: never a school's webhook receiver.
DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in NON_PUBLIC_CIDRS)
# IPv6 prefixes that carry an IPv4 address: the embedded address is what gets reached.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CLUSTER_SUFFIXES = (".svc", ".cluster.local", ".local", ".internal", ".localhost")
# A last label that is a number makes the whole host an IPv4 address to inet_aton and WHATWG URLs.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class EgressDenied(Exception):
    """The destination is not allowed; the message is safe to show to the RJ's owner."""


@dataclass(frozen=True)
class Allowlist:
    """Destinations let through although the default rules deny them (operator settings)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()  # lower-case; "*.example.org" matches sub-domains
    denied: tuple[IPNetwork, ...] = field(default=())  # extra cluster ranges (pod/service CIDRs)
    allow_http: bool = False

    @classmethod
    def parse(
        cls,
        cidrs: Iterable[str] = (),
        hosts: Iterable[str] = (),
        denied: Iterable[str] = (),
        allow_http: bool = False,
    ) -> Allowlist:
        return cls(
            networks=tuple(ipaddress.ip_network(c, strict=False) for c in cidrs),
            hosts=tuple(h.strip().lower().rstrip(".") for h in hosts if h.strip()),
            denied=tuple(ipaddress.ip_network(c, strict=False) for c in denied),
            allow_http=allow_http,
        )

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and host != pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]  # the client's address
    for net in _NAT64:
        if addr in net:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def denied_reason(addr: IPAddress, allow: Allowlist) -> str | None:
    """Why ``addr`` may not be reached (None: it may). Allowlisted networks win over the rules."""
    if any(addr in net for net in allow.networks if net.version == addr.version):
        return None
    if any(addr in net for net in allow.denied if net.version == addr.version):
        return "cluster-range"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return "scoped"
        if (inner := _embedded_ipv4(addr)) is not None:
            return denied_reason(inner, allow)
    if any(addr in net for net in DENIED_NETWORKS if net.version == addr.version):
        return "non-public"
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_reserved:
        return "non-public"  # unallocated IPv6 (::/8 with SIIT's ::ffff:0:0:0/96, 4000::/3, ...)
    if not addr.is_global:
        return "non-public"
    return None


def vet_address(text: str, allow: Allowlist) -> IPAddress:
    """The parsed address when it may be reached, else EgressDenied."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError as e:
        raise EgressDenied("the callback address is not an IP address") from e
    if denied_reason(addr, allow) is not None:
        raise EgressDenied("the callback destination is not allowed")
    return addr


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _dialled_host(url: str) -> str:
    """The host as aiohttp will dial it: yarl's parse, IDNA-folded (full-width digits become
    ASCII ones, so a full-width spelling of 127.0.0.1 is 127.0.0.1).

    Vetting any other spelling would let Unicode digits, dots or letters pass as a "name" and then
    reach the connector as an IP literal (which skips the vetting resolver) or a cluster name.
    """
    try:
        parsed = URL(url)
        host = parsed.raw_host or ""
    except (ValueError, UnicodeError) as e:
        raise EgressDenied("the callback URL is malformed") from e
    if parsed.user is not None or parsed.password is not None:
        raise EgressDenied("the callback URL must not carry credentials")
    return host.lower().rstrip(".")


def vet_url(url: str, allow: Allowlist) -> str:
    """The host the client will dial when the URL may be used, else EgressDenied (no DNS lookup)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise EgressDenied("the callback URL is malformed") from e
    if parts.scheme not in ("https", "http"):
        raise EgressDenied("the callback URL must be https")
    if parts.scheme == "http" and not allow.allow_http:
        raise EgressDenied("plain http callbacks are disabled: use https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EgressDenied("the callback URL must not carry credentials")
    if port == 0:
        raise EgressDenied("the callback URL has an invalid port")
    host = _dialled_host(url)
    if not host:
        raise EgressDenied("the callback URL has no host")
    if (literal := _literal_ip(host)) is not None:
        vet_address(str(literal), allow)
        return host
    if not all(c.isascii() and (c.isalnum() or c in "-.") for c in host):
        raise EgressDenied("the callback host name is not a DNS name")
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        # 127.1, 0177.0.0.1, 0x7f.1, 2130706433: inet_aton reads these as IPv4 addresses
        raise EgressDenied("the callback host is not a canonical IP address")
    if allow.host_allowed(host):
        return host
    if "." not in host or host == "localhost" or host.endswith(_CLUSTER_SUFFIXES):
        raise EgressDenied("the callback destination is not allowed")
    return host


class VettingResolver(AbstractResolver):
    """Resolve once; hand the connector only addresses that pass ``denied_reason``.

    Names in the allowlist keep all their addresses. When no address is left the lookup fails with
    ``EgressDenied`` and nothing is connected to.
    """

    def __init__(self, allow: Allowlist, inner: AbstractResolver | None = None) -> None:
        self.allow = allow
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        return vetted(host, answers, self.allow)

    async def close(self) -> None:
        await self.inner.close()


def vetted(host: str, answers: Sequence[ResolveResult], allow: Allowlist) -> list[ResolveResult]:
    """The answers that may be connected to (pure; the resolver's filter)."""
    if allow.host_allowed(host):
        return list(answers)
    kept = []
    for answer in answers:
        addr = _literal_ip(str(answer["host"]))
        if addr is not None and denied_reason(addr, allow) is None:
            kept.append(answer)
    if not kept:
        raise EgressDenied("the callback destination is not allowed")
    return kept
