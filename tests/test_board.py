"""The board's health from files: every combination of the firmware's
throttling flags, the thermal zones, the clock's sync and the disk, as
appliance.board reads them under a root of the test's own; and through
/api/status and /metrics."""
from __future__ import annotations

import itertools
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance import board as board_module
from appliance.board import FLAGS, THERMAL, THROTTLED, TIMESYNC, Board

BITS = [bit for pair in FLAGS.values() for bit in pair]


def fake_root(root, *, throttled: int | None = None, zones: dict[str, int] | None = None,
              synchronized: bool = False):
    if throttled is not None:
        path = root / THROTTLED
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{throttled:x}\n")
    for n, (kind, millidegrees) in enumerate((zones or {}).items()):
        zone = root / THERMAL / f"thermal_zone{n}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{millidegrees}\n")
    if synchronized:
        (root / TIMESYNC).parent.mkdir(parents=True, exist_ok=True)
        (root / TIMESYNC).touch()
    return root


def test_every_combination_of_the_firmwares_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(board_module, "READ_EVERY_S", 0.0)
    root = fake_root(tmp_path / "root", zones={"cpu-thermal": 45000}, synchronized=True)
    board = Board(root, tmp_path)
    for bits in itertools.product((0, 1), repeat=len(BITS)):
        value = sum(bit << position for bit, position in zip(bits, BITS, strict=True))
        fake_root(root, throttled=value)
        health = board.read()
        now = {name for name, (bit, _) in FLAGS.items() if value >> bit & 1}
        since = {name for name, (_, bit) in FLAGS.items() if value >> bit & 1}
        assert set(health.now) == now and set(health.since_boot) == since, hex(value)
        power = [a for a in health.advice if "power supply" in a]
        assert bool(power) == ("under_voltage" in now | since), hex(value)
        if power:
            assert ("right now" in power[0]) == ("under_voltage" in now)
        hot = [a for a in health.advice if "too hot" in a]
        assert bool(hot) == bool({"throttled", "frequency_capped",
                                  "soft_temperature_limit"} & now), hex(value)


def test_heat_the_clock_and_a_board_without_firmware_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(board_module, "READ_EVERY_S", 0.0)
    root = fake_root(tmp_path / "root", zones={"cpu-thermal": 81500, "gpu": 60000})
    health = Board(root, tmp_path).read()
    assert health.now is None and health.since_boot is None   # not a Pi: no flags at all
    assert health.temperature_c == 81.5 and health.thermal_zones == {"cpu-thermal": 81.5,
                                                                      "gpu": 60.0}
    assert any("too hot" in a for a in health.advice)
    assert not health.clock_synchronized and any("clock" in a for a in health.advice)
    assert health.disk_free_bytes and health.disk_free_bytes > 0
    fake_root(root, synchronized=True)
    (root / THERMAL / "thermal_zone0" / "temp").write_text("garbage\n")
    health = Board(root, tmp_path).read()
    assert health.clock_synchronized and health.thermal_zones == {"gpu": 60.0}
    assert health.advice == ()


def test_a_change_is_logged_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(board_module, "READ_EVERY_S", 0.0)
    root = fake_root(tmp_path / "root", throttled=0, synchronized=True)
    board = Board(root, tmp_path)
    with caplog.at_level(logging.INFO, logger="appliance.board"):
        board.read()
        fake_root(root, throttled=0x50005)
        board.read()
        board.read()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["board: under_voltage, throttled now, under_voltage, throttled since boot"]


def test_readings_are_cached_for_a_second(tmp_path):
    root = fake_root(tmp_path / "root", throttled=0)
    board = Board(root, tmp_path)
    first = board.read()
    fake_root(root, throttled=0x1)
    assert board.read() is first
    started = time.monotonic()
    while board.read() is first:
        assert time.monotonic() - started < 3
        time.sleep(0.05)
    assert board.read().now == ("under_voltage",)


@pytest.mark.trio
async def test_the_status_and_the_metrics_carry_the_board(tmp_path):
    from tests.web.conftest import make_config, open_server

    root = fake_root(tmp_path / "root", throttled=0x50000, zones={"cpu-thermal": 52000})
    config = make_config(tmp_path / "state").replace(board_root=root)
    async with open_server(config) as server:
        board = (await server.client.get("/api/status")).json()["board"]
        assert board["now"] == [] and board["since_boot"] == ["under_voltage", "throttled"]
        assert board["temperature_c"] == 52.0 and not board["clock_synchronized"]
        assert any("power supply" in a for a in board["advice"])
        families = {f.name: f for f in text_string_to_metric_families(
            (await server.client.get("/metrics")).text)}
        flags = {(s.labels["flag"], s.labels["when"]): s.value
                 for s in families["appliance_board_flag"].samples}
        assert flags[("under_voltage", "since_boot")] == 1 and flags[("under_voltage", "now")] == 0
        assert families["appliance_board_temperature_celsius"].samples[0].value == 52.0
        assert families["appliance_board_clock_synchronized"].samples[0].value == 0
