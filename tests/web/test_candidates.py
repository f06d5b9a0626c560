"""A stranger's candidates do not aim the box's connectivity checks: an offer
or a PATCH that goes to webrtcbin (the lean transport never checks: it is
ICE-lite) gets at most 8 candidates an m-line to webrtcbin, none at an
address no peer has (multicast, broadcast, unspecified, link-local, a
privileged port, the box's own), and the checks go out one per 50 ms at
most. Before (measured): 200 candidates made the box send 296 Binding
requests to 100 of them, 50 a second."""
from __future__ import annotations

import dataclasses
import socket
import time

import pytest
import trio

from tests.support.webrtc import synthetic_offer
from tests.web.conftest import make_config, open_server

pytestmark = pytest.mark.trio

# the checks to 8 candidates are over in ~2 s (three sends each, 50 ms apart)
LISTEN_S = 3.5


def _webrtcbin_config(tmp_path):
    config = make_config(tmp_path)
    return config.replace(engine=dataclasses.replace(config.engine, transport="webrtcbin"))


def _sockets(count: int, first: int = 2) -> list[socket.socket]:
    """Listening UDP sockets, each on its own loopback address
    (127.0.0.<first>, ...)."""
    out = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.0.{first + i}", 0))
        s.setblocking(False)
        out.append(s)
    return out


def _candidate(n: int, host: str, port: int, transport: str = "udp") -> str:
    return f"candidate:{n} 1 {transport} {2130706431 - n} {host} {port} typ host"


def _own_address() -> str | None:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _forbidden(port: int) -> list[str]:
    """Addresses no peer's agent has: each would take one of the 8 places if
    it were kept."""
    return [_candidate(900 + i, host, p, transport) for i, (host, p, transport) in enumerate([
        ("239.1.2.3", port, "udp"),          # multicast
        ("224.0.0.251", 5353, "udp"),        # mDNS's group
        ("255.255.255.255", port, "udp"),    # broadcast
        ("0.0.0.0", port, "udp"),            # unspecified
        ("0.1.2.3", port, "udp"),            # "this network"
        ("169.254.10.20", port, "udp"),      # link-local
        ("240.1.2.3", port, "udp"),          # reserved
        ("127.0.0.250", 53, "udp"),          # a privileged port: a DNS server
        ("127.0.0.250", port, "tcp"),        # ICE-TCP is off
        ("::", port, "udp"),
        ("ff02::1", port, "udp"),
        ("fe80::1", port, "udp"),
        ("::ffff:239.1.2.3", port, "udp"),
    ])]


async def _arrivals(socks: list[socket.socket], seconds: float) -> list[int]:
    """Datagrams that reach each socket within ``seconds``."""
    counts = [0] * len(socks)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, s in enumerate(socks):
            while True:
                try:
                    s.recv(2048)
                except BlockingIOError:
                    break
                counts[i] += 1
        await trio.sleep(0.01)
    return counts


async def test_an_offer_with_200_candidates_aims_checks_at_8(tmp_path):
    socks = _sockets(200)
    own = _own_address()
    own_sock = None
    if own is not None:
        own_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        own_sock.bind((own, 0))
        own_sock.setblocking(False)
    try:
        port = socks[0].getsockname()[1]
        lines = _forbidden(port)
        if own_sock is not None:   # the box's own address: checks at itself
            lines.append(_candidate(950, own, own_sock.getsockname()[1]))
        lines += [_candidate(i, *s.getsockname()) for i, s in enumerate(socks)]
        offer = synthetic_offer() + "".join(f"a={c}\r\n" for c in lines)
        async with open_server(_webrtcbin_config(tmp_path)) as server:
            r = await server.post_offer(offer)
            assert r.status_code == 201, r.text
            counts = await _arrivals(socks + ([own_sock] if own_sock else []), LISTEN_S)
        if own_sock is not None:
            assert counts.pop() == 0
        # the first 8 that may be checked are, and nothing else is: the
        # forbidden ones before them took no place
        assert all(counts[:8]), counts[:8]
        assert not any(counts[8:]), [i for i, c in enumerate(counts) if c]
        assert sum(counts) <= 8 * 4
    finally:
        for s in socks + ([own_sock] if own_sock else []):
            s.close()


async def test_trickled_candidates_count_with_the_offers(tmp_path):
    """The 8 an m-line are the offer's and every PATCH's together, in either
    trickle format; a forbidden one takes no place."""
    socks = _sockets(30)
    try:
        offer = synthetic_offer() + "".join(
            f"a={_candidate(i, *s.getsockname())}\r\n" for i, s in enumerate(socks[:3]))
        async with open_server(_webrtcbin_config(tmp_path)) as server:
            r = await server.post_offer(offer)
            assert r.status_code == 201, r.text
            url = r.headers["Location"]
            port = socks[0].getsockname()[1]
            fragment = "a=mid:0\r\n" + "".join(
                f"a={c}\r\n" for c in _forbidden(port) +
                [_candidate(100 + i, *s.getsockname()) for i, s in enumerate(socks[3:6])])
            r = await server.client.patch(url, content=fragment,
                                          headers={"Content-Type": "application/trickle-ice-sdpfrag"})
            assert r.status_code == 204, r.text
            r = await server.client.patch(url, json=[
                {"candidate": _candidate(200 + i, *s.getsockname()), "sdpMid": "0"}
                for i, s in enumerate(socks[6:])])
            assert r.status_code == 204, r.text
            counts = await _arrivals(socks, LISTEN_S)
        assert all(counts[:8]), counts[:8]
        assert not any(counts[8:]), [i for i, c in enumerate(counts) if c]
    finally:
        for s in socks:
            s.close()
