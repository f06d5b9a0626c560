"""The two roles, tried as a hostile guest on the venue's network would: the
default configuration (no password, no token, no PIN) against the real
server, every route of the app's url_map, cross-origin pages, CSRF, guessing,
and hostile login bodies."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from appliance.admin_auth import PASSWORD_FILE, normalise_code
from appliance.config import AdminConfig
from appliance.web import auth
from tests.support.webrtc import synthetic_offer
from tests.web.conftest import (
    ADMIN, ADMIN_PASSWORD, ADMIN_TOKEN, IDLE, Server, make_config, open_server,
)
from tests.web.test_events import next_event, open_events
from tests.support.trust import TRUST

pytestmark = pytest.mark.trio

EVIL = "http://evil.example"
# A value that once ran a command through ALSA's file plugin.
DANGEROUS = {"id": "x", "kind": "alsa", "device": "file:FILE='|touch pwned',FORMAT=raw",
             "source_id": "tone", "sink_id": "main", "name": "x", "gain_db": -6,
             "muted": True, "device_name": "x", "playback_volume": 1}
# Every route that does not need the admin credential. A new one must be
# added here on purpose; anything else is checked as admin below.
OPEN = {
    "static": auth.PUBLIC, "ui.listen": auth.PUBLIC, "ui.listen_one": auth.PUBLIC,
    "ui.admin": auth.PUBLIC, "health.healthz": auth.PUBLIC, "signs.signs": auth.PUBLIC,
    "ui.janus_js": auth.PUBLIC,
    "login.state": auth.PUBLIC, "login.login": auth.PUBLIC, "login.setup": auth.PUBLIC,
    "login.logout": auth.PUBLIC, "listening.pin": auth.PUBLIC,
    # every box on the LAN: what the listen pages show anyway (tests/web/test_venue.py)
    "venue.venue": auth.PUBLIC, "venue.this_box": auth.PUBLIC,
    "listening.channels": auth.LISTENING, "listening.events": auth.LISTENING,
    "listening.where": auth.LISTENING,
    "whep.post_sink": auth.LISTENING, "whep.post_source": auth.LISTENING,
    "whep.post_route": auth.LISTENING, "whep.session_resource": auth.LISTENING,
    "whep.session_candidates": auth.LISTENING,
    # WHIP: the source's own publish token, checked by the view (tests/web/test_whip.py)
    "ui.publish": auth.PUBLIC, "whip.publish": auth.PUBLISHING,
    "whip.publisher_resource": auth.PUBLISHING,
}
SAMPLE = {"collection": "routes", "entity_id": "tone-main", "sink_id": "main",
          "source_id": "tone", "route_id": "tone-main", "name": "Master",
          "session_id": "0" * 32, "filename": "admin.js"}


def default_config(tmp_path: Path, **server: Any):
    """What a fresh appliance runs: no password, no token, no PIN."""
    return make_config(tmp_path / "state", admin=AdminConfig(), **server)


def sample_paths(rule: str) -> list[str]:
    """Concrete paths for a rule: every choice of an ``any(...)``, sample ids."""
    found = re.search(r"<any\(([^)]*)\):\w+>", rule)
    if found:
        return [p for choice in found.group(1).split(",")
                for p in sample_paths(rule.replace(found.group(0), choice.strip(), 1))]
    return [re.sub(r"<(?:[\w(), ]+:)?(\w+)>", lambda m: SAMPLE.get(m.group(1), "main"), rule)]


async def roles(server: Server) -> dict[tuple[str, str], tuple[str, frozenset[str]]]:
    """(rule, endpoint) → (role, methods) for every route the app serves."""
    app = server.app
    async with app.app_context():
        return {(r.rule, r.endpoint): (auth.role_of(r.endpoint, r.rule), frozenset(r.methods))
                for r in app.url_map.iter_rules()}


def graph(server: Server) -> dict[str, Any]:
    svc = server.service
    return {kind: svc.graph.list(kind) for kind in ("source", "sink", "route")}


def assert_no_cors(response: httpx.Response) -> None:
    assert not any(k.lower().startswith("access-control-") for k in response.headers), \
        dict(response.headers)


def cookie_attributes(response: httpx.Response, name: str) -> dict[str, str]:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            parts = [p.strip() for p in header.split(";")]
            attrs = {p.split("=", 1)[0].lower(): (p.split("=", 1) + [""])[1] for p in parts[1:]}
            attrs["value"] = parts[0].split("=", 1)[1]
            return attrs
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


async def test_every_route_is_classified_and_no_admin_route_answers_a_stranger(tmp_path):
    async with open_server(default_config(tmp_path), headers={}) as server:
        table = await roles(server)
        # scrape: the admin's, or the scrape token's (none is set here)
        closed = (auth.ADMIN, auth.SCRAPE)
        open_routes = {ep: role for (_, ep), (role, _) in table.items() if role not in closed}
        assert set(open_routes) <= set(OPEN), "a new public or listening route: add it to OPEN"
        assert {ep: OPEN[ep] for ep in open_routes} == open_routes
        admin_routes = [(rule, methods) for (rule, _), (role, methods) in table.items()
                        if role in closed]
        paths = {p for rule, _ in admin_routes for p in sample_paths(rule)}
        for needed in ("/api/sources", "/api/sinks", "/api/routes", "/api/status",
                       "/api/events", "/api/mixer", "/api/routes/tone-main", "/metrics"):
            assert needed in paths, needed
        before = graph(server)
        tried = 0
        for rule, methods in admin_routes:
            for path, method in ((p, m) for p in sample_paths(rule) for m in sorted(methods)):
                for headers in ({}, {"Authorization": "Bearer wrong"},
                                {"Cookie": f"{auth.SESSION_COOKIE}=forged"},
                                {"Authorization": "Basic YWRtaW46YWRtaW4="}):
                    r = await server.client.request(method, path, json=DANGEROUS, headers=headers)
                    tried += 1
                    # 429: the wrong bearer guesses from this address got slowed down
                    assert r.status_code in (401, 429), (method, path, headers, r.status_code)
                    assert_no_cors(r)
        assert tried >= 4 * len(admin_routes)
        assert graph(server) == before
        assert not Path("pwned").exists()
        # the stranger may still listen (no PIN configured) and read the pages
        assert (await server.client.get("/api/listen/channels")).status_code == 200
        assert (await server.client.get("/admin")).status_code == 200
        r = await server.post_offer(synthetic_offer())
        assert r.status_code == 201
        assert (await server.client.delete(r.headers["Location"])).status_code == 200
        assert server.service.census() == IDLE


async def test_the_admin_api_refuses_other_origins_even_with_the_token(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        client = server.client
        own = server.url
        r = await client.get("/api/status", headers={"Origin": own})
        assert r.status_code == 200
        assert_no_cors(r)
        for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Origin": own + ".evil.example"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            for method, path in (("GET", "/api/status"), ("GET", "/api/events"),
                                 ("POST", "/api/routes"), ("DELETE", "/api/routes/tone-main"),
                                 ("OPTIONS", "/api/routes")):
                r = await client.request(method, path, headers=headers, json=DANGEROUS)
                assert r.status_code == 403, (headers, method, path, r.status_code)
                assert_no_cors(r)
            # nor can another site log in or out
            r = await client.post("/api/admin/login", json={"password": ADMIN_PASSWORD},
                                  headers=headers)
            assert r.status_code == 403 and "set-cookie" not in r.headers
        assert (await client.get("/api/routes/tone-main")).status_code == 200  # still there


async def test_whep_and_the_listen_feed_keep_cors_for_any_origin(tmp_path):
    async with open_server(default_config(tmp_path), headers={}) as server:
        client = server.client
        r = await client.options("/api/whep/main", headers={
            "Origin": EVIL, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
        r = await server.post_offer(synthetic_offer(), headers={"Origin": EVIL})
        assert r.status_code == 201 and r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in r.headers["Access-Control-Expose-Headers"]
        location = r.headers["Location"]
        r = await client.get("/api/listen/channels", headers={"Origin": EVIL})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
        assert [{k: c[k] for k in ("id", "name", "kind", "listeners")} for c in r.json()] == [
            {"id": "main", "name": "Main", "kind": "opus", "listeners": 1}]
        async with open_events(server.url, "/api/listen/events", headers={}) as events:
            assert events.status == 200
            first = await next_event(events, "listeners")
            assert first == {"sinks": {"main": 1}}  # channels only: no sources, no routes
            levels = await next_event(events, "levels")
            assert set(levels) <= {"sinks", "latency_ms"} and set(levels["sinks"]) <= {"main"}
        assert (await client.delete(location, headers={"Origin": EVIL})).status_code == 200
        # the admin side of the same app: no CORS, and nothing for a stranger
        r = await client.get("/api/sinks", headers={"Origin": EVIL})
        assert r.status_code == 403
        assert_no_cors(r)


async def test_setup_code_flow_works_once_and_only_once(tmp_path):
    config = default_config(tmp_path)
    code_file = tmp_path / "state" / "setup-code.txt"
    async with open_server(config, headers={}) as server:
        client = server.client
        assert code_file.exists()
        code = normalise_code(code_file.read_text().splitlines()[0])
        state = (await client.get("/api/admin/session")).json()
        https = server.app.appliance_ports["https"]
        assert state == {"admin": False, "csrf": None, "password_set": False,
                         "setup_code_file": "setup-code.txt", "csrf_header": "X-CSRF-Token",
                         "tls_fingerprint": server.app.tls_fingerprint,
                         "https_url": f"https://127.0.0.1:{https}/admin",
                         "listen_origin": server.url, "venue_key": None}
        # the certificate's fingerprint is in the file beside the code
        assert server.app.tls_fingerprint in code_file.read_text()
        r = await client.post("/api/admin/login", json={"password": "anything at all"})
        assert r.status_code == 409  # nothing to log in with yet
        r = await client.post("/api/admin/setup", json={"code": code, "password": "short"})
        assert r.status_code == 400 and "8" in r.text
        r = await client.post("/api/admin/setup", json={"code": "AAAA-BBBB-CCCC",
                                                        "password": "a new password"})
        assert r.status_code == 401
        assert (await client.get("/api/status")).status_code == 401

        # two people with the right code at once: exactly one chooses the password
        results: dict[str, httpx.Response] = {}

        async def attempt(password: str) -> None:
            results[password] = await client.post("/api/admin/setup", json={
                "code": code.lower(), "password": password})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "first password!")
            nursery.start_soon(attempt, "second password")
        assert sorted(r.status_code for r in results.values()) == [200, 409]
        chosen, winner = next((p, r) for p, r in results.items() if r.status_code == 200)
        attrs = cookie_attributes(winner, auth.SESSION_COOKIE)
        assert "httponly" in attrs and attrs["samesite"].lower() == "strict"
        assert attrs["path"] == "/" and "secure" not in attrs
        assert len(attrs["value"]) >= 40 and winner.json()["csrf"]
        assert not code_file.exists()
        saved = (tmp_path / "state" / PASSWORD_FILE).read_text()
        assert saved.startswith("scrypt$") and chosen not in saved
        # the code is spent
        r = await client.post("/api/admin/setup", json={"code": code, "password": "a third one!"})
        assert r.status_code == 409
        r = await client.post("/api/admin/login", json={"password": chosen})
        assert r.status_code == 200
    # after a restart: the chosen password, no new code
    async with open_server(config, headers={}) as server:
        assert not code_file.exists()
        assert (await server.client.get("/api/admin/session")).json()["password_set"] is True
        r = await server.client.post("/api/admin/login", json={"password": chosen})
        assert r.status_code == 200
        assert (await server.client.get("/api/status")).status_code == 200  # the cookie


async def test_a_browser_session_needs_the_csrf_header_for_changes_and_ends_at_logout(tmp_path):
    async with open_server(make_config(tmp_path), headers={}) as server:
        client = server.client
        r = await client.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
        assert r.status_code == 200
        csrf = r.json()["csrf"]
        assert (await client.get("/api/admin/session")).json()["csrf"] == csrf
        assert (await client.get("/api/status")).status_code == 200
        route = {"id": "extra", "source_id": "tone", "sink_id": "main"}
        for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": csrf[:-1]},
                        {"X-CSRF-Token": csrf + "x"}, {"X-CSRF-Token": ("\u00e9" * 43).encode("latin-1")}):
            r = await client.post("/api/routes", json=route, headers=headers)
            assert r.status_code == 403 and "CSRF" in r.text, headers
            r = await client.delete("/api/routes/tone-main", headers=headers)
            assert r.status_code == 403, headers
        assert "extra" not in {x["id"] for x in server.service.graph.list("route")}
        r = await client.post("/api/routes", json=route, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201
        # the right token from another site is still refused
        r = await client.delete("/api/routes/extra", headers={"X-CSRF-Token": csrf, "Origin": EVIL})
        assert r.status_code == 403
        r = await client.delete("/api/routes/extra", headers={"X-CSRF-Token": csrf,
                                                              "Origin": server.url})
        assert r.status_code == 204
        # the admin session also lets this browser listen when a PIN would be needed
        assert (await client.post("/api/admin/logout")).status_code == 204
        assert (await client.get("/api/status")).status_code == 401
        state = (await client.get("/api/admin/session")).json()
        assert state["admin"] is False and state["csrf"] is None


async def test_bearer_token_works_and_wrong_ones_are_slowed(tmp_path):
    async with open_server(make_config(tmp_path), headers={}) as server:
        client = server.client
        assert (await client.get("/api/status", headers=ADMIN)).status_code == 200
        r = await client.post("/api/routes", headers=ADMIN,
                              json={"id": "extra", "source_id": "tone", "sink_id": "main"})
        assert r.status_code == 201  # scripts need no CSRF token: a header is no ambient credential
        assert (await client.get("/api/status?token=" + ADMIN_TOKEN)).status_code == 401
        statuses = [(await client.get("/api/status", headers={"Authorization": f"Bearer {t}"}))
                    .status_code for t in ("wrong", ADMIN_TOKEN[:-1], "x", "wrong again")]
        # two typos are free; the third try waits (docs/API.md)
        assert statuses == [401, 401, 429, 429]
        r = await client.get("/api/status", headers=ADMIN)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


async def test_wrong_passwords_are_slowed_per_address_without_blocking_anyone(tmp_path):
    async with open_server(make_config(tmp_path), headers={}) as server:
        client = server.client
        for _ in range(2):
            r = await client.post("/api/admin/login", json={"password": "not the password"})
            assert r.status_code == 401
        with trio.fail_after(1):  # refused at once, not by sleeping
            r = await client.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "set-cookie" not in r.headers
        # other requests from the same address still answer, listening included
        assert (await client.get("/api/listen/channels")).status_code == 200
        assert (await client.get("/admin")).status_code == 200
        # another address is not affected
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", verify=TRUST)
        async with httpx.AsyncClient(base_url=server.url, transport=transport) as other:
            r = await other.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
            assert r.status_code == 200


async def test_the_pin_grants_listening_and_nothing_else(tmp_path):
    config = make_config(tmp_path, listen_pin="4711")
    async with open_server(config, headers={}) as server:
        client = server.client
        offer = synthetic_offer()
        r = await server.post_offer(offer)
        assert r.status_code == 401 and r.headers["X-Appliance-Auth"] == "pin"
        assert r.headers["Access-Control-Allow-Origin"] == "*"  # a WHEP page can read why
        assert "PIN" in r.text
        assert (await client.get("/api/listen/channels")).status_code == 401
        async with open_events(server.url, "/api/listen/events", headers={}) as events:
            assert events.status == 401
        assert (await client.get("/")).status_code == 200  # the page itself, with its PIN form
        # the PIN as a bearer credential (WHEP clients)
        r = await server.post_offer(offer, headers={"Authorization": "Bearer 4711"})
        assert r.status_code == 201
        location = r.headers["Location"]
        assert (await client.delete(location)).status_code == 401
        assert (await client.delete(location, headers={"Authorization": "Bearer 4711"})) \
            .status_code == 200
        # the PIN form: a wrong PIN, then the right one sets the listen cookie
        assert (await client.post("/api/listen/pin", json={"pin": "0000"})).status_code == 401
        r = await client.post("/api/listen/pin", json={"pin": "4711"})
        assert r.status_code == 204
        attrs = cookie_attributes(r, auth.LISTEN_COOKIE)
        assert "httponly" in attrs and attrs["samesite"].lower() == "strict"
        assert "4711" not in attrs["value"]
        assert (await client.get("/api/listen/channels")).status_code == 200  # the cookie
        r = await server.post_offer(offer)
        assert r.status_code == 201
        assert (await client.delete(r.headers["Location"])).status_code == 200
        # ... and the PIN is no admin credential, by cookie or as a bearer
        assert (await client.get("/api/sinks")).status_code == 401
        assert (await client.post("/api/sinks", json=DANGEROUS)).status_code == 401
        r = await client.get("/api/sinks", headers={"Authorization": "Bearer 4711"})
        assert r.status_code in (401, 429)
        assert server.service.census() == IDLE

    # the admin token and an admin session both work for listening too
    async with open_server(config) as server:
        r = await server.post_offer(synthetic_offer())
        assert r.status_code == 201
        assert (await server.client.delete(r.headers["Location"])).status_code == 200
        async with httpx.AsyncClient(base_url=server.url) as browser:
            r = await browser.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
            assert r.status_code == 200
            assert (await browser.get("/api/listen/channels")).status_code == 200


async def test_a_wrong_pin_says_a_pin_is_wanted_and_a_third_try_waits(tmp_path):
    """docs/API.md: a wrong PIN's 401 carries X-Appliance-Auth: pin, as the
    missing one's does; two typos are free, the third immediate try gets 429
    without being checked."""
    config = make_config(tmp_path, listen_pin="4711")
    async with open_server(config, headers={}) as server:
        r = await server.post_offer(synthetic_offer(), headers={"Authorization": "Bearer 0000"})
        assert r.status_code == 401 and r.headers["X-Appliance-Auth"] == "pin"
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="listen"'
        r = await server.client.post("/api/listen/pin", json={"pin": "0001"})
        assert r.status_code == 401 and r.headers["X-Appliance-Auth"] == "pin"
        r = await server.client.post("/api/listen/pin", json={"pin": "4711"})   # right, but now
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "set-cookie" not in r.headers


HOSTILE_BODIES: list[bytes] = [
    b"", b"null", b"[]", b"5", b'"password"', b"{", b"\xff\xfe\x00", b"{}",
    b"[" * 30000 + b"]" * 30000, b'{"a":' * 10000 + b"1" + b"}" * 10000,
    json.dumps({"password": 5, "code": 5, "pin": 5}).encode(),
    json.dumps({"password": None, "code": None, "pin": None}).encode(),
    json.dumps({"password": ["x"], "code": {"a": 1}, "pin": True}).encode(),
    json.dumps({"password": "x" * 60000}).encode(),
    json.dumps({"password": "x" * 3000, "code": "x" * 1000, "pin": "x" * 3000}).encode(),
    b'{"password": "\\ud800\\udfff\\ud800 pass", "code": "\\ud800", "pin": "\\udfff"}',
    b'{"password": "pass\\u0000word\\u001b[31m", "code": "\\u0000", "pin": "\\n"}',
    b'{"password": "a fine password", "code": "ABCD", "pin": "1", "extra": 1}',
    b'{"\\ud800": 1}',
    json.dumps({"password": 1e308, "code": -1, "pin": 2 ** 80}).encode(),
    b"password=x&code=y",
]


async def test_hostile_login_setup_and_pin_bodies_get_4xx_never_5xx(tmp_path):
    async with open_server(default_config(tmp_path, listen_pin="4711"), headers={}) as server:
        client = server.client
        for path in ("/api/admin/login", "/api/admin/setup", "/api/listen/pin"):
            for body in HOSTILE_BODIES:
                for ctype in ("application/json", "text/plain", "application/json; charset=latin1"):
                    r = await client.post(path, content=body, headers={"Content-Type": ctype})
                    assert 400 <= r.status_code < 500, (path, body[:40], ctype, r.status_code, r.text)
                    assert "set-cookie" not in r.headers
        # nothing was set by all that
        assert (await client.get("/api/admin/session")).json()["password_set"] is False
        assert not (tmp_path / "state" / PASSWORD_FILE).exists()
        assert (await client.get("/api/status")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200


async def test_a_stale_or_forged_session_cookie_gives_401_not_500(tmp_path):
    async with open_server(make_config(tmp_path), headers={}) as server:
        for value in ("", "x", "A" * 5000, "%00%ff", '"quoted"', "\u00e9t\u00e9"):
            cookie = f"{auth.SESSION_COOKIE}={value}".encode("utf-8")  # raw bytes on the wire
            r = await server.client.get("/api/status", headers={"Cookie": cookie})
            assert r.status_code == 401, value
        r = await server.client.post("/api/admin/logout",
                                     headers={"Cookie": f"{auth.SESSION_COOKIE}=nonsense"})
        assert r.status_code == 204


async def test_odd_host_and_origin_headers_are_refused_not_500(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        for headers in ({"Host": "a" * 64 + ".local", "Origin": "http://x"},
                        {"Host": "a" * 64 + ".local"},
                        {"Origin": "http://" + "\u00e9" * 10},
                        {"Origin": "http://127.0.0.1:1/" + "x" * 5000},
                        {"Origin": ""}, {"Sec-Fetch-Site": "\u00e9"}):
            encoded = {k: v.encode("utf-8") for k, v in headers.items()}
            for method, path in (("GET", "/api/status"), ("POST", "/api/admin/login"),
                                 ("POST", "/api/whep/main")):
                r = await server.client.request(method, path, headers=encoded, json={})
                assert r.status_code < 500, (headers, method, path, r.status_code)
                if "Origin" in headers or method == "POST":  # foreign, or a bad body
                    assert r.status_code >= 400, (headers, method, path, r.status_code)


async def test_a_crowd_of_guessers_hashes_at_most_two_passwords_at_once(tmp_path):
    """scrypt takes 16 MiB each: many addresses guessing at once must not
    take the box's memory."""
    async with open_server(make_config(tmp_path), headers={}) as server:
        admin_auth = server.app.admin_auth
        check = admin_auth.check_password
        running, most = 0, 0

        def counted(password: str) -> bool:  # runs in a worker thread
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                return check(password)
            finally:
                running -= 1

        admin_auth.check_password = counted
        statuses: list[int] = []

        async def guess(n: int) -> None:
            transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{10 + n}", verify=TRUST)
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as c:
                r = await c.post("/api/admin/login", json={"password": f"guess {n:04d}"})
                statuses.append(r.status_code)

        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(guess, n)
        assert statuses == [401] * 12
        assert 1 <= most <= 2
