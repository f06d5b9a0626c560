"""Debian's Firefox ESR, headless, driven through its built-in Marionette
(PyPI ``marionette_driver``) from one worker thread (tests/e2e/test_firefox.py
explains the prefs and why its ICE needs a non-loopback address)."""
from __future__ import annotations

import concurrent.futures
import gc
import json
import os
import subprocess
import time
import warnings
from typing import Any, Callable

import trio

FIREFOX = os.environ.get("APPLIANCE_FIREFOX", "/usr/bin/firefox-esr")
PREFS = {
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.default_address_only": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "intl.accept_languages": "fr-FR, fr, en",
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
}


class Firefox:
    """Headless Firefox ESR under Marionette in its own thread."""

    def __init__(self, log: str, *, full_volume: bool = False) -> None:
        """``full_volume``: play at the page's own volume (Marionette's
        profile plays everything at 1 %, -40 dB), for a test that records
        what comes out (its PULSE_SERVER, read from the environment)."""
        prefs = {**PREFS, "media.volume_scale": "1.0"} if full_volume else PREFS
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="firefox")
        self._pool.submit(self._start, log, prefs).result(timeout=90)

    def _start(self, log: str, prefs: dict[str, Any]) -> None:
        # marionette_driver (3.7) warns at import (distro, telnetlib) and
        # leaks the sockets of its port probes while Firefox starts: not ours
        # to fix, kept out of the suite's warnings-are-errors here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from marionette_driver.marionette import Marionette
            self.m = Marionette(bin=FIREFOX, headless=True, port=0, gecko_log=log, prefs=prefs,
                                startup_timeout=60)
            gc.collect()
        self.m.start_session()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._pool.submit(fn, self, *args)
        return await trio.to_thread.run_sync(future.result)

    def js(self, script: str, *args: Any) -> Any:
        # sandbox=None: in the page's own scope (its window.applianceDebug)
        return self.m.execute_script(script, script_args=list(args), sandbox=None)

    def wait(self, script: str, *args: Any, timeout: float = 15.0) -> Any:
        """Poll ``script`` (a function body returning a value) until truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {script} (last {value!r})")
            time.sleep(0.05)

    def close(self) -> None:
        def stop() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    self.m.cleanup()   # ends the session, stops Firefox, removes the profile
                finally:
                    # the runner keeps the profile, whose finaliser would try
                    # again at interpreter exit: let it run now
                    if self.m.instance is not None:
                        self.m.instance.runner = None
                        self.m.instance._profile = None
                    self.m.instance = None
                    gc.collect()
        try:
            self._pool.submit(stop).result(timeout=60)
        finally:
            self._pool.shutdown(wait=True)


def local_address() -> str | None:
    """One of this machine's own global IPv4 addresses, or None."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            if info.get("local"):
                return info["local"]
    return None
