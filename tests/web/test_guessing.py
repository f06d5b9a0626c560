"""Guessing a secret from many addresses. The throttle per address let 5,000
rotating addresses find a 4-digit venue PIN in 8.1 s (34,487 guesses a
minute). Each secret now has a budget of failed guesses across all
addresses (30 a minute, a burst of 30): past it, guesses are refused
unchecked, and the admin page says someone is guessing."""
from __future__ import annotations

import re
import time

import httpx
import pytest
import trio

from tests.support.webrtc import synthetic_offer
from tests.web.conftest import ADMIN, ADMIN_PASSWORD, make_config, open_server
from tests.support.trust import TRUST

pytestmark = pytest.mark.trio

BUDGET_PER_MIN, BURST = 30, 30


def addresses(n: int) -> list[str]:
    """n loopback addresses, none of them 127.0.0.1 (the test's own)."""
    return [f"127.{1 + i // 250}.{i % 250}.{7}" for i in range(n)]


async def rotate(server, path: str, bodies: list[dict], *, concurrency: int = 16
                 ) -> tuple[list[int], float]:
    """Each body from the next address, a few at a time; the statuses and
    the seconds it took."""
    statuses: list[int] = [0] * len(bodies)
    limit = trio.CapacityLimiter(concurrency)
    sources = addresses(len(bodies))

    async def one(i: int) -> None:
        async with limit:
            transport = httpx.AsyncHTTPTransport(local_address=sources[i], verify=TRUST)
            async with httpx.AsyncClient(base_url=server.url, transport=transport,
                                         timeout=15) as client:
                r = await client.post(path, json=bodies[i])
                statuses[i] = r.status_code

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(len(bodies)):
            nursery.start_soon(one, i)
    return statuses, time.monotonic() - started


def checked_per_minute(statuses: list[int], seconds: float) -> tuple[int, float]:
    """Guesses the server checked (401: wrong) and the most it may have
    checked in that time by its budget."""
    checked = statuses.count(401)
    return checked, BURST + BUDGET_PER_MIN * seconds / 60 + 1


@pytest.mark.parametrize("secret, path, field", [
    ("PIN", "/api/listen/pin", "pin"),
    ("password", "/api/admin/login", "password"),
])
async def test_rotating_addresses_get_a_few_dozen_checked_guesses(tmp_path, secret, path, field):
    config = make_config(tmp_path, listen_pin="4711")
    async with open_server(config) as server:
        guesses = [{field: f"{n:04d}" if field == "pin" else f"guess number {n}"}
                   for n in range(5000, 5150)]
        statuses, seconds = await rotate(server, path, guesses)
        checked, most = checked_per_minute(statuses, seconds)
        attempts_per_min = len(guesses) / seconds * 60
        print(f"\n{secret}: {len(guesses)} guesses from {len(guesses)} addresses in {seconds:.1f} s "
              f"({attempts_per_min:.0f}/min sent); {checked} checked, the rest refused unchecked")
        assert set(statuses) <= {401, 429}, statuses
        assert BURST <= checked <= most, (checked, most)
        # the admin page is told
        status = (await server.client.get("/api/status")).json()
        assert status["guessing"][secret] == statuses.count(429)
        # another secret's budget is its own: the admin still logs in
        if secret == "PIN":
            r = await server.client.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
            assert r.status_code == 200


async def test_the_right_pin_gets_in_when_the_budget_refills(tmp_path):
    """While guesses keep coming faster than the budget refills, the right
    PIN is refused unchecked like every other guess (nothing tells it apart
    from a stranger's); a guess is let through every 2 s, so once the flood
    pauses the right PIN gets in within seconds."""
    config = make_config(tmp_path, listen_pin="4711")
    async with open_server(config, headers={}) as server:
        statuses, _ = await rotate(server, "/api/listen/pin",
                                   [{"pin": f"{n:04d}"} for n in range(100, 160)])
        assert 429 in statuses
        started = time.monotonic()
        transport = httpx.AsyncHTTPTransport(local_address="127.9.9.9", verify=TRUST)
        async with httpx.AsyncClient(base_url=server.url, transport=transport) as phone:
            with trio.fail_after(5):
                while True:
                    r = await phone.post("/api/listen/pin", json={"pin": "4711"})
                    if r.status_code != 429:
                        break
                    await trio.sleep(float(r.headers["Retry-After"]))   # as the page does
            assert r.status_code == 204 and "appliance_listen" in r.headers["set-cookie"]
        assert time.monotonic() - started < 5


