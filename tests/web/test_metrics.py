"""``GET /metrics`` as a monitoring scraper reads it: Prometheus' text
format, parsed with ``prometheus_client``'s own parser, agreeing with
``/api/status`` while a real listener plays; and as a stranger meets it."""
from __future__ import annotations

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import AdminConfig
from appliance.errors import InvalidError
from appliance.model import build
from support import janus as janus_support
from support.janus import Janus
from tests.support.webrtc import dominant_frequency, open_aiortc_listener
from tests.web.conftest import ADMIN_HASH, ADMIN_TOKEN, IDLE, make_config, open_server
from tests.web.test_https import https_base, other_address, pinned
from tests.web.test_publications import wait_state
from tests.web.test_relays import relay_status
from tests.web.test_whip import add_booth

pytestmark = pytest.mark.trio

SCRAPE_TOKEN = "scrape-token-0123456789abcdef"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels), through the library's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_a_scrape_agrees_with_the_status_while_a_listener_plays(tmp_path):
    admin = AdminConfig(token=ADMIN_TOKEN, password_hash=ADMIN_HASH, metrics_token=SCRAPE_TOKEN)
    async with open_server(make_config(tmp_path, admin=admin)) as server:
        scraper = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
        async with open_aiortc_listener() as peer:
            answer = await server.post_offer(await peer.create_offer())
            assert answer.status_code == 201
            await peer.accept_answer(answer.text)
            await peer.wait_connected()
            assert abs(dominant_frequency(await peer.record(0.5)) - 440.0) < 2
            with trio.fail_after(15):   # until its first receiver report says a round trip
                while (await server.client.get("/api/status")).json()["sessions"][0]["rtt_ms"] is None:
                    await trio.sleep(0.1)
            r = await server.client.get("/metrics", headers=scraper)
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            got = samples(r.text)
            status = (await server.client.get("/api/status")).json()
            assert got[("appliance_listeners", (("id", "main"), ("kind", "sink")))] == 1
            assert got[("appliance_listeners_max", ())] == status["max_listeners"]
            transport = status["sessions"][0]["transport"]
            assert got[("appliance_listeners_by_transport", (("transport", transport),))] == 1
            rtt = got[("appliance_listener_rtt_seconds",
                       (("id", "main"), ("kind", "sink"), ("quantile", "0.5")))]
            assert 0 <= rtt < 0.5
            assert ("appliance_listener_loss_ratio",
                    (("id", "main"), ("kind", "sink"), ("quantile", "0.95"))) in got
            assert got[("appliance_engine_entities", (("kind", "listeners"),))] == 1
            assert got[("appliance_lean_datagrams_total", (("outcome", "received"),))] > 0
            assert got[("appliance_info", (("name", status["name"]),
                                           ("version", status["version"])))] == 1
            # the process, from the library's own collector
            assert got[("process_open_fds", ())] > 10
            assert got[("process_resident_memory_bytes", ())] > 10e6
            await server.client.delete(answer.headers["Location"])
        await server.wait_idle()
        got = samples((await server.client.get("/metrics")).text)   # the admin token reads it too
        assert got[("appliance_listeners", (("id", "main"), ("kind", "sink")))] == 0
        assert not any(name == "appliance_listener_rtt_seconds" for name, _ in got)


