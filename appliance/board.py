"""The board's health, read from the kernel's and the firmware's files: what
actually ends a Pi's audio in the field. An undersized power supply
(under-voltage throttles the CPU and upsets USB and I2S), heat, a full
disk, a clock that was never set.

Everything is read under one root (``Config.board_root``, "/" on the box),
so tests feed every reading from files:

- ``sys/devices/platform/soc/soc:firmware/get_throttled``: the firmware's
  flags in hex (Raspberry Pi kernels; absent elsewhere): bit 0 under-voltage
  now, 1 ARM frequency capped now, 2 throttled now, 3 soft temperature limit
  now; bits 16-19 the same since boot.
- ``sys/class/thermal/thermal_zone*/temp`` (millidegrees) and ``type``.
- ``run/systemd/timesync/synchronized``: systemd-timesyncd made it once
  the clock was synchronised (absent: not synchronised, or no timesyncd).
- the free space of the state folder.

Read at most once a second; changes are logged.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BoardHealth", "Board"]

log = logging.getLogger(__name__)

THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
THERMAL = "sys/class/thermal"
TIMESYNC = "run/systemd/timesync/synchronized"
# the firmware's flags: (bit now, bit since boot)
FLAGS = {"under_voltage": (0, 16), "frequency_capped": (1, 17), "throttled": (2, 18),
         "soft_temperature_limit": (3, 19)}
HOT_C = 80.0                 # the Pi's firmware starts throttling at 80-85 degrees C
LOW_DISK_BYTES = 200 << 20   # an update or a day of logs needs room
READ_EVERY_S = 1.0


@dataclass(frozen=True)
class BoardHealth:
    """One reading. ``now``/``since_boot``: the firmware's flags set (None:
    no firmware file, not a Pi); ``advice``: what to do, in words."""
    now: tuple[str, ...] | None
    since_boot: tuple[str, ...] | None
    temperature_c: float | None
    thermal_zones: dict[str, float] = field(default_factory=dict)
    clock_synchronized: bool = False
    disk_free_bytes: int | None = None
    advice: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("now", "since_boot", "advice"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out


def _advice(now: tuple[str, ...], since: tuple[str, ...], temperature: float | None,
            synchronized: bool, free: int | None) -> tuple[str, ...]:
    out = []
    if "under_voltage" in now or "under_voltage" in since:
        out.append("The power supply is too weak" + (" right now" if "under_voltage" in now
                                                     else " (it dipped since the last boot)")
                   + ": use the official 5.1 V 3 A supply (5 A for a Pi 5) and a short, thick "
                   "cable. Under-voltage throttles the CPU and can click the audio.")
    if {"throttled", "frequency_capped", "soft_temperature_limit"} & set(now) \
            or (temperature is not None and temperature >= HOT_C):
        out.append("The board is too hot and slows itself down: give it air, a case with a "
                   "heatsink or a fan, and keep it out of the sun and off amplifiers.")
    if not synchronized:
        out.append("The clock is not synchronised (no network time): logs and update times may "
                   "be wrong. The admin page can set it from this browser's clock.")
    if free is not None and free < LOW_DISK_BYTES:
        out.append(f"Only {free >> 20} MiB are free on the card: updates and logs need more. "
                   "Remove media files, or use a larger card.")
    return tuple(out)


class Board:
    """Reads the board's health under ``root``; ``state_dir`` for the disk."""

    def __init__(self, root: Path, state_dir: Path) -> None:
        self.root, self.state_dir = Path(root), Path(state_dir)
        self._last: BoardHealth | None = None
        self._read_at = -1e9

    def _flags(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        try:
            value = int((self.root / THROTTLED).read_text().strip(), 16)
        except (OSError, ValueError):
            return None
        now = tuple(name for name, (bit, _) in FLAGS.items() if value >> bit & 1)
        since = tuple(name for name, (_, bit) in FLAGS.items() if value >> bit & 1)
        return now, since

    def _thermal(self) -> dict[str, float]:
        zones = {}
        for zone in sorted((self.root / THERMAL).glob("thermal_zone*"))[:16]:
            try:
                kind = (zone / "type").read_text().strip()[:32] or zone.name
                zones[kind] = int((zone / "temp").read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
        return zones

    def read(self) -> BoardHealth:
        """The health now (read again at most once a second); a change
        from the last reading is logged."""
        now_s = time.monotonic()
        if self._last is not None and now_s - self._read_at < READ_EVERY_S:
            return self._last
        flags = self._flags()
        zones = self._thermal()
        temperature = max(zones.values()) if zones else None
        synchronized = (self.root / TIMESYNC).exists()
        try:
            free: int | None = shutil.disk_usage(self.state_dir).free
        except OSError:
            free = None
        now, since = flags if flags is not None else (None, None)
        health = BoardHealth(now, since, temperature, zones, synchronized, free,
                             _advice(now or (), since or (), temperature, synchronized, free))
        self._log_change(health)
        self._last, self._read_at = health, now_s
        return health

    def _log_change(self, health: BoardHealth) -> None:
        last = self._last
        if last is None or last.now != health.now or last.since_boot != health.since_boot:
            if health.now or health.since_boot:
                log.warning("board: %s now, %s since boot", ", ".join(health.now or ()) or "fine",
                            ", ".join(health.since_boot or ()) or "nothing")
            elif last is not None:
                log.info("board: the firmware reports nothing wrong")
        if last is None or last.clock_synchronized != health.clock_synchronized:
            log.info("board: the clock is %ssynchronised",
                     "" if health.clock_synchronized else "not ")
