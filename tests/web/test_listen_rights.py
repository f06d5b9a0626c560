"""What a stranger on the network may listen to: the published channels.
A source (a backstage microphone, an interpreter's raw feed) or a route is
heard on its own only by the admin, or by anyone once the admin marks the
source ``public``."""
from __future__ import annotations

import httpx
import pytest

from tests.support.webrtc import synthetic_offer
from tests.web.conftest import ADMIN, ADMIN_TOKEN, IDLE, SDP, make_config, open_server

pytestmark = pytest.mark.trio

PRIVATE = ("/api/whep/source/tone", "/api/whep/route/tone-main",
           "/api/whep/source/tone?mono=1")


async def test_an_unpublished_source_or_route_is_refused_to_a_stranger(tmp_path):
    async with open_server(make_config(tmp_path), headers={}) as server:
        for path in PRIVATE:
            r = await server.post_offer(synthetic_offer(), path)
            assert r.status_code == 403, (path, r.text)
            assert r.headers["X-Appliance-Auth"] == "admin"
            assert "admin" in r.text
        # nothing was made for them: no temporary sink, no variant
        assert server.service.census() == IDLE
        assert not [s for s in server.service.engine.sinks() if s.startswith("_")]
        # the channel itself is open
        r = await server.post_offer(synthetic_offer())
        assert r.status_code == 201
        assert (await server.client.delete(r.headers["Location"])).status_code == 200
        # the admin hears the source, by token ...
        for path in PRIVATE:
            r = await server.post_offer(synthetic_offer(), path, headers=ADMIN)
            assert r.status_code == 201, (path, r.text)
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
        # ... and by the admin page's session
        async with httpx.AsyncClient(base_url=server.url) as browser:
            from tests.web.conftest import ADMIN_PASSWORD
            assert (await browser.post("/api/admin/login",
                                       json={"password": ADMIN_PASSWORD})).status_code == 200
            r = await browser.post("/api/whep/source/tone", content=synthetic_offer(), headers=SDP)
            assert r.status_code == 201, r.text
            assert (await browser.delete(r.headers["Location"])).status_code == 200
        # a wrong bearer is a wrong guess, throttled like any other
        statuses = []
        for token in ("nope", ADMIN_TOKEN[:-1], "again"):
            r = await server.post_offer(synthetic_offer(), PRIVATE[0],
                                        headers={"Authorization": f"Bearer {token}"})
            statuses.append(r.status_code)
        assert statuses == [401, 401, 429]
        await server.wait_idle()
        assert server.service.census() == IDLE


async def test_a_public_source_is_open_to_listeners(tmp_path):
    async with open_server(make_config(tmp_path), headers={}) as server:
        r = await server.client.patch("/api/sources/tone", json={"public": True}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["public"] is True
        for path in PRIVATE:
            r = await server.post_offer(synthetic_offer(), path)
            assert r.status_code == 201, (path, r.text)
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
        r = await server.client.patch("/api/sources/tone", json={"public": False}, headers=ADMIN)
        assert r.status_code == 200
        assert (await server.post_offer(synthetic_offer(), PRIVATE[0])).status_code == 403
        assert server.service.census() == IDLE