@pytest.mark.skipif(not janus_support.available(), reason="needs Debian's janus")
async def test_publications_and_relays_are_scraped(tmp_path):
    """Box A publishes its "main" to box B by WHIP and has a real Janus carry
    it: both are in A's scrape as its status has them, and gone with them."""
    janus = Janus(tmp_path / "janus")
    await janus.start()
    try:
        async with open_server(make_config(tmp_path / "b")) as b, \
                open_server(make_config(tmp_path / "a")) as a:
            token = await add_booth(b)
            assert (await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "main", "url": f"{b.url}/api/whip/booth",
                "token": token})).status_code == 201
            assert (await a.client.post("/api/relays", json={
                "id": "janus", "url": janus.url, "channels": ["main"]})).status_code == 201
            with trio.fail_after(10):   # what it sent is read once a second
                while not (await wait_state(a, "to-b", "live"))["bitrate_bps"]:
                    await trio.sleep(0.1)
            await relay_status(a, "janus", lambda s: s["carried"] and s["carried"][0]["packets_sent"]
                               and s["carried"][0]["viewers"] is not None)
            got = samples((await a.client.get("/metrics")).text)
            status = (await a.client.get("/api/status")).json()
            publication, relay = status["publications"][0], status["relays"][0]
            assert got[("appliance_publication_live", (("channel", "main"), ("id", "to-b")))] == 1
            assert got[("appliance_publication_attempts_total", (("id", "to-b"),))] \
                == publication["attempts"] == 1
            assert got[("appliance_publication_bitrate_bits_per_second", (("id", "to-b"),))] \
                > 50_000
            assert got[("appliance_publication_packets_sent_total", (("id", "to-b"),))] > 0
            assert got[("appliance_relay_up", (("id", "janus"),))] == 1
            assert got[("appliance_relay_attempts_total", (("id", "janus"),))] == relay["attempts"]
            assert got[("appliance_relay_viewers", (("channel", "main"), ("id", "janus")))] == 0
            assert got[("appliance_relay_packets_sent_total",
                        (("channel", "main"), ("id", "janus")))] > 0
            assert token not in str(got)
            assert (await a.client.delete("/api/publications/to-b")).status_code == 204
            assert (await a.client.delete("/api/relays/janus")).status_code == 204
            names = {name for name, _ in samples((await a.client.get("/metrics")).text)}
            assert not any(name.startswith(("appliance_publication", "appliance_relay"))
                           for name in names), names
            assert (await a.wait_idle()) == IDLE
    finally:
        await janus.stop()


async def test_strangers_and_the_scrape_token_get_nothing_else(tmp_path):
    admin = AdminConfig(token=ADMIN_TOKEN, password_hash=ADMIN_HASH, metrics_token=SCRAPE_TOKEN)
    async with open_server(make_config(tmp_path, admin=admin), headers={}) as server:
        client = server.client
        assert (await client.get("/metrics")).status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * len(SCRAPE_TOKEN)}
        assert (await client.get("/metrics", headers=wrong)).status_code == 401
        scraper = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
        assert (await client.get("/metrics", headers=scraper)).status_code == 200
        # the scrape token opens /metrics alone (a wrong admin token: 401,
        # then the address waits: 429)
        for method, path in (("GET", "/api/status"), ("GET", "/api/sources"),
                             ("DELETE", "/api/routes/tone-main")):
            r = await client.request(method, path, headers=scraper)
            assert r.status_code in (401, 429), (method, path, r.status_code)
        assert "tone-main" in server.service.graph.registry("route")   # nothing changed


async def test_the_scrape_token_is_refused_over_plain_http_from_another_machine(tmp_path):
    address = other_address()
    admin = AdminConfig(token=ADMIN_TOKEN, password_hash=ADMIN_HASH, metrics_token=SCRAPE_TOKEN)
    config = make_config(tmp_path / "state", admin=admin, host=address)
    async with open_server(config, headers={}) as server:
        scraper = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
        r = await server.client.get("/metrics", headers=scraper)
        assert r.status_code == 403 and r.headers["X-Appliance-Auth"] == "https"
        cert = tmp_path / "state" / "tls" / "cert.pem"
        async with httpx.AsyncClient(base_url=https_base(server, address),
                                     verify=pinned(cert), timeout=15) as secure:
            assert (await secure.get("/metrics", headers=scraper)).status_code == 200


@pytest.mark.parametrize("token", ["short", "x" * 19, "twenty characters w/ space", "é" * 20])
async def test_a_guessable_scrape_token_is_refused_in_the_config(token):
    with pytest.raises(InvalidError) as refused:
        build(AdminConfig, {"metrics_token": token}, "admin")
    assert "admin.metrics_token" in str(refused.value)
