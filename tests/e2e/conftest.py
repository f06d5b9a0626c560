"""End-to-end tests in Debian's headless Chromium against the real app (real
hypercorn on an ephemeral loopback port, the real engine with loopback-only
ICE; the server fixtures of tests/web are reused).

Chromium is driven by the ``playwright`` Python package with
``executable_path=/usr/bin/chromium`` (never a browser download). Its sync API
runs in one dedicated thread (``Browser.call``), so the trio tests keep their
event loop free for the server they talk to.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trio

from tests.support.audio_sim import PulseDaemon, use_asoundrc

CHROMIUM = os.environ.get("APPLIANCE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


class Browser:
    """Headless Chromium owned by one worker thread; ``await call(fn, ...)``
    runs ``fn(browser, ...)`` there."""

    def __init__(self, user_data_dir: Path, *, pulse_server: str | None = None,
                 executable: str | None = None, extra_args: tuple[str, ...] = ()):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._pool.submit(self._start, user_data_dir, pulse_server,
                          executable or CHROMIUM, extra_args).result(timeout=60)

    def _start(self, user_data_dir: Path, pulse_server: str | None, executable: str,
               extra_args: tuple[str, ...]) -> None:
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        env = dict(os.environ)
        if pulse_server:
            # a real, clocked audio output (a PulseAudio null sink) instead of
            # headless Chromium's fake one
            env["PULSE_SERVER"] = pulse_server
        # a persistent context with our own fresh profile directory
        self.context = self._pw.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=executable, headless=True,
            args=[*CHROMIUM_ARGS, *extra_args],
            viewport=DESKTOP, ignore_default_args=["--mute-audio"], env=env)

    def call_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, self, *args).result()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._pool.submit(fn, self, *args)
        return await trio.to_thread.run_sync(future.result)

    def new_page(self, size: dict[str, int] = DESKTOP,
                 on_dialog: Callable[[Any], None] | None = None) -> Any:
        page = self.context.new_page()
        page.set_viewport_size(size)
        page.on("dialog", on_dialog or (lambda dialog: dialog.accept()))
        return page

    def close(self) -> None:
        def stop() -> None:
            self.context.close()
            self._pw.stop()
        try:
            self._pool.submit(stop).result(timeout=30)
        finally:
            self._pool.shutdown(wait=True)


def playwright_function(script: str) -> str:
    """A function body that reads ``arguments`` (Marionette's form) as the
    function of one array argument that Playwright's evaluate calls."""
    return f"args => (function () {{ {script} }}).apply(null, args)"


@dataclasses.dataclass
class Page:
    """A page driven alike in Chromium and Firefox, in the browser's own
    thread: ``run(script, *args)`` its value, ``until(script, *args)`` waits
    (polling every 50 ms, ``timeout_s`` unless told) until it is truthy and
    gives that value; a script is a function body that reads ``arguments``."""
    run: Callable[..., Any]
    wait: Callable[..., Any]      # (script, *args, timeout_s=...): the driver's own
    timeout_s: float = 20

    def until(self, script: str, *args: Any, timeout_s: float | None = None) -> Any:
        return self.wait(script, *args,
                         timeout_s=self.timeout_s if timeout_s is None else timeout_s)

    @classmethod
    def chromium(cls, page: Any, timeout_s: float = 20) -> "Page":
        """``page``: a Playwright page."""
        def wait(script: str, *args: Any, timeout_s: float) -> Any:
            return page.wait_for_function(playwright_function(script), arg=list(args),
                                          timeout=timeout_s * 1000, polling=50).json_value()
        return cls(run=lambda script, *args: page.evaluate(playwright_function(script),
                                                           list(args)),
                   wait=wait, timeout_s=timeout_s)

    @classmethod
    def firefox(cls, firefox: Any, timeout_s: float = 20) -> "Page":
        """``firefox``: a tests/e2e/firefox.Firefox."""
        return cls(run=firefox.js,
                   wait=lambda script, *args, timeout_s: firefox.wait(script, *args,
                                                                      timeout=timeout_s),
                   timeout_s=timeout_s)


MICROPHONE_HZ = 587.0


def fake_microphone_tone(path: Path, seconds: float = 4.0) -> Path:
    """A mono 48 kHz WAV of MICROPHONE_HZ for Chromium's fake capture device."""
    import wave

    import numpy as np
    t = np.arange(int(48000 * seconds)) / 48000
    samples = (0.25 * 32767 * np.sin(2 * np.pi * MICROPHONE_HZ * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(samples.tobytes())
    return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api")
    # its microphone (asked for only by the publish page) plays a 587 Hz tone
    # file, granted without a prompt
    tone = fake_microphone_tone(tmp_path_factory.mktemp("microphone") / "tone.wav")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"), extra_args=(
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={tone}"))
    try:
        yield b
    finally:
        b.close()


@dataclasses.dataclass
class SoundingFirefox:
    """Firefox ESR (tests/e2e/firefox.py) and the PulseAudio daemon its sound
    goes to, whose null sink's monitor a test may record (tests/support/ears.py)."""
    firefox: Any
    pulse: PulseDaemon


@pytest.fixture(scope="session")
def firefox_sound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoundingFirefox]:
    """One Firefox for the session (its start and stop take ~5 s), playing
    at the page's own volume into a daemon of its own: without an audio
    output (no sound card here) its AudioContext never leaves "suspended".
    A test that changes a pref puts it back."""
    from tests.e2e.firefox import FIREFOX, Firefox
    if not shutil.which(FIREFOX):
        pytest.skip(f"{FIREFOX} is missing (make test installs Debian's firefox-esr)")
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed (make test installs it)")
    pytest.importorskip("marionette_driver")
    workdir = tmp_path_factory.mktemp("firefox")
    pulse = PulseDaemon(workdir / "pulse")
    pulse.start()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PULSE_SERVER", f"unix:{pulse.socket}")   # read when Firefox starts
            firefox = Firefox(str(workdir / "gecko.log"), full_volume=True)
        try:
            yield SoundingFirefox(firefox, pulse)
        finally:
            firefox.close()
    finally:
        pulse.stop()


@pytest.fixture
def firefox(firefox_sound: SoundingFirefox) -> Any:
    return firefox_sound.firefox


@pytest.fixture
def pulse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed (make test installs it)")
    daemon = PulseDaemon(tmp_path / "pulse")
    daemon.start()
    # the "HAT": the ALSA default control device is the daemon's mixer
    use_asoundrc(monkeypatch, tmp_path / "asoundrc", daemon.asoundrc()
                 + f'ctl.!default {{ type pulse server "unix:{daemon.socket}" }}\n')
    try:
        yield daemon
    finally:
        daemon.stop()


# The real server of tests/web (hypercorn + app + engine, loopback ICE).
from tests.web.conftest import ADMIN_PASSWORD, server  # noqa: E402,F401  (a fixture)


def open_admin(b: Browser, url: str, size: dict[str, int] = DESKTOP) -> Any:
    """The admin page at ``url`` (the server's base URL), logged in through
    its own form with the test servers' admin password (unless this browser
    is logged in already: the cookie is shared by its pages)."""
    page = b.new_page(size)
    page.goto(url + "/admin")
    page.wait_for_selector("#app:not([hidden]), #login:not([hidden])")
    if page.is_visible("#login"):
        page.fill("#login-password", ADMIN_PASSWORD)
        page.click('#login-form button[type="submit"]')
        page.wait_for_selector("#app:not([hidden])")
    return page
