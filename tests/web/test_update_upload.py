"""Updates from the admin page (issue 22) with the real RAUC: a private
system bus (dbus-daemon, tests/support/daemons.py), `rauc service` on it
with slots that are plain files, the image's own boot selector
(image/.../boot-slot on a boot partition in a directory), a keyring made
with openssl and bundles made with `rauc bundle` here. The app talks to RAUC
over that bus, as on the box.

Bundles here are `format=plain`: this machine has loop devices but no
device-mapper (no /dev/mapper/control, no dm-verity module), which RAUC's
verity bundles (the image's) need to be installed. Everything else (the
signature, the compatible string, the slot written, the progress) is
RAUC's own.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import trio
from jeepney import MatchRule, message_bus
from jeepney.io.trio import Proxy, open_dbus_router

from appliance.config import UpdateConfig
from tests.support.daemons import open_system_bus
from tests.web.conftest import ADMIN, Server, make_config, open_server

pytestmark = pytest.mark.trio

REPO = Path(__file__).resolve().parents[2]
BOOT_SLOT = REPO / "image/files/common/usr/lib/appliance/boot-slot"
COMPATIBLE = "appliance-test-board"
IMAGE_BYTES = 600_000
SLOT_BYTES = 1 << 20
OCTETS = {"Content-Type": "application/octet-stream"}


def _missing() -> str | None:
    for tool in ("rauc", "dbus-daemon", "openssl", "mksquashfs", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (packages/test.txt)"
    if os.geteuid() != 0:
        return "rauc service mounts each bundle (a loop device): root only"
    return None


pytestmark = [pytestmark, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.cert.pem", folder / f"{name}.key.pem"
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "2", "-subj", f"/CN={name}")
    return cert, key


def _bundle(folder: Path, name: str, image: bytes, signer: tuple[Path, Path],
            compatible: str = COMPATIBLE, form: str = "plain") -> Path:
    content = folder / f"{name}-content"
    content.mkdir()
    (content / "rootfs.img").write_bytes(image)
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion=2.0\n\n[bundle]\nformat={form}\n\n"
        "[image.rootfs]\nfilename=rootfs.img\n")
    out = folder / f"{name}.raucb"
    _run("rauc", "bundle", "--cert", signer[0], "--key", signer[1], content, out)
    return out


@dataclass
class Bundles:
    image: bytes
    good: Path
    other_board: Path
    other_key: Path
    damaged: Path
    keyring: Path
    verity: Path           # the image's format
    verity_damaged: Path


def _damaged(bundle: Path, at: int) -> Path:
    """A copy of ``bundle`` with 64 bytes from ``at`` inverted."""
    data = bytearray(bundle.read_bytes())
    for i in range(at, at + 64):
        data[i] ^= 0xFF
    out = bundle.with_name(f"damaged-{bundle.name}")
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    folder = tmp_path_factory.mktemp("bundles")
    ours, theirs = _keypair(folder, "ours"), _keypair(folder, "theirs")
    image = os.urandom(IMAGE_BYTES)
    good = _bundle(folder, "good", image, ours)
    verity = _bundle(folder, "verity", image, ours, form="verity")
    # inside the squashfs: the signed payload (the verity one: halfway into
    # the image, a block RAUC would only read while writing the slot)
    return Bundles(image, good, _bundle(folder, "board", image, ours, "another-board"),
                   _bundle(folder, "theirs", image, theirs), _damaged(good, 4096), ours[0],
                   verity, _damaged(verity, IMAGE_BYTES // 2))


SYSTEM_CONF = """[system]
compatible={compatible}
bootloader=custom
data-directory={root}/rauc-data

[keyring]
path={keyring}

[handlers]
bootloader-custom-backend={boot_slot}

[slot.rootfs.0]
device={root}/slot-a.img
type=raw
bootname=A

[slot.rootfs.1]
device={root}/slot-b.img
type=raw
bootname=B
"""


@dataclass
class Box:
    """RAUC's slots and boot partition, and the app on the same bus."""
    root: Path
    server: Server
    slot_a: bytes
    slot_b: bytes

    def slots(self) -> tuple[bytes, bytes]:
        return (self.root / "slot-a.img").read_bytes(), (self.root / "slot-b.img").read_bytes()

    @property
    def boot(self) -> Path:
        return self.root / "boot"

    @property
    def update_folder(self) -> Path:
        return self.server.app.appliance_config.state_dir / "update"


