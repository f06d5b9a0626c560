"""``POST /api/clock``: the box's clock set from the admin's browser while no
network time keeps it, through the clock seam (``Service.clock.setter``:
``clock_settime`` on the box, a recorder here), and the wall clock's jumps
noticed (appliance.clock)."""
from __future__ import annotations

import logging
import re
import time

import pytest

from appliance.board import TIMESYNC, Board
from appliance.clock import MAX_AHEAD_S, ClockJumps, WallClock, built_at
from appliance.errors import ManagedElsewhereError
from tests.web.conftest import ADMIN_PASSWORD, make_config, open_server

NOW_MS = int(time.time() * 1000)


def unsynced_config(tmp_path):
    root = tmp_path / "board"
    root.mkdir()
    return make_config(tmp_path / "state").replace(board_root=root)


@pytest.mark.trio
async def test_the_admin_sets_the_clock_only_while_no_network_time_keeps_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="appliance.clock")
    async with open_server(unsynced_config(tmp_path)) as server:
        clock = server.service.clock
        calls: list[int] = []
        clock.setter = calls.append
        status = (await server.client.get("/api/status")).json()["clock"]
        assert status["synchronized"] is False and status["settable"] is True
        assert abs(status["unix_ms"] - time.time() * 1000) < 60_000

        target = int(time.time() * 1000) + 3_600_000
        r = await server.client.post("/api/clock", json={"unix_ms": target})
        assert r.status_code == 200, r.text
        assert calls == [target * 1_000_000]            # nanoseconds, exactly
        assert r.json()["to_unix_ms"] == target
        assert abs(r.json()["from_unix_ms"] - time.time() * 1000) < 60_000
        said = [rec.getMessage() for rec in caplog.records if "clock set" in rec.getMessage()]
        jump = re.search(r"\(\+(\d+) s\)", said[0]) if said else None
        assert jump and abs(int(jump.group(1)) - 3600) <= 2, said

        # network time keeps it now: refused, nothing set
        clock.synchronized = lambda: True
        r = await server.client.post("/api/clock", json={"unix_ms": target})
        assert r.status_code == 409 and "network time" in r.text
        assert (await server.client.get("/api/status")).json()["clock"]["settable"] is False
        assert len(calls) == 1


@pytest.mark.trio
async def test_absurd_times_and_bodies_are_refused(tmp_path):
    async with open_server(unsynced_config(tmp_path)) as server:
        calls: list[int] = []
        server.service.clock.setter = calls.append
        earliest_ms = int(built_at() * 1000)
        for body in ({"unix_ms": 0}, {"unix_ms": -1}, {"unix_ms": earliest_ms - 1000},
                     {"unix_ms": earliest_ms + (MAX_AHEAD_S + 10) * 1000},
                     {"unix_ms": 10 ** 400}, {"unix_ms": 1e308}, {"unix_ms": True},
                     {"unix_ms": str(NOW_MS)}, {"unix_ms": None}, {"unix_ms": [NOW_MS]},
                     {}, {"unix_ms": NOW_MS, "extra": 1}, [NOW_MS], NOW_MS):
            r = await server.client.post("/api/clock", json=body)
            assert r.status_code == 400, (body, r.status_code, r.text)
        for raw in (b"NaN", b'{"unix_ms": NaN}', b'{"unix_ms": Infinity}', b"{", b"\xff"):
            r = await server.client.post("/api/clock", content=raw,
                                         headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (raw, r.status_code, r.text)
        assert calls == []


@pytest.mark.trio
async def test_only_the_admin_sets_the_clock_and_a_browser_needs_its_csrf_token(tmp_path):
    async with open_server(unsynced_config(tmp_path), headers={}) as server:
        calls: list[int] = []
        server.service.clock.setter = calls.append
        client = server.client
        assert (await client.post("/api/clock", json={"unix_ms": NOW_MS})).status_code == 401
        r = await client.post("/api/clock", json={"unix_ms": NOW_MS},
                              headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert r.status_code in (401, 429)
        csrf = (await client.post("/api/admin/login", json={"password": ADMIN_PASSWORD})).json()["csrf"]
        assert (await client.post("/api/clock", json={"unix_ms": NOW_MS})).status_code == 403
        r = await client.post("/api/clock", json={"unix_ms": NOW_MS},
                              headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert r.status_code == 403
        assert calls == []
        r = await client.post("/api/clock", json={"unix_ms": NOW_MS}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and calls == [NOW_MS * 1_000_000]


@pytest.mark.trio
async def test_a_box_that_may_not_set_its_clock_says_so(tmp_path):
    async with open_server(unsynced_config(tmp_path)) as server:
        def refused(ns: int) -> None:
            raise PermissionError(1, "Operation not permitted")
        server.service.clock.setter = refused
        r = await server.client.post("/api/clock", json={"unix_ms": NOW_MS})
        assert r.status_code == 422 and "CAP_SYS_TIME" in r.text


def test_the_sync_mark_of_timesyncd_refuses_a_manual_clock(tmp_path):
    root = tmp_path / "root"
    (root / TIMESYNC).parent.mkdir(parents=True)
    (root / TIMESYNC).write_text("")
    board = Board(root, tmp_path)
    calls: list[int] = []
    clock = WallClock(lambda: board.read().clock_synchronized, setter=calls.append)
    with pytest.raises(ManagedElsewhereError):
        clock.set({"unix_ms": NOW_MS})
    assert calls == [] and clock.status()["settable"] is False


def test_jumps_of_the_wall_clock_are_logged_a_backward_one_as_a_warning(caplog):
    caplog.set_level(logging.INFO, logger="appliance.clock")
    wall, mono = [1_800_000_000.0], [100.0]
    jumps = ClockJumps(lambda: wall[0], lambda: mono[0])
    wall[0] += 10
    mono[0] += 10
    assert jumps.check() == 0 and not caplog.records          # time passing is no jump
    wall[0] += 2.0
    assert jumps.check() == 0                                   # drift corrected: no jump
    wall[0] -= 3600
    assert jumps.check() == pytest.approx(-3600)
    assert caplog.records[-1].levelno == logging.WARNING and "back 3600 s" in caplog.records[-1].getMessage()
    assert jumps.backwards == 1
    wall[0] += 86400
    assert jumps.check() == pytest.approx(86400)
    assert caplog.records[-1].levelno == logging.INFO and "forward" in caplog.records[-1].getMessage()


def test_a_clock_set_here_is_not_reported_again_as_a_jump(caplog):
    caplog.set_level(logging.INFO, logger="appliance.clock")
    wall, mono = [time.time()], [5.0]
    jumps = ClockJumps(lambda: wall[0], lambda: mono[0])

    def setter(ns: int) -> None:
        wall[0] = ns / 1e9
    clock = WallClock(lambda: False, setter=setter, wall=lambda: wall[0], jumps=jumps)
    clock.set({"unix_ms": int((wall[0] + 7200) * 1000)})
    assert len(caplog.records) == 1 and "clock set" in caplog.records[0].getMessage()
    assert jumps.check() == 0 and len(caplog.records) == 1