async def test_a_stranger_spending_the_budget_locks_out_neither_a_known_browser_nor_scripts(tmp_path):
    """A budget anyone may spend is also a way to lock everyone out. A
    browser that logged in before carries a device cookie and is not held
    up; a token too long to guess (20+ characters) has no budget at all."""
    async with open_server(make_config(tmp_path), headers={}) as server:
        # a guess back every 2 minutes, not 2 s: on a busy machine the
        # budget refilled between the flood and the fresh browser's try
        server.app.admin_auth.throttle.budget_per_min = 0.5
        transport = httpx.AsyncHTTPTransport(local_address="127.8.8.8", verify=TRUST)
        async with httpx.AsyncClient(base_url=server.url, transport=transport) as admin:
            r = await admin.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
            assert r.status_code == 200 and "appliance_device" in admin.cookies
            statuses, _ = await rotate(server, "/api/admin/login",
                                       [{"password": f"guess {n}"} for n in range(60)])
            assert 429 in statuses
            # a browser never seen before waits like any stranger ...
            transport = httpx.AsyncHTTPTransport(local_address="127.8.8.9", verify=TRUST)
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as fresh:
                r = await fresh.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
                assert r.status_code == 429
            # ... the admin's own browser logs in, and a forged device cookie is no pass
            r = await admin.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
            assert r.status_code == 200
        transport = httpx.AsyncHTTPTransport(local_address="127.8.8.10", verify=TRUST)
        async with httpx.AsyncClient(base_url=server.url, transport=transport,
                                     headers={"Cookie": "appliance_device=" + "0" * 32 + ".00"}
                                     ) as forged:
            r = await forged.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
            assert r.status_code == 429
        # guessing at the (long) token spends no budget: scripts elsewhere go on
        statuses, _ = await rotate(server, "/api/status", [{} for _ in range(40)])
        r = await server.client.get("/api/status", headers=ADMIN)
        assert r.status_code == 200 and "admin token" not in r.json()["guessing"]


async def test_a_signs_code_opens_the_channel_at_once_while_strangers_guess_at_the_pin(tmp_path):
    """Nothing tells a typed right PIN from a stranger's guess, so during a
    flood it waits for the budget like them. The signs' codes carry the
    PIN's long form (26 base32 characters, made from the PIN with the box's
    key): no guess budget, so a listener who scans gets in at once; a wrong
    long key is refused without spending the PIN's budget."""
    config = make_config(tmp_path, listen_pin="4711")
    async with open_server(config, headers={}) as server:
        r = await server.client.post("/api/listen/pin", json={"pin": "4711"})
        assert r.status_code == 204
        sign = (await server.client.get("/signs")).text
        key = re.search(r'data-url="http://[^"#]+/listen/main#key=([a-z2-7]{26})"', sign).group(1)
        assert "key=" not in re.search(r'<p class="address"[^>]*>([^<]*)<', sign).group(1)
        server.client.cookies.clear()

        flood_refused = trio.Event()

        async def flood() -> None:   # wrong PINs from rotating addresses, until cancelled
            n = 0
            while True:
                statuses, _ = await rotate(server, "/api/listen/pin",
                                           [{"pin": f"{n + i:04d}"} for i in range(32)])
                n += 32
                if 429 in statuses:
                    flood_refused.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await flood_refused.wait()
            transport = httpx.AsyncHTTPTransport(local_address="127.9.9.9", verify=TRUST)
            async with httpx.AsyncClient(base_url=server.url, transport=transport,
                                         timeout=15) as phone:
                # the typed PIN is held up with the flood ...
                assert (await phone.post("/api/listen/pin", json={"pin": "4711"})).status_code == 429
                # ... a long key is checked outside the spent budget (a wrong one: 401) ...
                wrong = await phone.post("/api/listen/pin", json={"pin": "a" * 26})
                assert wrong.status_code == 401
                # ... the sign's key gets in at once, as a cookie or a bearer
                started = time.monotonic()
                r = await phone.post("/api/listen/pin", json={"pin": key})
                assert r.status_code == 204 and "appliance_listen" in phone.cookies
                answer = await server.post_offer(synthetic_offer(), "/api/whep/main",
                                                 headers={"Authorization": f"Bearer {key}"})
                assert answer.status_code == 201, answer.text
                assert time.monotonic() - started < 5
                await server.client.delete(answer.headers["location"],
                                           headers={"Authorization": f"Bearer {key}"})
            nursery.cancel_scope.cancel()
        await server.wait_idle()