async def _wait_for_name(bus: str, name: str, started: trio.Event) -> None:
    """Until ``name`` has an owner on the bus (its NameOwnerChanged signal)."""
    rule = MatchRule(type="signal", interface="org.freedesktop.DBus", member="NameOwnerChanged")
    rule.add_arg_condition(0, name)
    async with open_dbus_router(bus=bus) as router:
        await Proxy(message_bus, router).AddMatch(rule)
        async with router.filter(rule, bufsize=4) as signals:
            started.set()
            while True:
                message = await signals.receive()
                if message.body[2]:
                    return


@asynccontextmanager
async def open_box(tmp: Path, keyring: Path, **update: int) -> AsyncIterator[Box]:
    root = tmp / "box"
    (root / "boot/slot-a").mkdir(parents=True)
    (root / "root-b/boot").mkdir(parents=True)   # what boot-slot stages for slot B
    (root / "root-b/boot/vmlinuz-6.12").write_bytes(b"kernel")
    (root / "root-b/boot/initrd.img-6.12").write_bytes(b"initrd")
    (root / "boot/config.txt").write_text("[all]\nos_prefix=slot-a/\n")
    (root / "boot/slot-a/cmdline.txt").write_text("root=PARTUUID=4170706c-02 ro rauc.slot=A\n")
    (root / "cmdline").write_text("root=PARTUUID=4170706c-02 ro rauc.slot=A\n")
    slot_a, slot_b = os.urandom(SLOT_BYTES), bytes(SLOT_BYTES)
    (root / "slot-a.img").write_bytes(slot_a)
    (root / "slot-b.img").write_bytes(slot_b)
    (root / "mnt").mkdir()
    (root / "system.conf").write_text(SYSTEM_CONF.format(
        compatible=COMPATIBLE, root=root, keyring=keyring, boot_slot=BOOT_SLOT))
    old = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    async with trio.open_nursery() as nursery, open_system_bus(root) as address:
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address,
               "BOOT_SLOT_DIR": str(root / "boot"), "BOOT_SLOT_CMDLINE": str(root / "cmdline"),
               "BOOT_SLOT_ROOT_B": str(root / "root-b"), "BOOT_SLOT_ROOT_A": str(root / "root-b")}
        try:
            rauc_log = open(root / "rauc.log", "wb")
            owned, watching = trio.Event(), trio.Event()

            async def named() -> None:
                await _wait_for_name(address, "de.pengutronix.rauc", watching)
                owned.set()

            nursery.start_soon(named)
            await watching.wait()
            # its own mount namespace: the bundles it mounts are nobody else's
            service = await trio.lowlevel.open_process(
                ["unshare", "--mount", "--propagation", "private", "rauc", "service",
                 "--conf", str(root / "system.conf"), "--mount", str(root / "mnt"),
                 "--override-boot-slot", "A"], env=env, stdout=rauc_log, stderr=rauc_log)
            try:
                with trio.fail_after(10):
                    await owned.wait()
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
                config = make_config(tmp / "state")
                config = config.replace(update=UpdateConfig(**update))
                async with open_server(config) as server:
                    yield Box(root, server, slot_a, slot_b)
            finally:
                service.terminate()
                await service.wait()
                rauc_log.close()
        finally:
            if old is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = old


async def _progress_seen(server: Server, seen: list[int], done: trio.Event) -> None:
    """Reads GET /api/update until ``done``; keeps each new percentage."""
    while not done.is_set():
        state = (await server.client.get("/api/update")).json()
        if state.get("state") == "installing" and (not seen or state["percent"] != seen[-1]):
            seen.append(state["percent"])


async def test_a_good_bundle_is_written_to_the_other_slot_and_the_trial_asked_for(
        tmp_path: Path, bundles: Bundles) -> None:
    async with open_box(tmp_path, bundles.keyring) as box:
        seen: list[int] = []
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress_seen, box.server, seen, done)
            answer = await box.server.client.post(
                "/api/update", content=bundles.good.read_bytes(), headers=OCTETS, timeout=60)
            done.set()
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "rebooting"
        slot_a, slot_b = box.slots()
        assert slot_a == box.slot_a                                   # the running slot
        assert slot_b[:IMAGE_BYTES] == bundles.image                   # the bundle's image
        assert slot_b[IMAGE_BYTES:] == box.slot_b[IMAGE_BYTES:]
        assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] > seen[0], seen
        # RAUC named slot B for one trial boot through the image's boot-slot
        assert "os_prefix=slot-b/" in (box.boot / "tryboot.txt").read_text()
        assert "os_prefix=slot-a/" in (box.boot / "config.txt").read_text()
        state_dir = box.server.app.appliance_config.state_dir
        assert (state_dir / "reboot-trial").exists()                   # the reboot asked for
        status = (await box.server.client.get("/api/update")).json()
        assert status["last_update"]["outcome"] == "trial"
        assert status["last_update"]["from_slot"] == "A"
        assert list(box.update_folder.iterdir()) == []


