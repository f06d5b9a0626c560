"""Phones in headless Chromium: each page in its own browser context with a
phone's viewport, touch, device pixel ratio and language (``locale`` sets
``navigator.languages`` and ``Accept-Language``). One Chromium (Debian's,
``executable_path``) for the session, owned by one worker thread like
``conftest.Browser``, so the trio tests keep their loop for the server.

``phone`` is the fixture; ``Phone.open(url, locale=..., init=...)`` gives a
page (``init``: a script run before the page's own, e.g. to refuse
``play()`` or take WebRTC away).
"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trio

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, PHONE

__all__ = ["Phone", "phone", "PHONE"]

# what a page did that it should not: uncaught errors, unhandled rejections,
# asking for the microphone
WATCH = """
window.__problems = [];
window.addEventListener("error", (e) => __problems.push("error: " + e.message));
window.addEventListener("unhandledrejection", (e) => __problems.push("unhandled: " + (e.reason && e.reason.message || e.reason)));
if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  navigator.mediaDevices.getUserMedia = () => { __problems.push("getUserMedia"); return Promise.reject(new Error("no")); };
}
"""


class Phone:
    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="phone")
        self._pool.submit(self._start).result(timeout=60)

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                args=CHROMIUM_ARGS,
                                                ignore_default_args=["--mute-audio"])

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._pool.submit(fn, self, *args)
        return await trio.to_thread.run_sync(future.result)

    def open(self, url: str, *, locale: str = "en-US", init: str = "",
             size: dict[str, int] = PHONE, wait: str = ".channel button.listen",
             ready: str = "() => window.applianceDebug && window.applianceDebug.ready",
             on_dialog: Callable[[Any], None] | None = None) -> Any:
        """A page at ``url`` on a new phone (its own context: cookies,
        language); closing the page's context is ``close(page)``."""
        mobile = size["width"] < 800
        context = self.browser.new_context(viewport=size, is_mobile=mobile, has_touch=mobile,
                                           device_scale_factor=2, locale=locale)
        context.add_init_script(WATCH + init)
        page = context.new_page()
        page.on("dialog", on_dialog or (lambda dialog: dialog.dismiss()))
        # answers that say the page asked for something wrong (a Stop whose
        # DELETE found the session gone, a missing catalogue, ...)
        page.failed_requests = failed = []
        page.on("response", lambda r: r.status >= 400 and failed.append(
            f"{r.request.method} {r.url} {r.status}"))
        page.goto(url)
        if wait:
            page.wait_for_selector(wait, timeout=10000)
        if ready:
            page.wait_for_function(ready, timeout=10000)
        return page

    @staticmethod
    def close(page: Any) -> None:
        page.context.close()

    def shutdown(self) -> None:
        def stop() -> None:
            self.browser.close()
            self._pw.stop()
        try:
            self._pool.submit(stop).result(timeout=30)
        finally:
            self._pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def phone() -> Iterator[Phone]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api")
    p = Phone()
    try:
        yield p
    finally:
        p.shutdown()


def card(sink: str) -> str:
    return f'.channel[data-sink="{sink}"]'


def tap_listen(page: Any, sink: str = "main") -> None:
    page.tap(f"{card(sink)} button.listen")


def wait_playing(page: Any, sink: str = "main", packets: int = 20, timeout: int = 15000) -> None:
    page.wait_for_selector(f'{card(sink)} .state[data-state="playing"]', timeout=timeout)
    page.wait_for_function(
        "([s, n]) => (applianceDebug.stats(s) || {packetsReceived: 0}).packetsReceived > n",
        arg=[sink, packets], timeout=timeout)


def problems(page: Any) -> list[str]:
    """Uncaught errors, unhandled rejections, microphone requests and
    answers >= 400 so far."""
    return page.evaluate("window.__problems") + page.failed_requests
