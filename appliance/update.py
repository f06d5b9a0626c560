"""Updates uploaded to the admin page (POST /api/update, docs/IMAGE.md).

    upload  streamed to <state_dir>/update/upload.raucb as it arrives, refused
            as soon as it passes [update] max_bundle_bytes or the free space
            on the state partition less free_margin_bytes; removed on any
            failure, cancellation or after the install
    check   a verity bundle's payload is read whole against its signed hash
            tree (appliance.bundle_check) before RAUC is asked: dm-verity
            would find a damaged block only while RAUC writes the slot
    install RAUC over D-Bus (appliance.rauc) checks the signature and the
            compatible string, then writes the slot not booted
    trial   <state_dir>/update-trial.json says what was installed, and
            <state_dir>/reboot-trial asks the image's
            appliance-reboot-trial.path to run `boot-slot reboot-trial` (the
            app itself runs unprivileged); on the trial boot the image's
            update-check writes the outcome (committed, or rolled back and
            why) into the same record, which the admin page shows.

One upload or install at a time: a second is refused (InUseError) while
the first runs, whatever its phase.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterable

import trio

from . import bundle_check, rauc
from .config import UpdateConfig
from .errors import ApplianceError, InUseError, InvalidError, TooLargeError, UnavailableError
from .store import atomic_write

__all__ = ["Updater", "UPDATE_FOLDER", "TRIAL_RECORD", "REBOOT_REQUEST"]

log = logging.getLogger(__name__)

UPDATE_FOLDER = "update"            # under state_dir: the upload, nothing else
UPLOAD_NAME = "upload.raucb"
# Shared with the image (image/files/common/usr/lib/appliance/update-check and
# etc/systemd/system/appliance-reboot-trial.path): keep the names in step.
TRIAL_RECORD = "update-trial.json"
REBOOT_REQUEST = "reboot-trial"
# an upload that sends nothing for this long is given up (it holds the one slot)
IDLE_TIMEOUT_S = 60.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MB = 1 << 20


class Updater:
    """The admin page's updates; ``status()`` is what GET /api/update says."""

    def __init__(self, config: UpdateConfig, state_dir: Path, nursery: trio.Nursery):
        self.config = config
        self.folder = state_dir / UPDATE_FOLDER
        self.record = state_dir / TRIAL_RECORD
        self.reboot_request = state_dir / REBOOT_REQUEST
        self._nursery = nursery
        self._busy = False
        self._state: dict[str, Any] = {"state": "idle"}
        self._refused: ApplianceError | None = None   # why the last install failed
        self._clear_folder()   # a power cut mid-upload leaves a partial file

    def _clear_folder(self) -> None:
        if self.folder.is_dir():
            for leftover in self.folder.iterdir():
                leftover.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        return {**self._state, "max_bundle_bytes": self.config.max_bundle_bytes,
                "last_update": self._read_record()}

    def _read_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _room(self) -> int:
        """Bytes an upload may take on the state partition."""
        self.folder.mkdir(parents=True, exist_ok=True)
        disk = os.statvfs(self.folder)
        return disk.f_bavail * disk.f_frsize - self.config.free_margin_bytes

    async def install(self, chunks: AsyncIterable[bytes], *, length: int | None,
                      reboot: bool) -> dict[str, Any]:
        """Receive a bundle from ``chunks`` (``length``: what the client
        declared, if it did), install it with RAUC and, with ``reboot``, ask
        for the trial boot. Returns the status once RAUC is done; raises with
        RAUC's reason when it refuses. A caller that goes away during the
        install leaves it running (GET /api/update follows it)."""
        if self._busy:
            raise InUseError("an update is being uploaded or installed already: wait for it "
                             "(GET /api/update)", retry_after_s=10)
        self._busy = True
        self._refused = None
        handed_over = False
        try:
            path = await self._receive(chunks, length)
            done = trio.Event()
            self._nursery.start_soon(self._install, path, reboot, done)
            handed_over = True
            await done.wait()
        finally:
            if not handed_over:
                self._busy = False
        if self._refused is not None:
            raise self._refused
        return self.status()

    async def _receive(self, chunks: AsyncIterable[bytes], length: int | None) -> Path:
        limit = self.config.max_bundle_bytes
        room = await trio.to_thread.run_sync(self._room)

        def check(size: int, what: str) -> None:
            if size > limit:
                raise TooLargeError(f"{what} is larger than the {limit // MB} MB an update "
                                    "may be ([update] max_bundle_bytes)")
            if size > room:
                raise TooLargeError(
                    f"{what} does not fit on the appliance's state partition: "
                    f"{max(room, 0) // MB} MB may be used "
                    f"({self.config.free_margin_bytes // MB} MB are kept free)")

        if length is not None:
            check(length, "the bundle")   # before a byte is written
        path = self.folder / UPLOAD_NAME
        self._state = {"state": "receiving", "received_bytes": 0, "expected_bytes": length}
        received = 0
        try:
            async with await trio.open_file(path, "wb") as file:
                stream = aiter(chunks)
                while True:
                    with trio.move_on_after(IDLE_TIMEOUT_S) as idle:
                        try:
                            chunk = await anext(stream)
                        except StopAsyncIteration:
                            break
                    if idle.cancelled_caught:
                        raise InvalidError(f"the upload sent nothing for {IDLE_TIMEOUT_S:.0f} s")
                    received += len(chunk)
                    check(received, "the upload")
                    await file.write(chunk)
                    self._state["received_bytes"] = received
            if received == 0:
                raise InvalidError("the body is empty: send the .raucb file itself "
                                   "(application/octet-stream)")
        except BaseException as error:
            _remove(path)   # quick and must not wait: cancellation may be on its way
            reason = (error.message if isinstance(error, ApplianceError)
                      else "the upload was cut off")
            self._state = {"state": "failed", "error": reason, "received_bytes": received}
            raise
        log.info("update: received a bundle of %d bytes", received)
        return path

    def _progressed(self, progress: rauc.Progress) -> None:
        self._state.update(percent=progress.percent, message=progress.message)

    async def _install(self, path: Path, reboot: bool, done: trio.Event) -> None:
        received = self._state.get("received_bytes")
        self._state = {"state": "installing", "received_bytes": received, "percent": 0,
                       "message": "checking the bundle's payload against its signed hash tree"}
        try:
            await bundle_check.check_payload(path)
            self._state["message"] = "handing the bundle to RAUC"
            booted = await rauc.booted_slot()
            await rauc.install_bundle(str(path), self._progressed)
            record = {"installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "from_slot": booted, "outcome": "trial" if reboot else "installed",
                      "boot_id": _boot_id()}
            await trio.to_thread.run_sync(_write, self.record, json.dumps(record, indent=1))
            if reboot:
                await trio.to_thread.run_sync(_write, self.reboot_request, "")
            self._state.update(state="rebooting" if reboot else "installed", percent=100)
            log.info("update: installed (booted from slot %s)%s", booted,
                     "; rebooting into it on trial" if reboot else "")
        except ApplianceError as error:
            log.warning("update: %s", error.message)
            self._refused = error
            self._state = {"state": "failed", "error": error.message, "received_bytes": received}
        except BaseException:
            self._state = {"state": "failed", "error": "the install was interrupted (the app "
                           "stopped); RAUC may have finished it: see its status",
                           "received_bytes": received}
            raise
        finally:
            _remove(path)   # quick and must not wait: cancellation may be on its way
            self._busy = False
            done.set()



def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _write(path: Path, text: str) -> None:
    try:
        atomic_write(path, text.encode())
    except OSError as error:
        raise UnavailableError(f"installed, but {path} cannot be written: {error}") from None


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""
