"""Streams announced on the LAN (SAP, RFC 2974) as the admin page sees them:
listed, never made into a source by themselves, added with their SDP, gone
when deleted; and as a stranger floods the port with announcements, junk,
encrypted and compressed ones."""
from __future__ import annotations

import socket

import pytest
import trio

from appliance.errors import InvalidError
from appliance.sap import MAX_STREAMS, parse_announcement
from tests.support.sap import announcement, sdp
from tests.support.scream import free_udp_port
from tests.web.conftest import make_config, open_server
import trio.lowlevel

pytestmark = pytest.mark.trio


async def test_the_parser_reads_what_rfc_2974_allows_and_refuses_the_rest():
    a = parse_announcement(announcement(sdp(), auth=b"\x01\x02\x03\x04"))
    assert (a.deletion, a.origin, a.msg_hash) == (False, "192.168.1.10", 7)
    assert a.sdp.startswith("v=0")
    assert parse_announcement(announcement(sdp(), payload_type=False)).sdp == a.sdp
    assert parse_announcement(announcement(sdp(), origin="fd00::7")).origin == "fd00::7"
    assert parse_announcement(announcement(sdp(), delete=True)).deletion
    for datagram, says in (
            (announcement(sdp(), flags=0x02), "encrypted"),
            (announcement(sdp(), flags=0x01), "compressed"),
            (b"\x40" + announcement(sdp())[1:], "version"),
            (b"\x20\x00\x00", "size"),
            (b"\x20\x00\x00\x01\x01\x02\x03\x04" + b"text/plain\0v=0", "application/sdp"),
            (announcement(sdp())[:8] + b"\xff\xfe", "application/sdp"),
            (announcement(sdp())[:8] + b"v=0\xff", "UTF-8"),
            (announcement("x" * 5000), "size")):
        with pytest.raises(InvalidError) as refused:
            parse_announcement(datagram)
        assert says in str(refused.value)


async def statuses(server, until) -> dict:
    with trio.fail_after(10):
        while not until(answer := (await server.client.get("/api/announcements")).json()):
            await trio.sleep(0.02)
    return answer


async def test_announced_streams_are_listed_never_made_and_added_by_the_admin(tmp_path):
    port = free_udp_port()
    async with open_server(make_config(tmp_path, sap_port=port)) as server:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.sendto(announcement(sdp()), ("127.0.0.1", port))
        out.sendto(announcement(sdp("Booth FR", "239.69.1.11"), msg_hash=8), ("127.0.0.1", port))
        answer = await statuses(server, lambda a: a["counts"]["announced"] == 2)
        streams = {s["name"]: s for s in answer["streams"]}
        assert set(streams) == {"Desk ch 1-2", "Booth FR"}
        desk = streams["Desk ch 1-2"]
        assert (desk["address"], desk["port"], desk["format"], desk["origin"]) == \
            ("239.69.1.10", 5004, "L24/48000/2", "192.168.1.10")
        assert desk["refclk"].startswith("ptp=")
        # nothing was made by the announcement itself
        assert sorted(server.service.engine.sources()) == ["tone"]
        # the same again is a refresh, not a second stream
        out.sendto(announcement(sdp()), ("127.0.0.1", port))
        answer = await statuses(server, lambda a: a["counts"]["received"] == 3)
        assert len(answer["streams"]) == 2 and answer["counts"]["announced"] == 2
        # the admin adds one: its SDP as it was announced
        r = await server.client.post("/api/sources", json={
            "id": "desk", "sdp": desk["sdp"], "allow_from": ["192.168.1.10"]})
        assert r.status_code == 201, r.text
        assert r.json()["address"] == "239.69.1.10"
        # a deletion takes it off the list
        out.sendto(announcement(sdp(), delete=True), ("127.0.0.1", port))
        answer = await statuses(server, lambda a: a["counts"]["deleted"] == 1)
        assert [s["name"] for s in answer["streams"]] == ["Booth FR"]
        out.close()
        # strangers may not read the list
        r = await server.client.get("/api/announcements", headers={"Authorization": "Bearer x"})
        assert r.status_code == 401


async def test_a_flood_of_announcements_and_junk_is_bounded(tmp_path):
    port = free_udp_port()
    async with open_server(make_config(tmp_path, sap_port=port)) as server:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 0
        for i in range(3000):
            out.sendto(announcement(sdp(f"stream {i}"), msg_hash=i), ("127.0.0.1", port))
            out.sendto(announcement(f"v=0\r\ns=junk {i}\r\n", msg_hash=i, origin="10.0.0.9"),
                       ("127.0.0.1", port))
            out.sendto(announcement(sdp(), msg_hash=i, flags=0x01), ("127.0.0.1", port))
            sent += 3
            await trio.lowlevel.checkpoint()   # the box reads in this process: let it (a socket buffer is small)
        out.close()
        answer = await statuses(server, lambda a: a["counts"]["received"] >= 1000)
        counts = answer["counts"]
        print(f"\n{sent} sent: {counts}")
        assert len(answer["streams"]) <= MAX_STREAMS
        # read at most 200 a second: the rest dropped unread
        assert counts["dropped"] > 0 and counts["refused"] > 0 and counts["received"] <= sent
        assert counts["announced"] + counts["refused"] + counts["dropped"] == counts["received"]
        assert (await server.client.get("/healthz")).status_code == 200
        assert sorted(server.service.engine.sources()) == ["tone"]