@pytest.mark.parametrize("which, reason", [
    ("other_board", "Compatible mismatch"),
    ("other_key", "signature verification failed"),
    ("damaged", "signature verification failed"),
])
async def test_a_bad_bundle_is_refused_with_raucs_reason_and_nothing_changes(
        tmp_path: Path, bundles: Bundles, which: str, reason: str) -> None:
    async with open_box(tmp_path, bundles.keyring) as box:
        answer = await box.server.client.post(
            "/api/update", content=getattr(bundles, which).read_bytes(), headers=OCTETS,
            timeout=60)
        assert answer.status_code == 422, answer.text
        assert reason in answer.text
        assert box.slots() == (box.slot_a, box.slot_b)
        assert not (box.boot / "tryboot.txt").exists()
        state_dir = box.server.app.appliance_config.state_dir
        assert not (state_dir / "reboot-trial").exists()
        status = (await box.server.client.get("/api/update")).json()
        assert status["state"] == "failed" and reason in status["error"]
        assert status["last_update"] is None
        assert list(box.update_folder.iterdir()) == []


async def test_a_damaged_verity_payload_is_refused_before_rauc_is_asked(
        tmp_path: Path, bundles: Bundles) -> None:
    """The image's bundles are verity bundles: their signature covers the
    manifest, whose hash tree covers the payload, and dm-verity finds a
    damaged block only as RAUC reads it into the other slot. So
    appliance.bundle_check reads the payload whole against that tree
    (veritysetup) first: the damaged bundle is refused, saying where, and
    RAUC never hears of it. The intact one passes the check and goes on to
    RAUC (which here, with no device-mapper, cannot mount it: RAUC's
    refusal, after the check)."""
    async with open_box(tmp_path, bundles.keyring) as box:
        answer = await box.server.client.post(
            "/api/update", content=bundles.verity_damaged.read_bytes(), headers=OCTETS,
            timeout=60)
        assert answer.status_code == 422, answer.text
        error = answer.text.strip()
        assert error.startswith("the bundle is damaged: veritysetup: Verification failed at "
                                "position "), error
        assert error.endswith("(nothing was written)"), error
        assert "upload.raucb" not in (box.root / "rauc.log").read_text()   # never asked
        assert box.slots() == (box.slot_a, box.slot_b)
        assert not (box.boot / "tryboot.txt").exists()
        status = (await box.server.client.get("/api/update")).json()
        assert status["state"] == "failed" and status["error"] == error
        assert list(box.update_folder.iterdir()) == []

        answer = await box.server.client.post(
            "/api/update", content=bundles.verity.read_bytes(), headers=OCTETS, timeout=60)
        assert answer.status_code == 422, answer.text
        error = answer.text.strip()
        assert error.startswith("RAUC refused the bundle") and "damaged" not in error, error
        assert "upload.raucb" in (box.root / "rauc.log").read_text()
        assert box.slots() == (box.slot_a, box.slot_b)
        assert list(box.update_folder.iterdir()) == []


async def test_a_second_upload_while_one_runs_is_refused(tmp_path: Path,
                                                         bundles: Bundles) -> None:
    async with open_box(tmp_path, bundles.keyring) as box:
        first_sent, release = trio.Event(), trio.Event()
        data = bundles.good.read_bytes()

        async def slowly() -> AsyncIterator[bytes]:
            yield data[:65536]
            first_sent.set()
            await release.wait()
            yield data[65536:]

        answers: dict[str, httpx.Response] = {}

        async def first() -> None:
            answers["first"] = await box.server.client.post(
                "/api/update", content=slowly(), headers=OCTETS, timeout=60)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await first_sent.wait()
            while (await box.server.client.get("/api/update")).json()["state"] != "receiving":
                pass   # each GET lets the first upload go on
            second = await box.server.client.post("/api/update?reboot=no", content=data,
                                                  headers=OCTETS)
            release.set()
        assert second.status_code == 409, second.text
        assert "already" in second.text
        assert answers["first"].status_code == 200, answers["first"].text
        assert box.slots()[1][:IMAGE_BYTES] == bundles.image


