"""The sound devices the appliance may open: an enumerated list, never a
free-form ALSA string.

An ALSA device name is a small program: ``file:FILE='|cmd'`` runs a command,
``plug:{...}`` builds a plugin chain, a ``lib`` key loads a shared library.
So a name from the API or from a saved graph is accepted only if it is
exactly one of:

- ``default``;
- ``hw:CARD=<id>,DEV=<n>`` and ``plughw:CARD=<id>,DEV=<n>`` for each card
  and PCM device the kernel lists in ``/proc/asound`` (``cards`` and
  ``pcm``, which say whether a device plays, captures or both), and for
  device 0 also the short ``hw:CARD=<id>`` / ``plughw:CARD=<id>``;
- a PCM the appliance's own ALSA configuration defines by name (what
  alsa-lib's device hints list: ``hatin``, ``null``, ...), when the name is a
  plain word: no ``:`` arguments, no braces, quotes, pipes or spaces.

Reading ``/proc/asound`` is pure (the folder is a parameter, so tests use a
fake tree); asking alsa-lib for its named PCMs is isolated in
``named_pcms``. Both block briefly on files: call from a worker thread
where the event loop must not wait.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from .errors import InvalidError

__all__ = ["Device", "Direction", "DIRECTIONS", "ASOUND_DIR", "available_devices",
           "check_device", "check_mixer_device", "hardware_devices", "named_pcms", "parse_cards",
           "parse_pcm"]

log = logging.getLogger(__name__)

Direction = Literal["capture", "playback"]
DIRECTIONS: tuple[str, ...] = ("capture", "playback")
ASOUND_DIR = Path("/proc/asound")

# What the kernel allows in a card id (it drops everything else), bounded.
_CARD_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# A named PCM from the configuration: a plain word, nothing ALSA would parse.
_PCM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# How many choices an error message lists.
_SHOWN = 6


@dataclass(frozen=True)
class Device:
    """One device a source (capture) or sink (playback) may open."""
    id: str            # the ALSA name, exactly as the engine opens it
    description: str
    direction: str     # "capture" or "playback"
    # Other exact names for the same device ("plughw:CARD=x" is DEV=0), so
    # configs and saved graphs written before the list existed still load.
    aliases: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "description": self.description, "direction": self.direction,
                "aliases": list(self.aliases)}


def parse_cards(text: str) -> dict[int, tuple[str, str]]:
    """``/proc/asound/cards`` → {card index: (id, long name)}. Lines look like
    `` 0 [sndrpihifiberry]: HifiberryDacp - snd_rpi_hifiberry_dacplus``,
    each followed by an indented line with the long name."""
    cards: dict[int, tuple[str, str]] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\d{1,3}) \[([^\]]*)\]\s*:\s*(.*)$", line)
        if not m:
            continue
        card_id = m.group(2).strip()
        if not _CARD_ID.fullmatch(card_id):
            continue   # not something the kernel makes: never put it in a name
        name = m.group(3).split(" - ", 1)[-1].strip()
        cards[int(m.group(1))] = (card_id, name)
    return cards


def parse_pcm(text: str) -> list[tuple[int, int, str, set[str]]]:
    """``/proc/asound/pcm`` → [(card, device, name, {"playback", "capture"})].
    Lines look like ``00-00: USB Audio : USB Audio : playback 1 : capture 1``."""
    out = []
    for line in text.splitlines():
        m = re.match(r"(\d{1,3})-(\d{1,3}): (.*)$", line)
        if not m:
            continue
        fields = [f.strip() for f in m.group(3).split(" : ")]
        directions = {f.split()[0] for f in fields[1:]
                      if re.fullmatch(r"(playback|capture) \d+", f)}
        out.append((int(m.group(1)), int(m.group(2)), fields[0], directions))
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""   # no sound card support at all (containers, laptops)


def hardware_devices(direction: str, asound_dir: Path = ASOUND_DIR) -> list[Device]:
    """``hw:`` and ``plughw:`` names for every card device in ``asound_dir``
    that can go in ``direction``."""
    cards = parse_cards(_read(asound_dir / "cards"))
    hw: list[Device] = []
    plug: list[Device] = []
    for card, dev, name, directions in parse_pcm(_read(asound_dir / "pcm")):
        if direction not in directions or card not in cards:
            continue
        card_id, card_name = cards[card]
        where = f"{card_name}: {name}" if name and name != card_name else card_name
        short = dev == 0   # ALSA's hw and plughw default DEV to 0
        hw.append(Device(f"hw:CARD={card_id},DEV={dev}",
                         f"{where} (card {card}, device {dev}; the card's own formats)",
                         direction, (f"hw:CARD={card_id}",) if short else ()))
        plug.append(Device(f"plughw:CARD={card_id},DEV={dev}",
                           f"{where} (card {card}, device {dev}; converts format and rate)",
                           direction, (f"plughw:CARD={card_id}",) if short else ()))
    return hw + plug


def named_pcms(direction: str) -> list[str]:
    """The PCM names alsa-lib's configuration defines for ``direction``
    (through pyalsaaudio), keeping only plain words: ``hw:CARD=...`` style
    hints with arguments are covered by ``hardware_devices`` instead."""
    try:
        import alsaaudio
        kind = alsaaudio.PCM_CAPTURE if direction == "capture" else alsaaudio.PCM_PLAYBACK
        names = alsaaudio.pcms(kind)
    except Exception as error:   # no alsa-lib, a broken config: offer the rest
        log.warning("cannot list the ALSA configuration's PCMs: %s", error)
        return []
    return [n for n in names if isinstance(n, str) and _PCM_NAME.fullmatch(n)]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")


def available_devices(direction: str, *, asound_dir: Path = ASOUND_DIR,
                      pcm_names: Iterable[str] | None = None) -> list[Device]:
    """Every device a source (``"capture"``) or a sink (``"playback"``) may
    open: ``default``, the cards' ``hw:``/``plughw:`` devices, then the
    configuration's named PCMs. ``pcm_names`` replaces asking alsa-lib."""
    _check_direction(direction)
    if pcm_names is None:
        pcm_names = named_pcms(direction)
    devices = [Device("default", "the system's default device", direction)]
    devices += hardware_devices(direction, asound_dir)
    seen = {d.id for d in devices}
    for name in pcm_names:
        if isinstance(name, str) and _PCM_NAME.fullmatch(name) and name not in seen:
            seen.add(name)
            devices.append(Device(name, f"ALSA PCM {name!r} from the appliance's configuration",
                                  direction))
    return devices


