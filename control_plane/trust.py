"""Which Triton servers the control plane trusts with its admin key and with a folder to sync into.

A registered server receives the Triton admin key on every load, and its repository_path is a folder the
sync deletes unknown entries from, so both are checked before anything is recorded or contacted: every
address the host name resolves to must lie in FLEET_ALLOWED_SERVER_NETWORKS (a name that resolves to one
allowed and one foreign address is refused: DNS picks which one a later request uses), and the
repository path must be inside FLEET_REPOSITORY_ROOT after resolving `..` and symlinks.
"""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit


class Untrusted(ValueError):
    """Why a server may not be registered, phrased so the caller knows what to change."""


def host_of(address: str) -> tuple[str, int | None]:
    """The host and port of an http(s) URL or of a gRPC `host:port`."""
    try:
        parts = urlsplit(address if "://" in address else f"//{address}")
        host, port = parts.hostname, parts.port
    except ValueError as error:  # a port past 65535, an unbalanced IPv6 bracket...
        raise Untrusted(f"'{address}' is not a valid address: {error}") from None
    if not host:
        raise Untrusted(f"'{address}' names no host")
    return host, port


def resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise Untrusted(f"host '{host}' does not resolve ({error.strerror}); use a name this control plane "
                        "can resolve, or an IP address") from None
    except (UnicodeError, ValueError) as error:  # e.g. a label IDNA cannot encode, or a NUL byte
        raise Untrusted(f"host {host!r} is not a valid host name ({error}); use a DNS name or an IP "
                        "address") from None
    return sorted({ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}, key=str)


def check_address(address: str, networks: list[str]) -> None:
    """Raise Untrusted unless every address `address`'s host resolves to is inside `networks`."""
    allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in networks]
    host, _ = host_of(address)
    for ip in resolve(host):
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if not any(mapped.version == net.version and mapped in net for net in allowed):
            raise Untrusted(f"'{address}' resolves to {ip}, which is outside the allowed server networks "
                            f"({', '.join(networks) or 'none'}); add its network to FLEET_ALLOWED_SERVER_NETWORKS "
                            "if this server should receive the Triton admin key")


def check_repository_path(path: str, root: Path) -> Path:
    """The resolved path if it lies strictly below `root`, else Untrusted naming the root."""
    root = root.expanduser().resolve()
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        raise Untrusted(f"repository_path '{path}' must be an absolute path below {root} (FLEET_REPOSITORY_ROOT)")
    resolved = candidate.resolve()
    if resolved == root or root not in resolved.parents:
        raise Untrusted(f"repository_path '{path}' is not below the repository root {root} "
                        "(FLEET_REPOSITORY_ROOT): the sync deletes unknown folders there, so it is confined")
    return resolved