async def _endless_upload(url: str, headers: dict[str, str]) -> tuple[bytes, int]:
    """An upload that never ends (chunked), sent until the server answers:
    the answer and how many body bytes had been sent by then."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    await stream.send_all(f"POST /api/update HTTP/1.1\r\nHost: {host}\r\n{head}"
                          "Content-Type: application/octet-stream\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"%x\r\n" % 65536 + os.urandom(65536) + b"\r\n"
    sent, answer = 0, b""
    async with trio.open_nursery() as nursery:
        async def send() -> None:
            nonlocal sent
            try:
                while True:
                    await stream.send_all(chunk)
                    sent += 65536
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass   # the server closed it after answering

        nursery.start_soon(send)
        while b"\r\n\r\n" not in answer:
            data = await stream.receive_some(65536)
            if not data:
                break
            answer += data
        nursery.cancel_scope.cancel()
    await stream.aclose()
    return answer, sent


async def _head_only(url: str, headers: dict[str, str]) -> bytes:
    """A POST's head without its body, and the answer's head."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    await stream.send_all(f"POST /api/update HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
    answer = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in answer:
            data = await stream.receive_some(65536)
            if not data:
                break
            answer += data
    await stream.aclose()
    return answer


async def test_an_upload_past_the_limit_is_refused_as_it_streams(tmp_path: Path,
                                                                bundles: Bundles) -> None:
    limit = 4 << 20
    async with open_box(tmp_path, bundles.keyring, max_bundle_bytes=limit) as box:
        with trio.fail_after(30):
            answer, sent = await _endless_upload(box.server.url, ADMIN)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 64 * limit   # refused while it was still sending
        assert list(box.update_folder.iterdir()) == []
        status = (await box.server.client.get("/api/update")).json()
        assert status["state"] == "failed" and "max_bundle_bytes" in status["error"]
        # one that says its length is refused before it sends a byte
        declared = await _head_only(box.server.url, {**ADMIN, **OCTETS,
                                                     "Content-Length": str(limit + 1)})
        assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
        assert box.slots() == (box.slot_a, box.slot_b)


async def test_an_upload_that_would_fill_the_disk_is_refused(tmp_path: Path,
                                                             bundles: Bundles) -> None:
    """The state partition here is a 512 KiB tmpfs: the bundle (600 KB) does
    not fit, whether it says its length or not."""
    state = tmp_path / "state"
    state.mkdir()
    _run("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", state)
    try:
        async with open_box(tmp_path, bundles.keyring, free_margin_bytes=0) as box:
            data = bundles.good.read_bytes()

            async def unannounced() -> AsyncIterator[bytes]:
                for at in range(0, len(data), 65536):
                    yield data[at:at + 65536]

            for body in (data, unannounced()):
                answer = await box.server.client.post("/api/update", content=body,
                                                      headers=OCTETS)
                assert answer.status_code == 413, answer.text
                assert "state partition" in answer.text
                assert list(box.update_folder.iterdir()) == []
            assert box.slots() == (box.slot_a, box.slot_b)
    finally:
        _run("umount", state)


async def test_with_rauc_out_of_reach_the_answer_says_when_to_come_back(
        tmp_path: Path, bundles: Bundles, monkeypatch: pytest.MonkeyPatch) -> None:
    """No system bus at all (RAUC's service not there): 503 with
    Retry-After, as for every 503 of ours; the upload is deleted."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    async with open_server(make_config(tmp_path / "state")) as server:
        answer = await server.client.post("/api/update", content=bundles.good.read_bytes(),
                                          headers=OCTETS)
        assert answer.status_code == 503, answer.text
        assert answer.text.startswith("RAUC cannot be reached over D-Bus")
        assert answer.headers["Retry-After"] == "10"
        folder = server.app.appliance_config.state_dir / "update"
        assert list(folder.iterdir()) == []


async def test_without_the_admin_credential_nothing_is_taken(tmp_path: Path,
                                                             bundles: Bundles) -> None:
    async with open_box(tmp_path, bundles.keyring) as box:
        with trio.fail_after(30):
            answer, _ = await _endless_upload(box.server.url, {})
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        wrong = await box.server.client.post(
            "/api/update", content=bundles.good.read_bytes(),
            headers={**OCTETS, "Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        assert not box.update_folder.exists() or list(box.update_folder.iterdir()) == []
        assert box.slots() == (box.slot_a, box.slot_b)
        assert (await box.server.client.get("/api/update")).json()["state"] == "idle"


async def test_the_body_must_be_a_bundle(tmp_path: Path, bundles: Bundles) -> None:
    async with open_box(tmp_path, bundles.keyring) as box:
        as_json = await box.server.client.post("/api/update", json={"a": 1})
        assert as_json.status_code == 415
        empty = await box.server.client.post("/api/update", content=b"", headers=OCTETS)
        assert empty.status_code == 400, empty.text
        junk = await box.server.client.post("/api/update", content=os.urandom(100_000),
                                            headers=OCTETS)
        assert junk.status_code == 422, junk.text
        assert box.slots() == (box.slot_a, box.slot_b)


