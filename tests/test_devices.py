"""appliance.devices: only enumerated sound devices, never a free-form ALSA
string. Fake /proc/asound trees for the cards, the simulated PCMs of
tests/support/audio_sim for the configuration's named PCMs, the real engine
to show an attacker's device string never reaches alsa-lib, and
``GET /api/devices`` on a real server."""
from __future__ import annotations

from pathlib import Path

import pytest

from appliance import devices
from appliance.devices import Device, available_devices, check_device
from appliance.errors import InvalidError

from support.audio_sim import use_asoundrc

CARDS = """\
 0 [sndrpihifiberry]: HifiberryDacp - snd_rpi_hifiberry_dacplus
                      snd_rpi_hifiberry_dacplus
 1 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 2 [Device         ]: USB-Audio - USB Audio Device
                      C-Media USB Audio Device at usb-0000:01:00.0-1.3, full speed
 3 [bad;id{x}      ]: Evil - a card id the kernel would never make
                      Evil
"""
PCM = """\
00-00: HifiBerry DAC+ HiFi pcm512x-hifi-0 : HifiBerry DAC+ HiFi pcm512x-hifi-0 : playback 1
01-00: bcm2835 Headphones : bcm2835 Headphones : playback 8
02-00: USB Audio : USB Audio : playback 1 : capture 1
03-00: Evil : Evil : playback 1 : capture 1
07-00: no such card : x : capture 1
garbage line
"""

# What a hostile guest sends as a device (issue 9), none of which is in any list.
ATTACKS = [
    "file:FILE='|touch {marker}',FORMAT=raw",
    "file:'|touch {marker}'",
    "|touch {marker}",
    "plug:{{slave.pcm {{type file file \"|touch {marker}\" slave.pcm null}}}}",
    "{{type file file \"|touch {marker}\" slave.pcm null}}",
    "hw:0", "hw:0,0", "plughw:0,0", "hw:CARD=Nope", "hw:CARD=device",
    "hw:CARD=Device,DEV=0,SUBDEV=1",
    "hw:CARD=Device,DEV=1", "plughw:CARD=Device,DEV=00", "plughw:CARD=Device,",
    "hw:CARD=Nope,DEV=0", "default:CARD=Device", "sysdefault", "dmix", "filecap:x",
    "filecap ", " filecap", "FILECAP", "default\n", "default\x00", "\ud800", "", "x" * 10000,
]


def fake_asound(root: Path, cards: str = CARDS, pcm: str = PCM) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cards").write_text(cards)
    (root / "pcm").write_text(pcm)
    return root


def ids(devs: list[Device]) -> list[str]:
    return [d.id for d in devs]


def test_cards_and_their_directions_come_from_proc_asound(tmp_path):
    root = fake_asound(tmp_path / "asound")
    play = available_devices("playback", asound_dir=root, pcm_names=[])
    capture = available_devices("capture", asound_dir=root, pcm_names=[])
    assert ids(play) == [
        "default",
        "hw:CARD=sndrpihifiberry,DEV=0", "hw:CARD=Headphones,DEV=0", "hw:CARD=Device,DEV=0",
        "plughw:CARD=sndrpihifiberry,DEV=0", "plughw:CARD=Headphones,DEV=0",
        "plughw:CARD=Device,DEV=0"]
    assert ids(capture) == ["default", "hw:CARD=Device,DEV=0", "plughw:CARD=Device,DEV=0"]
    assert all(d.direction == "capture" for d in capture)
    usb = next(d for d in capture if d.id == "hw:CARD=Device,DEV=0")
    assert "USB Audio" in usb.description and "card 2" in usb.description
    assert usb.as_json() == {"id": usb.id, "description": usb.description,
                             "direction": "capture", "aliases": ["hw:CARD=Device"]}


def test_no_sound_support_leaves_default_and_named_pcms(tmp_path):
    devs = available_devices("capture", asound_dir=tmp_path / "missing", pcm_names=["hatin"])
    assert ids(devs) == ["default", "hatin"]
    garbage = fake_asound(tmp_path / "g", cards="\x00\xff nonsense\n", pcm="00-00\n")
    assert ids(available_devices("playback", asound_dir=garbage, pcm_names=[])) == ["default"]


def test_named_pcms_with_arguments_or_syntax_are_never_offered(tmp_path):
    names = ["hatin", "hatin", "default", "null", "hw:CARD=x,DEV=0", "front:CARD=a,DEV=0",
             "plug:{slave.pcm null}", "a b", "|touch x", "x'y", "x\"y", "x\ny", "-dash",
             ".dot", "\ud800", 5, None, "y" * 65]
    got = ids(available_devices("playback", asound_dir=tmp_path, pcm_names=names))
    assert got == ["default", "hatin", "null"]


