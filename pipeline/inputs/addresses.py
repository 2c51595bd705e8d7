"""Which network addresses an outbound request may reach, and DNS resolution.

Only globally routable unicast addresses are public. Loopback, private, link-local,
shared (CGNAT), reserved, multicast and unspecified addresses are refused unless
``allow_private_networks`` is on; an IPv6 address that embeds an IPv4 one (mapped,
NAT64 ``64:ff9b::/96``, IPv4-compatible, IPv4-translated, 6to4, Teredo) is judged by the
embedded address too, and NAT64's local-use ``64:ff9b:1::/48`` is never public.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable

from pipeline.errors import InputError, TransportError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``resolver(host, port) -> addresses``; tests swap it to play DNS.
Resolver = Callable[[str, int], list[IPAddress]]

#: getaddrinfo errors that mean the name does not exist (not a transient failure).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def parse_ip(host: str) -> IPAddress | None:
    """The address if ``host`` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


#: IPv6 ranges whose low 32 bits are the IPv4 address the packets end up at: NAT64's
#: well-known prefix (RFC 6052), IPv4-compatible (RFC 4291, deprecated) and
#: IPv4-translated (SIIT, RFC 2765) addresses. (IPv4-mapped, 6to4 and Teredo are read
#: with the stdlib's own properties.)
_LOW32_EMBEDDING = tuple(ipaddress.ip_network(n) for n in
                         ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
#: Never public, whatever they embed: NAT64's local-use prefix (RFC 8215) translates
#: into the operator's own networks.
_LOCAL_ONLY = tuple(ipaddress.ip_network(n) for n in ("64:ff9b:1::/48",))


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries (mapped, NAT64, compatible, translated,
    6to4, both ends of Teredo); none for an IPv4 address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if any(ip in net for net in _LOW32_EMBEDDING):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address whose embedded IPv4 addresses (if
    any) are all public too. Loopback, private, link-local, shared, reserved, multicast,
    unspecified and local-use NAT64 addresses are not."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or any(ip in net for net in _LOCAL_ONLY):
            return False
    for candidate in (ip, *embedded_ipv4(ip)):
        if not candidate.is_global or candidate.is_multicast or candidate.is_unspecified:
            return False
    return True


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates.

    A name that does not exist is a permanent ``input.unreachable``; any other resolver
    failure is a recoverable ``transport.error``.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            raise InputError(f"host {host} does not resolve", code="input.unreachable") from None
        raise TransportError(f"cannot resolve host {host}: {exc.strerror}") from None
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise TransportError(f"cannot resolve host {host}: {reason}") from None
    seen: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


#: The resolver every outbound request uses; a module attribute so tests can swap it.
resolver: Resolver = system_resolver


def resolve_checked(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """Resolve once and check every answer: one refused answer refuses the host.

    The caller connects to these addresses only (never resolves again), so a DNS answer
    that changes between this check and the connection cannot reach a refused address.
    """
    literal = parse_ip(host)
    addresses = [literal] if literal is not None else resolver(host, port)
    if not addresses:
        raise InputError(f"host {host} does not resolve", code="input.unreachable")
    if not allow_private:
        for ip in addresses:
            if not is_public(ip):
                raise InputError(
                    f"host {host} resolves to non-public address {ip}; "
                    "set SONIC_ALLOW_PRIVATE_NETWORKS to allow it",
                    code="input.forbidden_url",
                )
    return addresses
