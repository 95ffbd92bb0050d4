"""Where the studio can be reached from, and the proof links built from an address a client can open.

`launch` records a `Reach` on the `Studio` once the server runs: the local address, the LAN
addresses with ``--listen`` and the public link with ``--share``. A proof link is built from the
best address a client can open, and says plainly when there is none.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

LOCAL_ONLY = (
    "This link works only on this computer: your client cannot open it. To send it, restart the studio "
    "with --listen (clients on your network) or with --share --auth USER:PASSWORD (anywhere)."
)

NO_LAN_ADDRESS = (
    "The studio listens on your network, but no network address of this computer was found: give your "
    "client this computer's address in place of 127.0.0.1, or restart with --share --auth USER:PASSWORD."
)


@dataclass(frozen=True)
class Reach:
    """The studio's addresses: on this computer, on the local network, on a public link."""

    local: str
    lan: tuple[str, ...] = ()
    """``http://<LAN address>:<port>`` for each network address, with ``--listen``."""
    share: str | None = None
    """The public link, with ``--share``."""
    listen: bool = False
    """Served on every network interface (``--listen``), whether or not an address was found."""


@dataclass(frozen=True)
class ProofLink:
    url: str
    note: str
    """Who can open it, in a sentence."""


def lan_hosts(candidates: list[str] | None = None) -> list[str]:
    """This computer's IPv4 network addresses (no loopback, link-local or unspecified ones).

    ``candidates`` replaces the addresses found on the machine (tests).
    """
    found = _machine_addresses() if candidates is None else candidates
    hosts = []
    for host in dict.fromkeys(found):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue
        if address.version == 4 and not (
            address.is_loopback or address.is_link_local or address.is_unspecified
        ):
            hosts.append(host)
    return hosts


def _machine_addresses() -> list[str]:
    found = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a documentation address: UDP connect sends nothing
        found.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    return found


def served(
    local_url: str, port: int, *, listen: bool, share_url: str | None, hosts: list[str] | None = None
) -> Reach:
    """The `Reach` of a launched studio (``hosts``: `lan_hosts()` unless given)."""
    lan = (
        tuple(f"http://{host}:{port}" for host in (lan_hosts() if hosts is None else hosts)) if listen else ()
    )
    share = share_url.rstrip("/") if share_url else None
    return Reach(local=local_url.rstrip("/"), lan=lan, share=share, listen=listen)


def start_lines(reach: Reach) -> list[str]:
    """The start-up lines on the addresses others can use."""
    lines = [f"On your network: {url}" for url in reach.lan]
    if reach.listen and not reach.lan:
        lines.append(NO_LAN_ADDRESS)
    if reach.share:
        lines.append(f"Public link (login required): {reach.share}")
    return lines


def proof_link(token: str, reach: Reach | None, origin: str | None = None) -> ProofLink:
    """The gallery ``token``'s link from the best address a client can open, and who can open it.

    Without a `Reach` (a studio not started by `launch`), the link uses ``origin``, the address
    the photographer's browser uses.
    """
    path = f"/proof/{token}/"
    if reach is not None and reach.share:
        return ProofLink(
            reach.share + path,
            "Public link: your client can open it anywhere while the studio runs with --share.",
        )
    if reach is not None and reach.lan:
        others = f" (also {', '.join(url + path for url in reach.lan[1:])})" if len(reach.lan) > 1 else ""
        return ProofLink(
            reach.lan[0] + path,
            f"Network link: your client can open it on the same network as this computer{others}.",
        )
    base = reach.local if reach is not None else (origin or "").rstrip("/")
    if reach is not None and reach.listen:
        return ProofLink(base + path, NO_LAN_ADDRESS)
    if _loopback(base):
        return ProofLink(base + path, LOCAL_ONLY)
    return ProofLink(base + path, "This link uses the address your browser uses for the studio.")


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or not host:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
