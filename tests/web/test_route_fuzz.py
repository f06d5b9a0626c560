"""Every route of the app, and the lean transport's UDP port, fed hostile
input: junk path parameters, queries, headers and bodies of every content
type, with and without the admin token; datagrams of every first-byte class
on the lean port. Nothing may crash the process, and no answer may be a 5xx
of our own (a 503 saying when to come back, the cap's answer, is meant).
The default suite sends a sample; ``make test-slow`` 20,000 of each."""
from __future__ import annotations

import collections
import json
import logging
import random
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support.webrtc import synthetic_offer
from tests.web.conftest import ADMIN, IDLE, make_config, open_server
import trio.lowlevel

pytestmark = pytest.mark.trio

WORDS = ["", "main", "tone", "tone-main", "nope", "..", "../../etc/passwd", "%2e%2e%2f", "%00",
         "a" * 300, "é", "\u202e", "_listen-0123456789ab", "_listen-main~mono", "main~mono",
         "0", "-1", "1e308", "NaN", "null", "[]", "{}", "<script>", "'; DROP TABLE x; --",
         "con", "\\\\?\\C:", "*", "~", "main/../main", "x" * 33]
STREAMS = {"/api/events", "/api/listen/events"}


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(WORDS)
    if kind == 1:
        return rng.choice([0, -1, 1, 2**63, -2**63, 10**30, 0.5, 1e308, -0.0])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 40)))
    if kind == 4:
        return rng.choice(["opus", "alsa", "tone", "file", "clicks", "default", "hw:0"])
    if kind == 5:
        return rng.uniform(-1e6, 1e6)
    if kind == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    keys = ["id", "kind", "name", "source_id", "sink_id", "gain_db", "muted", "delay_ms",
            "language", "description", "public", "password", "code", "pin", "device", "path",
            "channels", "value", "candidate", "sdpMid", "sdpMLineIndex", "tone_hz"]
    return {rng.choice(keys + WORDS): _json_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 6))}