def test_the_simulated_pcms_are_listed(tmp_path, monkeypatch):
    """The named PCMs of an asoundrc like the ones the engine tests use."""
    use_asoundrc(monkeypatch, tmp_path / "asoundrc",
                 'pcm.filecap { type file slave.pcm "null" file "/dev/null" '
                 f'infile "{tmp_path}/in.raw" format "raw" }}\n'
                 f'pcm.rawout {{ type file slave.pcm "null" file "{tmp_path}/out.wav" }}\n'
                 'pcm.hatin { type null }\n')
    for direction in ("capture", "playback"):
        names = devices.named_pcms(direction)
        assert {"filecap", "rawout", "hatin", "null"} <= set(names), names
        assert all(":" not in n for n in names)
        listed = ids(available_devices(direction, asound_dir=tmp_path / "none"))
        assert listed[0] == "default" and "hatin" in listed
        assert check_device("filecap", direction) == "filecap"


def test_only_exact_names_from_the_list_are_accepted(tmp_path):
    root = fake_asound(tmp_path / "asound")
    play = available_devices("playback", asound_dir=root, pcm_names=["hatout"])
    capture = available_devices("capture", asound_dir=root, pcm_names=["hatin"])
    for dev in play:
        assert check_device(dev.id, "playback", play) == dev.id
    assert check_device("hw:CARD=Device,DEV=0", "capture", capture) == "hw:CARD=Device,DEV=0"
    # device 0's short names, as configs written before the list used them
    assert check_device("plughw:CARD=Device", "capture", capture) == "plughw:CARD=Device"
    assert check_device("hw:CARD=sndrpihifiberry", "playback", play) == "hw:CARD=sndrpihifiberry"
    # a playback-only card is not a capture device, and lists don't mix
    with pytest.raises(InvalidError):
        check_device("hw:CARD=Headphones,DEV=0", "capture", capture)
    with pytest.raises(InvalidError):
        check_device("hatout", "capture", play)
    # a card id the kernel would not make is never turned into a name
    assert not any("Evil" in d.id or "bad" in d.id for d in play + capture)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacker_strings_are_refused_with_a_plain_reason(tmp_path, attack):
    """Nothing is run: check_device opens nothing, and refuses before anything could."""
    root = fake_asound(tmp_path / "asound")
    marker = tmp_path / "pwned"
    name = attack.format(marker=marker) if "{marker}" in attack else attack
    for direction in ("capture", "playback"):
        avail = available_devices(direction, asound_dir=root, pcm_names=["filecap", "hatin"])
        with pytest.raises(InvalidError) as err:
            check_device(name, direction, avail, field="device")
        message = err.value.message
        assert message.startswith("device: ") and "default" in message
        with pytest.raises(InvalidError) as plain_wrong:
            check_device("nope", direction, avail, field="device")
        assert message == plain_wrong.value.message   # the string is never echoed
    assert not marker.exists()


def test_wrong_types_are_refused(tmp_path):
    avail = available_devices("capture", asound_dir=tmp_path, pcm_names=[])
    for value in (None, 5, 1.5, ["default"], {"device": "default"}, b"default", True):
        with pytest.raises(InvalidError, match="^input_device: must be a string"):
            check_device(value, "capture", avail, field="input_device")
    with pytest.raises(ValueError):
        available_devices("sideways", asound_dir=tmp_path, pcm_names=[])


def test_the_error_lists_only_a_few_choices(tmp_path):
    pcm = "".join(f"00-{n:02d}: d{n} : d{n} : playback 1\n" for n in range(40))
    root = fake_asound(tmp_path / "asound", cards=" 0 [Big]: x - Big card\n", pcm=pcm)
    avail = available_devices("playback", asound_dir=root, pcm_names=[])
    assert len(avail) == 81
    with pytest.raises(InvalidError, match=r"and 75 more; GET /api/devices"):
        check_device("hw:0", "playback", avail)


@pytest.mark.trio
async def test_api_lists_the_devices(tmp_path, monkeypatch):
    from web.conftest import make_config, open_server
    use_asoundrc(monkeypatch, tmp_path / "asoundrc", "pcm.hatin { type null }\n")
    async with open_server(make_config(tmp_path / "state")) as server:
        r = await server.client.get("/api/devices")
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"capture", "playback"}
        for direction, listed in body.items():
            assert listed[0] == {"id": "default", "description": listed[0]["description"],
                                 "direction": direction, "aliases": []}
            assert "hatin" in [d["id"] for d in listed]
            assert all(":" not in d["id"] or d["id"].startswith(("hw:CARD=", "plughw:CARD="))
                       for d in listed)
        r = await server.client.post("/api/devices", json={"id": "x"})
        assert r.status_code == 405
