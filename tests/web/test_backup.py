"""Backup and restore through the admin API: one file, a plan shown before
anything changes, everything put back as it was; and the files a stranger
or an older box might hand it refused with nothing changed."""
from __future__ import annotations

import json

import pytest

from appliance import __version__
from appliance.config import AdminConfig
from tests.web.conftest import ADMIN_HASH, ADMIN_TOKEN, make_config, open_server

pytestmark = pytest.mark.trio

LIVE = {"listeners", "device_state", "xruns", "network", "level"}


async def graph_of(client) -> dict:
    """The graph as the admin API shows it, without what is live."""
    out = {}
    for kind in ("sources", "sinks", "routes"):
        items = (await client.get(f"/api/{kind}")).json()
        out[kind] = sorted(({k: v for k, v in e.items() if k not in LIVE} for e in items),
                           key=lambda e: e["id"])
    return out


async def test_backup_change_everything_restore_and_it_is_all_back(tmp_path):
    config = make_config(tmp_path)
    async with open_server(config) as server:
        client = server.client
        await client.post("/api/sinks", json={"id": "fr", "name": "French", "kind": "opus",
                                              "language": "fr", "delay_ms": 40})
        await client.post("/api/routes", json={"id": "tone-fr", "source_id": "tone",
                                               "sink_id": "fr", "gain_db": -3.0})
        r = await client.get("/api/backup")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        backup = r.json()
        assert backup["format"] == "appliance-backup" and backup["version"] == __version__
        assert "admin" not in backup   # no password hash unless asked
        before = await graph_of(client)
        state_before = json.loads((tmp_path / "state.json").read_text())["graph"]

        # change everything: names, gains, a delay, a new source and route, one sink gone
        await client.patch("/api/routes/tone-main", json={"gain_db": -12.0, "muted": True})
        await client.patch("/api/sinks/main", json={"name": "Renamed", "delay_ms": 100})
        await client.delete("/api/routes/tone-fr")
        await client.delete("/api/sinks/fr")
        await client.post("/api/sources", json={"id": "hi", "kind": "tone", "tone_hz": 880.0})
        await client.post("/api/sinks", json={"id": "de", "kind": "opus", "channels": 1})
        await client.post("/api/routes", json={"id": "hi-de", "source_id": "hi", "sink_id": "de"})
        assert await graph_of(client) != before

        r = await client.post("/api/restore?dry_run=1", json=backup)
        assert r.status_code == 200, r.text
        plan = r.json()["changes"]
        assert plan["sink"] == {"added": ["fr"], "removed": ["de"], "changed": ["main"],
                                "made_again": []}
        assert plan["source"]["removed"] == ["hi"]
        assert plan["route"] == {"added": ["tone-fr"], "removed": ["hi-de"],
                                 "changed": ["tone-main"], "made_again": []}
        assert await graph_of(client) != before   # a dry run changes nothing

        r = await client.post("/api/restore", json=backup)
        assert r.status_code == 200, r.text
        assert await graph_of(client) == before
        assert json.loads((tmp_path / "state.json").read_text())["graph"] == state_before
    async with open_server(config) as server:   # and after a restart
        assert await graph_of(server.client) == before


async def test_a_field_that_cannot_change_live_makes_the_entity_again(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        client = server.client
        backup = (await client.get("/api/backup")).json()
        for sink in backup["graph"]["sinks"]:
            if sink["id"] == "main":
                sink["bitrate"] = 64000
        r = await client.post("/api/restore", json=backup)
        assert r.status_code == 200, r.text
        assert r.json()["changes"]["sink"]["made_again"] == ["main"]
        assert (await client.get("/api/sinks/main")).json()["bitrate"] == 64000
        assert (await client.get("/api/routes/tone-main")).status_code == 200


async def test_the_password_hash_travels_only_when_asked(tmp_path):
    async with open_server(make_config(tmp_path, admin=AdminConfig(token=ADMIN_TOKEN))) as server:
        client = server.client
        assert "admin" not in (await client.get("/api/backup")).json()
        server.app.admin_auth.restore_hash(ADMIN_HASH)   # as a first setup would have
        backup = (await client.get("/api/backup?include=password")).json()
        assert backup["admin"] == {"password_hash": ADMIN_HASH}
        (tmp_path / "admin-password").unlink()           # a box set up afresh
        r = await client.post("/api/restore", json=backup)
        assert r.status_code == 200 and r.json()["password"] is True
        assert (tmp_path / "admin-password").read_text().strip() == ADMIN_HASH
    # a box whose config sets the password does not take the backup's
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.post("/api/restore", json=backup)
        assert r.status_code == 400 and "config file" in r.text


@pytest.mark.parametrize("change, says", [
    (lambda b: b.update(format="something-else"), "not an appliance backup"),
    (lambda b: b.update(version="999.0.0"), "newer than this appliance"),
    (lambda b: b.update(version="latest"), "backup.version"),
    (lambda b: b.update(extra=1), "unknown key 'extra'"),
    (lambda b: b["graph"]["sinks"][0].update(bitrate="loud"), "bitrate"),
    (lambda b: b["graph"]["sinks"][0].update(channels=99), "channels"),
    (lambda b: b["graph"]["sources"].append({"id": "f", "kind": "file",
                                             "path": "../../etc/passwd"}), "path"),
    (lambda b: b["graph"]["sources"].append({"id": "d", "kind": "alsa",
                                             "device": "hw:CARD=Evil"}), "device"),
    (lambda b: b["graph"]["routes"].append({"id": "x", "source_id": "nope",
                                            "sink_id": "main"}), "nope"),
    (lambda b: b.update(sections={"../../etc": {}}), "sections"),
    (lambda b: b.update(admin={"password_hash": "plain text"}), "password hash"),
    (lambda b: b.update(graph=[]), "graph"),
])
async def test_a_bad_backup_is_refused_and_nothing_changes(tmp_path, change, says):
    async with open_server(make_config(tmp_path)) as server:
        client = server.client
        backup = (await client.get("/api/backup")).json()
        before = await graph_of(client)
        state = (tmp_path / "state.json").read_bytes() if (tmp_path / "state.json").exists() \
            else None
        change(backup)
        for path in ("/api/restore?dry_run=1", "/api/restore"):
            r = await client.post(path, json=backup)
            assert r.status_code == 400 and says in r.text, (path, r.status_code, r.text)
        assert await graph_of(client) == before
        after = (tmp_path / "state.json").read_bytes() if (tmp_path / "state.json").exists() \
            else None
        assert after == state


async def test_strangers_get_no_backup_and_restore_nothing(tmp_path):
    async with open_server(make_config(tmp_path), headers={}) as server:
        assert (await server.client.get("/api/backup")).status_code == 401
        assert (await server.client.get("/api/backup?include=password")).status_code == 401
        r = await server.client.post("/api/restore", json={"format": "appliance-backup"})
        assert r.status_code == 401
