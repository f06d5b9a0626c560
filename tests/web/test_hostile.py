"""The hostile suite, with the admin's own credentials: every dangerous
value a stranger (or a stolen admin page) could send to the graph and the
mixer answers 4xx, runs nothing, reads nothing outside the media folder,
blocks nothing, and leaves the graph and the state file as they were.

Without credentials every such request is refused before it is read
(tests/web/test_auth.py); the connection abuses are in test_connections.py
and the offers in test_offer_fuzz.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from tests.support.audio_sim import tone, write_wav
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = pytest.mark.trio


async def send(client, method: str, url: str, body: object):
    """JSON as a client may really send it: escapes and all (lone surrogates too)."""
    return await client.request(method, url, content=json.dumps(body),
                                headers={"Content-Type": "application/json"})


def device_attacks(marker: Path) -> list[str]:
    return [
        f"file:FILE='|touch {marker}',FORMAT=raw",
        f"|touch {marker}",
        f"plug:{{slave.pcm {{type file slave.pcm null file '|touch {marker}'}}}}",
        f"{{type file slave.pcm null file '|touch {marker}'}}",
        f"default:CARD=x,FILE='|touch {marker}'",
        "hw:0", "plughw:0,0", "hw:CARD=nope,DEV=0", "null:x", "default ",
        "\u0000", "a\nb", "\ud800", "x" * 10000, "",
    ]


async def test_device_strings_never_reach_alsa(tmp_path):
    marker = tmp_path / "pwned"
    async with open_server(make_config(tmp_path / "state")) as server:
        client = server.client
        state_before = (tmp_path / "state" / "state.json").read_bytes() \
            if (tmp_path / "state" / "state.json").exists() else None
        for device in device_attacks(marker):
            for collection, kind in (("sources", "alsa"), ("sinks", "alsa")):
                r = await send(client, "POST", f"/api/{collection}",
                               {"id": "x", "kind": kind, "device": device})
                assert r.status_code == 400, (device[:40], r.status_code, r.text)
                assert "device" in r.text
            for value in (device, 5, None, ["default"]):
                r = await send(client, "PATCH", "/api/mixer", {"device": value})
                assert 400 <= r.status_code < 500, (str(value)[:40], r.status_code, r.text)
        for wrong_type in (5, None, ["default"], {"a": 1}, True):
            r = await send(client, "POST", "/api/sources",
                           {"id": "x", "kind": "alsa", "device": wrong_type})
            assert r.status_code == 400
        assert not marker.exists()
        assert set(server.service.engine.sources()) == {"tone"}
        assert set(server.service.engine.sinks()) == {"main"}
        state_after = (tmp_path / "state" / "state.json").read_bytes() \
            if (tmp_path / "state" / "state.json").exists() else None
        assert state_after == state_before   # nothing refused was saved
        assert server.service.census() == IDLE


async def test_file_sources_read_only_the_media_folder(tmp_path):
    state = tmp_path / "state"
    media = state / "media"
    media.mkdir(parents=True)
    secret = tmp_path / "secret.wav"
    write_wav(secret, tone(440.0, 0.2))
    os.symlink(secret, media / "link.wav")
    os.symlink("/etc/shadow", media / "shadow.wav")
    os.mkfifo(media / "fifo.wav")
    (media / "empty.wav").write_bytes(b"")
    write_wav(media / "music.wav", tone(523.25, 0.5, dbfs=-6.0))
    async with open_server(make_config(state)) as server:
        client = server.client
        messages = set()
        for path in (str(secret), "/etc/shadow", "../secret.wav", "link.wav", "shadow.wav",
                     "fifo.wav", "empty.wav", "missing.wav", "a\x00b", "a\nb", "\ud800",
                     "x/" * 600, "", ".", "/", 5, None, ["music.wav"]):
            with trio.fail_after(5):   # a FIFO must not block the server
                r = await send(client, "POST", "/api/sources",
                               {"id": "f", "kind": "file", "path": path})
            assert r.status_code == 400, (str(path)[:40], r.status_code, r.text)
            messages.add(r.text)
        # one answer for every path that leads somewhere it may not go: it
        # never tells whether something exists outside the folder
        outside = [m for m in messages if "not a file in the media folder" in m]
        assert len(outside) == 1, messages
        r = await client.post("/api/sources", json={"id": "music", "kind": "file",
                                                    "path": "music.wav"})
        assert r.status_code == 201, r.text
        assert r.json()["path"] == "music.wav"   # kept relative to the folder
        saved = json.loads((state / "state.json").read_text())
        assert [s.get("path") for s in saved["graph"]["sources"]] == [None, "music.wav"]


async def test_a_saved_graph_is_checked_again_at_start(tmp_path):
    """A state file written by someone else (or an older version) cannot
    smuggle a device string or a path in: those entities are left out."""
    state = tmp_path / "state"
    marker = tmp_path / "pwned"
    async with open_server(make_config(state)) as server:
        assert (await server.client.patch("/api/routes/tone-main",
                                          json={"gain_db": -3.0})).status_code == 200
    data = json.loads((state / "state.json").read_text())
    data["graph"]["sources"] += [
        {"id": "evil", "kind": "alsa", "device": f"file:FILE='|touch {marker}',FORMAT=raw"},
        {"id": "leak", "kind": "file", "path": "/etc/passwd"},
    ]
    (state / "state.json").write_text(json.dumps(data))
    async with open_server(make_config(state)) as server:
        assert set(server.service.engine.sources()) == {"tone"}
        assert {e.id for _, e in server.service.graph.left_out} == {"evil", "leak"}
        assert (await server.client.get("/api/status")).status_code == 200
    assert not marker.exists()
