"""The HAT's ALSA mixer controls (volume, capture gain, input select): read
and written through pyalsaaudio as plain JSON-able dicts, and kept by
``HatControls``, which saves every change (store section "mixer": the device
and a snapshot of every control) and puts it back when the appliance starts,
so the HAT comes back with the levels it had before a power cut. ("Mixer"
alone is the engine's mixing thread.)

The functions block (alsa-lib may talk to a daemon or the kernel): call them
from a worker thread, as ``HatControls`` does. A control is described as::

    {"name": "Master", "index": 0,
     "playback": {"volume": [80, 80], "mute": [false, false]},   # if it has them
     "capture": {"volume": [50], "switch": [true]},              # if it has them
     "enum": {"value": "Line", "options": ["Mic", "Line"]}}      # input selects

Volumes are percentages (0..100) per channel, as ``alsamixer`` shows them.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import alsaaudio
import trio

from . import devices
from .errors import InvalidError, NotFoundError

__all__ = ["HatControls", "MixerError", "list_controls", "read_control", "write_control",
           "snapshot", "restore", "SETTABLE"]

log = logging.getLogger(__name__)

# The fields a client may set, and what they take.
SETTABLE = ("playback_volume", "playback_mute", "capture_volume", "capture_switch", "enum")


class MixerError(Exception):
    """The mixer or a control could not be read or written (no card, no such
    control, a value it does not take)."""


def _open(device: str, name: str, index: int = 0) -> "alsaaudio.Mixer":
    try:
        return alsaaudio.Mixer(name, index, device=device)
    except alsaaudio.ALSAAudioError as error:
        raise MixerError(f"no mixer control {name!r} on {device!r}: {error}") from None


def list_controls(device: str) -> list[dict[str, Any]]:
    """Every simple control of the mixer ``device`` (an ALSA ctl name such as
    "default" or "hw:CARD=sndrpihifiberry")."""
    try:
        names = alsaaudio.mixers(device=device)
    except alsaaudio.ALSAAudioError as error:
        raise MixerError(f"no mixer on {device!r}: {error}") from None
    out = []
    seen: dict[str, int] = {}
    for name in names:
        index = seen.get(name, 0)
        seen[name] = index + 1
        try:
            out.append(read_control(device, name, index))
        except MixerError:
            continue  # a control that cannot be opened is not shown
    return out


def _describe(mixer: "alsaaudio.Mixer", name: str, index: int) -> dict[str, Any]:
    volume_caps = set(mixer.volumecap())
    switch_caps = set(mixer.switchcap())
    control: dict[str, Any] = {"name": name, "index": index}
    if volume_caps & {"Volume", "Joined Volume", "Playback Volume", "Joined Playback Volume"}:
        playback: dict[str, Any] = {"volume": list(mixer.getvolume(alsaaudio.PCM_PLAYBACK))}
        if switch_caps & {"Mute", "Joined Mute", "Playback Mute", "Joined Playback Mute"}:
            playback["mute"] = [bool(m) for m in mixer.getmute()]
        control["playback"] = playback
    elif switch_caps & {"Mute", "Joined Mute", "Playback Mute", "Joined Playback Mute"}:
        control["playback"] = {"mute": [bool(m) for m in mixer.getmute()]}
    if volume_caps & {"Capture Volume", "Joined Capture Volume"}:
        capture: dict[str, Any] = {"volume": list(mixer.getvolume(alsaaudio.PCM_CAPTURE))}
        if switch_caps & {"Capture Mute", "Joined Capture Mute", "Capture Exclusive"}:
            capture["switch"] = [bool(s) for s in mixer.getrec()]
        control["capture"] = capture
    elif switch_caps & {"Capture Mute", "Joined Capture Mute", "Capture Exclusive"}:
        control["capture"] = {"switch": [bool(s) for s in mixer.getrec()]}
    enum = mixer.getenum()
    if enum:
        value, options = enum
        control["enum"] = {"value": value, "options": list(options)}
    return control


def read_control(device: str, name: str, index: int = 0) -> dict[str, Any]:
    mixer = _open(device, name, index)
    try:
        return _describe(mixer, name, index)
    except alsaaudio.ALSAAudioError as error:
        raise MixerError(f"cannot read {name!r}: {error}") from None
    finally:
        mixer.close()


def _percent(value: Any, field: str) -> list[int]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise MixerError(f"{field} must be a percentage 0..100 (or a list of them)")
        out.append(int(round(v)))
    if not out:
        raise MixerError(f"{field} must not be empty")
    return out


def _flags(value: Any, field: str) -> list[bool]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, bool) for v in values):
        raise MixerError(f"{field} must be true or false (or a list of them)")
    return values


def _set_per_channel(setter: Any, values: list[Any], **kw: Any) -> None:
    if len(values) == 1:
        setter(values[0], **kw)
    else:
        for channel, value in enumerate(values):
            setter(value, channel, **kw)


def write_control(device: str, name: str, changes: dict[str, Any],
                  index: int = 0) -> dict[str, Any]:
    """Apply ``changes`` (keys from ``SETTABLE``) to one control; returns the
    control as read back afterwards."""
    for key in changes:
        if key not in SETTABLE:
            raise MixerError(f"unknown mixer field {key!r}")
    mixer = _open(device, name, index)
    try:
        control = _describe(mixer, name, index)
        if "playback_volume" in changes:
            if "volume" not in control.get("playback", {}):
                raise MixerError(f"{name!r} has no playback volume")
            _set_per_channel(lambda v, *c: mixer.setvolume(v, *c, pcmtype=alsaaudio.PCM_PLAYBACK),
                             _percent(changes["playback_volume"], "playback_volume"))
        if "playback_mute" in changes:
            if "mute" not in control.get("playback", {}):
                raise MixerError(f"{name!r} has no playback mute")
            _set_per_channel(lambda v, *c: mixer.setmute(int(v), *c),
                             _flags(changes["playback_mute"], "playback_mute"))
        if "capture_volume" in changes:
            if "volume" not in control.get("capture", {}):
                raise MixerError(f"{name!r} has no capture volume")
            _set_per_channel(lambda v, *c: mixer.setvolume(v, *c, pcmtype=alsaaudio.PCM_CAPTURE),
                             _percent(changes["capture_volume"], "capture_volume"))
        if "capture_switch" in changes:
            if "switch" not in control.get("capture", {}):
                raise MixerError(f"{name!r} has no capture switch")
            _set_per_channel(lambda v, *c: mixer.setrec(int(v), *c),
                             _flags(changes["capture_switch"], "capture_switch"))
        if "enum" in changes:
            if "enum" not in control:
                raise MixerError(f"{name!r} is not a selection")
            options = control["enum"]["options"]
            if changes["enum"] not in options:
                raise MixerError(f"{name!r} takes one of {', '.join(options)}")
            mixer.setenum(options.index(changes["enum"]))
    except alsaaudio.ALSAAudioError as error:
        raise MixerError(f"cannot set {name!r}: {error}") from None
    finally:
        mixer.close()
    return read_control(device, name, index)


def snapshot(controls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The settable state of ``controls`` (as from ``list_controls``), keyed
    by "name" or "name,index": what is persisted."""
    out: dict[str, dict[str, Any]] = {}
    for control in controls:
        key = control["name"] if control["index"] == 0 else f"{control['name']},{control['index']}"
        state: dict[str, Any] = {}
        playback = control.get("playback", {})
        capture = control.get("capture", {})
        if "volume" in playback:
            state["playback_volume"] = playback["volume"]
        if "mute" in playback:
            state["playback_mute"] = playback["mute"]
        if "volume" in capture:
            state["capture_volume"] = capture["volume"]
        if "switch" in capture:
            state["capture_switch"] = capture["switch"]
        if "enum" in control:
            state["enum"] = control["enum"]["value"]
        out[key] = state
    return out