def check_device(name: object, direction: str, available: Iterable[Device] | None = None,
                 *, field: str = "device") -> str:
    """``name`` if it is exactly the id or an alias of one of the
    ``available`` devices (default: ``available_devices(direction)``), else
    ``InvalidError`` naming ``field`` and a few valid choices. The name itself
    is never echoed: it may be anything an attacker sent."""
    _check_direction(direction)
    devices = [d for d in (available_devices(direction) if available is None else available)
               if d.direction == direction]
    ids = [d.id for d in devices]
    if not isinstance(name, str):
        raise InvalidError(f"{field}: must be a string naming a {direction} device "
                           f"({_choices(ids)})")
    if not any(name == d.id or name in d.aliases for d in devices):
        raise InvalidError(f"{field}: not a {direction} device of this appliance "
                           f"({_choices(ids)}; GET /api/devices lists them all)")
    return name


def check_mixer_device(name: object, *, asound_dir: Path = ASOUND_DIR,
                       field: str = "device") -> str:
    """An ALSA ctl device for the mixer: ``default``, ``hw:CARD=<id>`` of a
    card the kernel has, or a plain name (one the ALSA configuration defines:
    ALSA looks nothing else up for it). Never plugin or file syntax."""
    cards = {card_id for card_id, _ in parse_cards(_read(asound_dir / "cards")).values()}
    if isinstance(name, str) and (_PCM_NAME.fullmatch(name) or (
            name.startswith("hw:CARD=") and name[len("hw:CARD="):] in cards)):
        return name
    choices = ["default", *(f"hw:CARD={c}" for c in sorted(cards))]
    raise InvalidError(f"{field}: not a mixer device of this appliance ({_choices(choices)})")


def _choices(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOWN])
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return f"one of: {shown}{more}"
