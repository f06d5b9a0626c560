"""The captive-portal redirect of the appliance's own hotspot.

A phone that joins the hotspot asks a well-known URL of its maker
(`http://captive.apple.com/hotspot-detect.html`,
`http://connectivitycheck.gstatic.com/generate_204`, ...); the hotspot's DNS
sends every name here. Answering such a request with a redirect to the listen
page makes the phone open it by itself. Only with
``[server] captive_redirect`` set (first boot sets it in hotspot mode): on a
venue LAN the appliance may be reached by any name that LAN's DNS gives it.
"""
from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_own_host", "own_names"]


def own_names(hostname: str | None = None) -> frozenset[str]:
    name = (hostname or socket.gethostname()).lower().rstrip(".")
    return frozenset({name, f"{name}.local", "localhost"})


def _strip_port(host: str) -> str:
    if host.startswith("["):   # [IPv6]:port
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_own_host(host: str, names: frozenset[str]) -> bool:
    """Whether a request's Host names the appliance: one of its own names,
    or an address literal (the hotspot's firewall already sent any address
    here). An empty Host (HTTP/1.0) counts as its own."""
    host = _strip_port(host.strip().lower()).rstrip(".")
    if not host or host in names:
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