def restore(device: str, saved: dict[str, dict[str, Any]]) -> list[str]:
    """Apply a ``snapshot`` to the mixer; controls that are gone or refuse a
    value are skipped. Returns the problems (empty when all went in)."""
    problems = []
    for key, state in saved.items():
        name, _, index = key.partition(",")
        try:
            write_control(device, name, {k: v for k, v in state.items() if k in SETTABLE},
                          int(index or 0))
        except (MixerError, ValueError) as error:
            problems.append(str(error))
    return problems


class _Sections(Protocol):
    """The part of the store the controls are kept in (appliance.store.Store)."""

    def section(self, name: str, default: Any = None) -> Any: ...

    async def save_section(self, name: str, value: Any) -> None: ...


class HatControls:
    """The HAT's controls as the service keeps them: one conversation with
    the card at a time, every change saved, the saved state put back at the
    start. Its failures are the appliance's errors (InvalidError,
    NotFoundError)."""

    SECTION = "mixer"            # the store section (also in backups)
    DEFAULT_DEVICE = "default"

    def __init__(self, store: _Sections):
        self._store = store
        self._lock = trio.Lock()

    def _saved(self) -> dict[str, Any]:
        saved = self._store.section(self.SECTION) or {}
        return saved if isinstance(saved, dict) else {}

    def device(self) -> str:
        """The saved device, checked again: the state file is not trusted."""
        try:
            return devices.check_mixer_device(self._saved().get("device"))
        except InvalidError:
            return self.DEFAULT_DEVICE

    async def restore(self) -> None:
        """Put back the saved settings (best effort: no card, no harm)."""
        saved = self._saved()
        if not isinstance(saved.get("controls"), dict):
            return
        try:
            device = devices.check_mixer_device(saved.get("device") or self.DEFAULT_DEVICE)
            problems = await trio.to_thread.run_sync(restore, device, saved["controls"])
        except Exception as error:  # never keep the appliance from starting
            log.error("mixer settings not restored: %s", error)
            return
        for problem in problems:
            log.warning("mixer restore: %s", problem)

    async def read(self) -> dict[str, Any]:
        """``{"device", "available", "error", "controls"}``: a card that is
        not there is shown as such, not refused."""
        device = self.device()
        async with self._lock:
            try:
                controls = await trio.to_thread.run_sync(list_controls, device)
            except MixerError as error:
                return {"device": device, "available": False, "error": str(error),
                        "controls": []}
        return {"device": device, "available": True, "error": None, "controls": controls}

    async def use_device(self, name: str) -> dict[str, Any]:
        """Use another ctl device (checked: ``devices.check_mixer_device``)."""
        device = devices.check_mixer_device(name)
        async with self._lock:
            try:
                with trio.CancelScope(shield=True):
                    controls = await self._save(device)
            except MixerError as error:
                raise InvalidError(str(error)) from None
        return {"device": device, "available": True, "error": None, "controls": controls}

    async def set_control(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change one control, ``"name"`` or ``"name,index"``; returns it as it is now."""
        control_name, _, index_text = name.partition(",")
        try:
            index = int(index_text or 0)
        except ValueError:
            raise InvalidError(f"bad control {name!r}") from None
        device = self.device()
        async with self._lock:
            try:
                known = await trio.to_thread.run_sync(list_controls, device)
            except MixerError as error:
                raise NotFoundError(str(error)) from None
            if not any(c["name"] == control_name and c["index"] == index for c in known):
                raise NotFoundError(f"no mixer control {name!r}")
            # a client that leaves (its request cancelled) must not leave a
            # change applied but not saved
            with trio.CancelScope(shield=True):
                try:
                    control = await trio.to_thread.run_sync(
                        write_control, device, control_name, changes, index)
                except MixerError as error:
                    raise InvalidError(str(error)) from None
                await self._save(device)
        return control

    async def _save(self, device: str) -> list[dict[str, Any]]:
        """Save the device and its controls (callers shield it with the change)."""
        controls = await trio.to_thread.run_sync(list_controls, device)
        await self._store.save_section(self.SECTION, {"device": device,
                                                      "controls": snapshot(controls)})
        return controls
