"""The factory reset without a screen (appliance/firstboot.py's
``factory_reset``): a ``factory-reset`` file on the boot partition wipes the
state folder at the next boot and goes, and nothing outside that folder is
ever touched. The image's appliance-firstboot runs it before anything reads
the state (tests/image/test_appliance_firstboot.py, end to end)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.firstboot import FACTORY_RESET, KEPT_ON_RESET, factory_reset


@pytest.fixture
def card(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A boot folder, a state folder as a running appliance leaves it, and a
    folder outside both that links inside the state point to."""
    boot, state, outside = tmp_path / "boot", tmp_path / "state", tmp_path / "outside"
    boot.mkdir()
    (boot / "appliance.toml").write_text('hostname = "studio"\n')
    state.mkdir()
    for name, text in {"state.json": '{"version": 1}', "admin-password": "scrypt$x",
                       "device-key": "k" * 32, "config.toml": "name = 'studio'\n",
                       ".settings-applied": "abc\n", "setup-code.txt": "K7QM-2XRD-9HVT\n"}.items():
        (state / name).write_text(text)
    (state / "tls").mkdir()
    (state / "tls/key.pem").write_text("key")
    (state / "media/deep/er").mkdir(parents=True)
    (state / "media/deep/er/a.wav").write_bytes(b"RIFF")
    (state / "rauc").mkdir()
    (state / "rauc/central.raucs").write_text("[slot.rootfs.1]\nstatus=bad\n")
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    # links inside the state folder to outside it: at the top and deeper down
    (state / "link-to-dir").symlink_to(outside)
    (state / "link-to-file").symlink_to(outside / "precious.txt")
    (state / "media/outside").symlink_to(outside)
    return boot, state, outside


def reset(boot: Path, state: Path) -> tuple[bool, list[str]]:
    said: list[str] = []
    return factory_reset(boot, state, said.append), said


def test_nothing_happens_without_the_file(card):
    boot, state, _ = card
    before = sorted(os.listdir(state))
    assert reset(boot, state) == (False, [])
    assert sorted(os.listdir(state)) == before


def test_the_file_wipes_the_state_and_goes_and_a_second_boot_does_nothing(card):
    boot, state, outside = card
    (boot / FACTORY_RESET).write_text("")
    done, said = reset(boot, state)
    assert done
    assert sorted(os.listdir(state)) == ["rauc"]          # RAUC's slot record stays
    assert (state / "rauc/central.raucs").read_text().endswith("status=bad\n")
    assert not (boot / FACTORY_RESET).exists()
    assert (boot / "appliance.toml").read_text() == 'hostname = "studio"\n'   # the card's settings stay
    assert any("wiping" in line for line in said) and any("done" in line for line in said)
    # links were removed, never followed
    assert sorted(os.listdir(outside)) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me"
    # the next boot: nothing to do, nothing said
    (state / "state.json").write_text("{}")
    assert reset(boot, state) == (False, [])
    assert (state / "state.json").exists()


def test_a_reset_cut_short_is_finished_at_the_next_boot(card, monkeypatch):
    """A power cut midway (here: the wipe fails on one entry) keeps the
    marker, and the next boot wipes the rest and removes it."""
    boot, state, outside = card
    (boot / FACTORY_RESET).write_text("")
    real_unlink = os.unlink

    def cut(path, *a, **kw):
        if str(path).endswith("device-key"):
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", cut)
    done, said = reset(boot, state)
    assert not done and (boot / FACTORY_RESET).exists()
    assert "device-key" in os.listdir(state)
    assert any("next boot" in line for line in said)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert reset(boot, state)[0]
    assert sorted(os.listdir(state)) == ["rauc"] and not (boot / FACTORY_RESET).exists()
    assert (outside / "precious.txt").read_text() == "keep me"


def test_an_empty_or_missing_state_folder_still_resets(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / FACTORY_RESET).write_text("yes")
    assert reset(boot, tmp_path / "no-state")[0]
    assert not (boot / FACTORY_RESET).exists()


@pytest.mark.parametrize("kind", ["directory", "symlink", "dangling symlink"])
def test_a_marker_that_is_not_a_file_is_ignored(card, kind):
    boot, state, outside = card
    marker = boot / FACTORY_RESET
    if kind == "directory":
        marker.mkdir()
        (marker / "inside").write_text("x")
    elif kind == "symlink":
        marker.symlink_to(outside / "precious.txt")
    else:
        marker.symlink_to(boot / "nowhere")
    before = sorted(os.listdir(state))
    done, said = reset(boot, state)
    assert not done and said and "ignored" in said[0]
    assert sorted(os.listdir(state)) == before
    assert os.path.lexists(marker)
    assert (outside / "precious.txt").read_text() == "keep me"


def test_an_unreadable_marker_still_resets(card):
    """Its contents are never read: only that it is a file."""
    boot, state, _ = card
    marker = boot / FACTORY_RESET
    marker.write_bytes(b"\xff\x00" * 100)
    marker.chmod(0)
    assert reset(boot, state)[0]
    assert sorted(os.listdir(state)) == sorted(KEPT_ON_RESET & {"rauc"})


def test_a_boot_folder_that_cannot_be_looked_into_is_no_reset(card, monkeypatch):
    boot, state, _ = card
    (boot / FACTORY_RESET).write_text("")
    real_lstat = os.lstat

    def refused(path, *a, **kw):
        if str(path).endswith(FACTORY_RESET):
            raise PermissionError(13, "Permission denied")
        return real_lstat(path, *a, **kw)

    monkeypatch.setattr(os, "lstat", refused)
    done, said = reset(boot, state)
    assert not done and "cannot be read" in said[0]
    assert "state.json" in os.listdir(state)


def test_a_state_folder_that_is_a_link_is_wiped_inside_only(tmp_path):
    """On the box the state folder is a mount point; were it a link, what it
    links to is the state, and its siblings are untouched."""
    boot, real, sibling = tmp_path / "boot", tmp_path / "real", tmp_path / "sibling"
    for d in (boot, real, sibling):
        d.mkdir()
    (real / "state.json").write_text("{}")
    (sibling / "keep").write_text("x")
    (tmp_path / "state").symlink_to(real)
    (boot / FACTORY_RESET).write_text("")
    assert reset(boot, tmp_path / "state")[0]
    assert os.listdir(real) == [] and (sibling / "keep").exists()
    assert (tmp_path / "state").is_symlink()
