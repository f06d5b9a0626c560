"""appliance.media and the engine's file open: file sources read only
regular files inside the media folder, of bounded size, and nothing about
what lies outside the folder leaks through an error. A FIFO never blocks the
event loop, whether it comes through the check or straight to the engine."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import trio

from appliance import EngineError, EngineSettings, ErrorCode, SourceSpec, open_engine
from appliance.errors import InvalidError
from appliance.media import (
    MAX_MEDIA_BYTES, MediaFile, list_media, media_folder, resolve_media,
)

from support.audio_sim import tone, write_wav

UNIFORM = "path: not a file in the media folder"


@pytest.fixture
def media(tmp_path) -> Path:
    """A media folder with a WAV and a subfolder, next to a "secret" outside it."""
    folder = tmp_path / "state" / "media"
    (folder / "talks").mkdir(parents=True)
    write_wav(folder / "music.wav", tone(440, 0.1))
    write_wav(folder / "talks" / "intro.wav", tone(440, 0.1))
    (tmp_path / "secret.txt").write_text("root:$y$...:19000:0:99999:7:::\n")
    return folder


def refused(folder: Path, path: object, match: str = "") -> str:
    with pytest.raises(InvalidError) as err:
        resolve_media(folder, path)
    assert err.value.message.startswith("path: ")
    if match:
        assert match in err.value.message, err.value.message
    return err.value.message


def test_files_in_the_folder_resolve_to_their_real_path(media):
    assert resolve_media(media, "music.wav") == (media / "music.wav").resolve()
    assert resolve_media(media, "talks/intro.wav") == (media / "talks" / "intro.wav").resolve()
    assert resolve_media(media, "./talks//intro.wav") == (media / "talks/intro.wav").resolve()
    # a symlink that stays inside the folder is fine, and resolves to its target
    (media / "alias.wav").symlink_to("talks/intro.wav")
    assert resolve_media(media, "alias.wav") == (media / "talks" / "intro.wav").resolve()
    # the folder itself may be reached through a symlink
    link = media.parent / "media-link"
    link.symlink_to(media)
    assert resolve_media(link, "music.wav") == (media / "music.wav").resolve()


def test_syntax_is_checked_before_the_file_system(media):
    refused(media, "/etc/shadow", "not absolute")
    refused(media, str(media / "music.wav"), "not absolute")
    refused(media, "../secret.txt", "'..'")
    refused(media, "talks/../../secret.txt", "'..'")
    refused(media, "talks/..", "'..'")
    refused(media, "music.wav\x00.txt", "control character")
    refused(media, "music.wav\n", "control character")
    refused(media, "a\rb", "control character")
    refused(media, "\x1b[31m.wav", "control character")
    refused(media, "\u2028.wav", "control character")
    refused(media, "\ud800.wav", "lone surrogate")
    refused(media, "", "1 to 1024")
    refused(media, "a/" * 600, "1 to 1024")
    refused(media, "x" * 256, "longer than 255 bytes")
    refused(media, "é" * 128, "longer than 255 bytes")   # 256 bytes in UTF-8
    for value in (None, 5, 1.5, True, ["music.wav"], {"p": 1}, b"music.wav"):
        refused(media, value, "must be a string")


def test_escapes_and_non_files_all_get_the_same_answer(media, tmp_path):
    """Outside the folder, missing, a FIFO, a device, a directory, a loop:
    one message, so an answer never says whether something exists."""
    (media / "to-secret").symlink_to(tmp_path / "secret.txt")
    (media / "to-missing").symlink_to(tmp_path / "missing.txt")
    (media / "to-shadow").symlink_to("/etc/shadow")
    (media / "to-root").symlink_to("/")
    (media / "to-zero.wav").symlink_to("/dev/zero")
    (media / "to-parent").symlink_to("..")
    (media / "loop").symlink_to("loop")
    os.mkfifo(media / "fifo.wav")
    (media / "to-fifo.wav").symlink_to("fifo.wav")
    paths = ["to-secret", "to-missing", "to-shadow", "to-root/etc/shadow", "to-zero.wav",
             "to-parent/secret.txt", "to-parent/missing", "loop", "fifo.wav", "to-fifo.wav",
             "talks", ".", "missing.wav", "talks/missing.wav", "music.wav/x"]
    with Unblocker(media / "fifo.wav") as guard:
        for path in paths:
            assert refused(media, path) == UNIFORM, path
    assert not guard.had_to, "the check blocked on the FIFO"
    # a media folder that does not exist (yet): the same answer
    assert refused(media / "nope", "music.wav") == UNIFORM


def test_size_is_bounded_and_empty_files_are_refused(media):
    huge = media / "huge.wav"
    with open(huge, "wb") as f:   # sparse: no disk used
        f.truncate(MAX_MEDIA_BYTES + 1)
    refused(media, "huge.wav", "larger than 256 MiB")
    with open(huge, "r+b") as f:
        f.truncate(MAX_MEDIA_BYTES)
    assert resolve_media(media, "huge.wav") == huge.resolve()
    with pytest.raises(InvalidError, match="larger than 1 MiB"):
        resolve_media(media, "huge.wav", max_bytes=1024 * 1024)
    (media / "empty.wav").write_bytes(b"")
    refused(media, "empty.wav", "empty")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_files_are_refused(media):
    (media / "locked.wav").write_bytes(b"RIFF")
    (media / "locked.wav").chmod(0)
    assert refused(media, "locked.wav") == UNIFORM


def test_the_listing_offers_exactly_what_resolves(media, tmp_path):
    (media / "to-secret").symlink_to(tmp_path / "secret.txt")
    (media / "alias.wav").symlink_to("talks/intro.wav")
    (media / "to-parent").symlink_to("..")
    (media / "empty.wav").write_bytes(b"")
    (media / "bad\nname.wav").write_bytes(b"x")
    os.mkfifo(media / "fifo.wav")
    with open(media / "huge.wav", "wb") as f:
        f.truncate(MAX_MEDIA_BYTES + 1)
    size = (media / "music.wav").stat().st_size
    listed = list_media(media)
    assert listed == [MediaFile("alias.wav", size), MediaFile("music.wav", size),
                      MediaFile("talks/intro.wav", size)]
    for item in listed:
        assert resolve_media(media, item.path).is_file()
    assert listed[0].as_json() == {"path": "alias.wav", "size": size}
    assert list_media(tmp_path / "nope") == []


def test_the_folder_is_the_configured_one_or_under_the_state_dir(tmp_path):
    class Config:
        state_dir = tmp_path / "state"
        media_dir = ""
    assert media_folder(Config()) == tmp_path / "state" / "media"
    Config.media_dir = str(tmp_path / "elsewhere")
    assert media_folder(Config()) == tmp_path / "elsewhere"


# ---- the engine's own open ------------------------------------------------


class Unblocker:
    """If the engine's open of a FIFO blocks the calling (trio) thread,
    nothing in trio can cancel it: after a grace period this opens the FIFO's
    write end, which releases the reader, and records that it had to."""

    def __init__(self, fifo: Path, grace_s: float = 3.0):
        self.fifo, self.grace_s = fifo, grace_s
        self.done = threading.Event()
        self.had_to = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.done.wait(self.grace_s):
            return
        self.had_to = True
        try:
            os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    def __enter__(self) -> "Unblocker":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


@pytest.fixture
async def engine():
    async with open_engine(EngineSettings(ice_addresses=("127.0.0.1",))) as e:
        yield e


@pytest.mark.trio
async def test_a_fifo_given_to_the_engine_fails_at_once(engine, tmp_path):
    fifo = tmp_path / "stream.wav"
    os.mkfifo(fifo)
    with Unblocker(fifo) as guard, trio.fail_after(5):
        started = time.monotonic()
        with pytest.raises(EngineError) as err:
            await engine.add_source("x", SourceSpec(kind="file", path=str(fifo)))
        elapsed = time.monotonic() - started
    assert not guard.had_to, "the engine blocked on the FIFO"
    assert elapsed < 1.0
    assert err.value.code == ErrorCode.FILE
    assert engine.sources() == {}


@pytest.mark.trio
async def test_the_engine_opens_only_regular_files_and_says_nothing_more(engine, tmp_path):
    (tmp_path / "zero.wav").symlink_to("/dev/zero")
    wav = tmp_path / "real.wav"
    write_wav(wav, tone(440, 0.1))
    (tmp_path / "link.wav").symlink_to(wav)   # a symlink swapped in after a check
    (tmp_path / "dir.wav").mkdir()
    messages = []
    for name in ("missing.wav", "dir.wav", "zero.wav", "link.wav"):
        path = tmp_path / name
        with trio.fail_after(5), pytest.raises(EngineError) as err:
            await engine.add_source("x", SourceSpec(kind="file", path=str(path)))
        assert err.value.code == ErrorCode.FILE, name
        messages.append(err.value.message.replace(str(path), "P"))
    for path in ("/dev/zero", "/dev/null", "/dev/tty"):
        with trio.fail_after(5), pytest.raises(EngineError) as err:
            await engine.add_source("x", SourceSpec(kind="file", path=path))
        messages.append(err.value.message.replace(path, "P"))
    assert set(messages) == {"'P' is not a readable regular file"}, messages
    # /proc files claim to be empty regular files: refused all the same
    with trio.fail_after(5), pytest.raises(EngineError) as err:
        await engine.add_source("x", SourceSpec(kind="file", path="/proc/self/mem"))
    assert err.value.code == ErrorCode.FILE
    huge = tmp_path / "huge.wav"
    with open(huge, "wb") as f:
        f.truncate(MAX_MEDIA_BYTES + 1)
    with trio.fail_after(5), pytest.raises(EngineError, match="empty or too large"):
        await engine.add_source("x", SourceSpec(kind="file", path=str(huge)))
    await engine.add_source("ok", SourceSpec(kind="file", path=str(wav)))
    assert list(engine.sources()) == ["ok"]


@pytest.mark.trio
async def test_api_lists_the_media(tmp_path):
    from web.conftest import make_config, open_server
    config = make_config(tmp_path / "state")
    folder = media_folder(config)
    folder.mkdir(parents=True)
    write_wav(folder / "music.wav", tone(440, 0.1))
    (folder / "escape").symlink_to("/etc/passwd")
    async with open_server(config) as server:
        r = await server.client.get("/api/media")
        assert r.status_code == 200, r.text
        assert r.json() == {"folder": str(folder), "files": [
            {"path": "music.wav", "size": (folder / "music.wav").stat().st_size}]}