def _body(rng: random.Random) -> tuple[str | None, bytes]:
    kind = rng.randrange(8)
    if kind == 0:
        return "application/json", json.dumps(_json_value(rng)).encode()
    if kind == 1:
        return "application/json", rng.choice([b"{", b"[" * 5000, b"\xff\xfe", b"nul", b"1e99999"])
    if kind == 2:
        offer = synthetic_offer()
        lines = offer.split("\r\n")
        rng.shuffle(lines) if rng.random() < 0.3 else None
        return "application/sdp", "\r\n".join(lines).encode()
    if kind == 3:
        return "application/trickle-ice-sdpfrag", rng.choice([
            b"a=ice-ufrag:x\r\na=ice-pwd:y\r\n", b"a=candidate:1 1 udp 1 255.255.255.255 9 typ host",
            b"m=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:" + b"9" * 600, b"\x00" * 20])
    if kind == 4:
        return rng.choice(["text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                           "application/sdp; charset=x", "\u00e9/\u00e9", ""]), rng.randbytes(rng.randrange(0, 300))
    if kind == 5:
        return None, b""
    if kind == 6:
        return "application/json", json.dumps({"pin": rng.choice(WORDS), "password": "x" * 5000}).encode()
    return "application/octet-stream", rng.randbytes(rng.randrange(0, 70000))


def _path(rng: random.Random, rule: str) -> str:
    out = rule
    for name in ("<any(sources, sinks, routes):collection>", "<entity_id>", "<sink_id>",
                 "<session_id>", "<route_id>", "<source_id>", "<name>", "<path:filename>"):
        if name in out:
            value = rng.choice(["sources", "sinks", "routes"]) if "collection" in name \
                else rng.choice(WORDS) or "x"
            out = out.replace(name, httpx.URL("/" + value).raw_path.decode()[1:], 1)
    if rng.random() < 0.4:
        out += "?" + "&".join(f"{rng.choice(['mono', 'clear', 'balance', 'x', 'token', ''])}="
                              f"{rng.choice(['1', '0', '-25', 'true', '1e2', '%00', ''])}"
                              for _ in range(rng.randrange(1, 4)))
    return out


def _headers(rng: random.Random) -> dict[str, str]:
    headers: dict[str, str] = {}
    if rng.random() < 0.3:
        headers.update(ADMIN)
    elif rng.random() < 0.3:
        headers["Authorization"] = rng.choice(["Bearer", "Bearer x", "Basic eDp5", "bearer  x  y",
                                               "Bearer " + "a" * 3000])
    if rng.random() < 0.2:
        headers["Origin"] = rng.choice(["null", "http://evil.example", "http://127.0.0.1"])
    if rng.random() < 0.2:
        headers["If-Match"] = rng.choice(["*", '"x"', "", "W/\"1\""])
    if rng.random() < 0.1:
        headers["X-CSRF-Token"] = rng.choice(["", "x" * 100])
    if rng.random() < 0.05:
        headers["Cookie"] = rng.choice(["appliance_admin=x", "appliance_listen=" + "f" * 64, "a=" * 50])
    return headers


def hostile_requests(seed: int, count: int, rules: list[tuple[str, list[str]]]) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        rule, methods = rng.choice(rules)
        method = rng.choice(methods + ["PUT", "OPTIONS", "HEAD"] if rng.random() < 0.1 else methods)
        kind, body = _body(rng)
        headers = _headers(rng)
        if kind is not None:
            headers["Content-Type"] = kind
        out.append((method, _path(rng, rule), headers, body))
    return out


def hostile_datagrams(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        first = rng.choice([rng.randrange(0, 4), rng.randrange(20, 64), rng.randrange(128, 192),
                            rng.randrange(256)])
        body = rng.randbytes(rng.choice([0, 1, 19, 20, 47, 100, 1200, 1500]))
        if first < 4 and len(body) >= 19 and rng.random() < 0.5:
            body = bytes([1, len(body) % 256]) + b"\x21\x12\xa4\x42" + body[6:]   # STUN magic
        out.append(bytes([first]) + body)
    return out


async def _fuzz(tmp_path: Path, requests: int, datagrams: int, seed: int,
                caplog: pytest.LogCaptureFixture) -> None:
    async with open_server(make_config(tmp_path, connect_timeout_s=1.0)) as server:
        rules = [(r.rule, sorted(m for m in r.methods if m not in ("HEAD", "OPTIONS")))
                 for r in server.app.url_map.iter_rules()]
        statuses: collections.Counter[int] = collections.Counter()
        ours: list[tuple] = []
        lean_port = server.service.engine.stats().lean_port
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            limit = trio.CapacityLimiter(16)

            async def one(method: str, path: str, headers: dict[str, str], body: bytes) -> None:
                async with limit:
                    try:
                        raw = {k: v.encode("utf-8") for k, v in headers.items()}
                        async with client.stream(method, path, headers=raw, content=body) as r:
                            if path.split("?")[0] not in STREAMS or r.status_code != 200:
                                await r.aread()
                    except httpx.HTTPError as error:   # a refused or cut connection: no answer
                        statuses[-1] += 1
                        if isinstance(error, httpx.RemoteProtocolError):
                            return
                        raise
                    statuses[r.status_code] += 1
                    if r.status_code >= 500 and not (r.status_code == 503
                                                     and "Retry-After" in r.headers):
                        ours.append((r.status_code, method, path, headers, body[:200],
                                     r.text[:200]))

            async def udp() -> None:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.setblocking(False)
                    for i, datagram in enumerate(hostile_datagrams(seed, datagrams)):
                        try:
                            s.sendto(datagram, ("127.0.0.1", lean_port))
                        except BlockingIOError:
                            pass
                        if i % 64 == 0:
                            await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(udp)
                for request in hostile_requests(seed, requests, rules):
                    nursery.start_soon(one, *request)
        print(f"\nroute fuzz: {requests} requests, {datagrams} datagrams: {dict(statuses)}")
        for item in ours[:5]:
            print("5xx:", item)
        assert not ours, f"{len(ours)} 5xx of our own (printed above)"
        # nor a connection that failed inside the server
        failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not failed, failed[:5]
        # alive, answering (the admin token from this address is throttled
        # now, like every credential guessed at), nothing left behind
        # once the sessions end
        assert (await server.client.get("/healthz")).status_code == 200
        assert (await server.client.get("/api/listen/channels", headers={})).status_code == 200
        for session in list(server.service.sessions):
            await server.service.sessions.close(session)
        assert server.service.census() == IDLE


async def test_hostile_input_on_every_route_and_the_lean_port(tmp_path, caplog):
    await _fuzz(tmp_path, requests=1500, datagrams=3000, seed=20261206, caplog=caplog)


@pytest.mark.slow
async def test_hostile_input_on_every_route_and_the_lean_port_long(tmp_path, caplog):
    await _fuzz(tmp_path, requests=20000, datagrams=20000, seed=7, caplog=caplog)
