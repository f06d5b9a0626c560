"""Signed A/B updates, the parts that run here: the image's two root slots
and RAUC configuration, `make bundle`'s signed bundle checked by rauc against
the right and a wrong keyring, a damaged bundle, the boot selector
(boot-slot, on a boot partition in a directory) and `appliance update`'s
refusals. Booting an update, keeping it and rolling it back are QEMU tests
(test_boot.py, slow)."""
import subprocess
import sys

import pytest

from image_helpers import REPO, run

BOOT_SLOT = REPO / "image/files/common/usr/lib/appliance/boot-slot"
UPDATE_CHECK = REPO / "image/files/common/usr/lib/appliance/update-check"
BUNDLE = REPO / "image/bundle.sh"


def debugfs_cat(img, n, path):
    import json
    parts = json.loads(run(["sfdisk", "-J", img], check=True).stdout)["partitiontable"]["partitions"]
    return run(["debugfs", "-R", f"cat {path}", f"{img}?offset={parts[n - 1]['start'] * 512}"],
               check=True).stdout


# --- the image ---------------------------------------------------------------------

def test_image_has_two_root_slots_and_trusts_the_build_key(stub_build):
    tmp, _, img, p = stub_build
    conf = debugfs_cat(img, 2, "/etc/rauc/system.conf")
    assert "compatible=appliance-debian-arm64\n" in conf
    assert "bootloader=custom\n" in conf and "bootloader-custom-backend=/usr/lib/appliance/boot-slot\n" in conf
    assert "bundle-formats=-plain\n" in conf, "only bundles whose every block is checked"
    assert "device=/dev/disk/by-partuuid/4170706c-02\ntype=ext4\nbootname=A\n" in conf
    assert "device=/dev/disk/by-partuuid/4170706c-04\ntype=ext4\nbootname=B\n" in conf
    cert = (tmp / "work-out/rauc-dev/cert.pem").read_text()
    assert debugfs_cat(img, 2, "/etc/rauc/keyring.pem") == cert
    assert "development key" in p.stderr, "the build says it signs with a development key"
    assert "PRIVATE KEY" not in debugfs_cat(img, 2, "/etc/rauc/keyring.pem")
    wants = run(["debugfs", "-R", "ls /etc/systemd/system/multi-user.target.wants",
                 f"{img}?offset={4 * 1024 * 1024 + 36 * 1024 * 1024}"], check=True).stdout
    assert "appliance-update-check.service" in wants
    # the app's request for the trial boot after an update from the admin page
    assert "appliance-reboot-trial.path" in wants


# --- bundles -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(stub_build, tmp_path_factory):
    tmp, _, img, _ = stub_build
    out = tmp_path_factory.mktemp("bundle") / "update.raucb"
    p = run([BUNDLE, "--image", img, "--work-dir", tmp / "work-out", "--out", out], timeout=300)
    assert p.returncode == 0, p.stderr
    return out, tmp / "work-out/rauc-dev/cert.pem"


def test_bundle_is_signed_and_names_the_image(bundle):
    out, cert = bundle
    p = run(["rauc", "info", f"--keyring={cert}", "--output-format=shell", out])
    assert p.returncode == 0, p.stderr
    assert "RAUC_MF_COMPATIBLE='appliance-debian-arm64'" in p.stdout
    assert "RAUC_MF_VERSION='0.1.0'" in p.stdout
    assert "RAUC_IMAGE_NAME_0='rootfs.ext4'" in p.stdout and "RAUC_IMAGE_CLASS_0='rootfs'" in p.stdout
    assert "Verified inline signature by 'O = appliance development" in p.stderr
    p = run(["rauc", "info", f"--keyring={cert}", out])
    assert "Bundle Format: \tverity" in p.stdout, p.stdout


def test_bundle_refused_with_another_keyring(bundle, tmp_path):
    out, _ = bundle
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "k.pem",
         "-out", tmp_path / "c.pem", "-days", "1", "-subj", "/CN=someone else"], check=True)
    p = run(["rauc", "info", f"--keyring={tmp_path / 'c.pem'}", out])
    assert p.returncode != 0
    assert "signature" in (p.stdout + p.stderr).lower() or "verif" in (p.stdout + p.stderr).lower(), p.stderr


def test_damaged_bundle_refused(bundle, tmp_path):
    out, cert = bundle
    data = bytearray(out.read_bytes())
    bad = tmp_path / "bad.raucb"
    # The signature (at the end) covers the manifest, which holds the
    # verity root hash of the payload: change a byte of the signed data.
    data[-200] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert run(["rauc", "info", f"--keyring={cert}", bad]).returncode != 0
    truncated = tmp_path / "short.raucb"
    truncated.write_bytes(bytes(data[:4096]))
    assert run(["rauc", "info", f"--keyring={cert}", truncated]).returncode != 0


def test_bundle_script_refuses_what_is_not_an_ab_image(tmp_path, stub_build):
    tmp, _, _, _ = stub_build
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 1024 * 1024)
    p = run([BUNDLE, "--image", junk, "--work-dir", tmp / "work-out", "--out", tmp_path / "x.raucb"])
    assert p.returncode != 0 and "not an appliance image with two root slots" in p.stderr
    p = run([BUNDLE, "--image", junk, "--work-dir", tmp_path / "nokeys"])
    assert p.returncode != 0 and "no signing key" in p.stderr
    assert not (tmp_path / "x.raucb").exists()


def test_make_has_a_bundle_target():
    p = run(["make", "-C", REPO, "-n", "bundle"], check=True)
    assert "image/bundle.sh" in p.stdout


# --- the boot selector -------------------------------------------------------------

@pytest.fixture
def slots(tmp_path):
    """A boot partition as step 30 leaves it, and slot B's root as RAUC
    wrote it."""
    boot = tmp_path / "boot"
    (boot / "slot-a/overlays").mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
                                     "\n[all]\nos_prefix=slot-a/\n")
    (boot / "slot-a/cmdline.txt").write_text(
        "console=tty0 root=PARTUUID=4170706c-02 rootfstype=ext4 ro rootwait quiet rauc.slot=A\n")
    (boot / "slot-a/vmlinuz").write_bytes(b"kernel A")
    (boot / "slot-a/overlays/hat.dtbo").write_bytes(b"overlay")
    rootb = tmp_path / "rootb"
    (rootb / "boot").mkdir(parents=True)
    (rootb / "boot/vmlinuz-6.12.99-arm64").write_bytes(b"kernel B")
    (rootb / "boot/initrd.img-6.12.99-arm64").write_bytes(b"initrd B")
    (rootb / "usr/lib/linux-image-6.12.99-arm64/broadcom").mkdir(parents=True)
    (rootb / "usr/lib/linux-image-6.12.99-arm64/broadcom/bcm2711-rpi-4-b.dtb").write_bytes(b"dtb")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyAMA0 root=PARTUUID=4170706c-02 ro rauc.slot=A\n")

    def call(*args, current="A"):
        cmdline.write_text(f"root=PARTUUID=4170706c-0{2 if current == 'A' else 4} ro rauc.slot={current}\n")
        env = {"BOOT_SLOT_DIR": str(boot), "BOOT_SLOT_CMDLINE": str(cmdline),
               "BOOT_SLOT_ROOT_B": str(rootb), "BOOT_SLOT_ROOT_A": str(tmp_path / "roota")}
        return run(["sh", BOOT_SLOT, *args], env=env)
    return boot, call


def out(p):
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_trial_then_commit(slots):
    boot, call = slots
    config_before = (boot / "config.txt").read_text()
    assert out(call("get-primary")) == "A" and out(call("get-current")) == "A"
    assert out(call("get-state", "B")) == "good"
    out(call("set-state", "B", "bad"))       # RAUC, before it writes slot B
    out(call("set-primary", "B"))            # RAUC, after
    assert (boot / "config.txt").read_text() == config_before, "the committed slot is untouched"
    tryboot = (boot / "tryboot.txt").read_text()
    assert tryboot == config_before.replace("os_prefix=slot-a/", "os_prefix=slot-b/")
    assert (boot / "slot-b/vmlinuz").read_bytes() == b"kernel B"
    assert (boot / "slot-b/initrd.img").read_bytes() == b"initrd B"
    assert (boot / "slot-b/bcm2711-rpi-4-b.dtb").exists() and (boot / "slot-b/overlays/hat.dtbo").exists()
    assert (boot / "slot-b/cmdline.txt").read_text() == \
        "console=tty0 root=PARTUUID=4170706c-04 rootfstype=ext4 ro rootwait quiet rauc.slot=B\n"
    assert out(call("get-primary")) == "B" and out(call("get-state", "B")) == "good"
    assert out(call("status")) == "current=A committed=A trial=B"
    out(call("reboot-trial"))                # QEMU: the harness reads the flag
    assert (boot / "tryboot.flag").exists()
    # Booted B on trial; healthy: RAUC marks it good, which commits it.
    assert out(call("status", current="B")) == "current=B committed=A trial=B"
    out(call("set-state", "B", "good", current="B"))
    assert (boot / "config.txt").read_text() == tryboot
    assert not (boot / "tryboot.txt").exists() and not (boot / "tryboot.flag").exists()
    assert out(call("status", current="B")) == "current=B committed=B trial="


def test_trial_marked_bad_returns_to_the_old_slot(slots):
    boot, call = slots
    config_before = (boot / "config.txt").read_text()
    out(call("set-primary", "B"))
    out(call("set-state", "B", "bad", current="B"))
    assert not (boot / "tryboot.txt").exists()
    assert (boot / "config.txt").read_text() == config_before
    assert out(call("get-primary")) == "A" and out(call("get-state", "B")) == "bad"
    # A trial that is not the booted slot is not committed by "good".
    out(call("set-primary", "B"))
    out(call("set-state", "B", "good", current="A"))
    assert (boot / "config.txt").read_text() == config_before and (boot / "tryboot.txt").exists()
    # Choosing the committed slot again cancels the trial.
    out(call("set-primary", "A"))
    assert not (boot / "tryboot.txt").exists()


@pytest.mark.parametrize("args, why", [
    (["set-primary", "C"], "no slot 'C'"),
    (["set-primary", "A;reboot"], "no slot"),
    (["set-state", "B", "ok"], "state must be good or bad"),
    (["set-state", "A", "bad"], "committed one"),
    (["reboot-trial"], "no slot on trial"),
    (["frobnicate"], "usage"),
])
def test_boot_slot_refuses(slots, args, why):
    boot, call = slots
    before = {p: p.read_bytes() for p in boot.rglob("*") if p.is_file()}
    p = call(*args)
    assert p.returncode != 0 and why in p.stderr, p.stderr
    assert before == {p: p.read_bytes() for p in boot.rglob("*") if p.is_file()}


def test_set_primary_refuses_a_slot_without_a_kernel(slots, tmp_path):
    boot, call = slots
    for f in (tmp_path / "rootb/boot").iterdir():
        f.unlink()
    p = call("set-primary", "B")
    assert p.returncode != 0 and "not an appliance root" in p.stderr
    assert not (boot / "tryboot.txt").exists()


def test_update_check_does_nothing_off_trial(slots, tmp_path):
    boot, call = slots
    shim = tmp_path / "boot-slot"
    shim.write_text(f"#!/bin/sh\nexec sh {BOOT_SLOT} \"$@\"\n")
    shim.chmod(0o755)
    env = {"BOOT_SLOT": str(shim), "BOOT_SLOT_DIR": str(boot),
           "BOOT_SLOT_CMDLINE": str(tmp_path / "cmdline"), "UPDATE_CHECK_DEADLINE": "0"}
    (tmp_path / "cmdline").write_text("rauc.slot=A\n")
    p = run([sys.executable, UPDATE_CHECK], env=env)
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr


@pytest.mark.parametrize("code, healthy", [(200, True), (401, True), (500, False), (503, False)])
def test_update_check_counts_an_answering_app_healthy(tmp_path, code, healthy):
    """/api/status is the admin's: asked without credentials, the app's 401
    shows it is up and routing; a 5xx does not."""
    import http.server
    import threading

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "systemctl").write_text("#!/bin/sh\nexit 0\n")  # appliance.service is active
    (shims / "systemctl").chmod(0o755)
    with http.server.HTTPServer(("127.0.0.1", 0), Status) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            env = {"PATH": f"{shims}:/usr/bin:/bin",
                   "UPDATE_CHECK_URL": f"http://127.0.0.1:{server.server_port}/api/status"}
            code_ = f"import runpy; print(runpy.run_path({str(UPDATE_CHECK)!r}, run_name='uc')['healthy']())"
            p = run([sys.executable, "-c", code_], env=env)
        finally:
            server.shutdown()
    assert p.returncode == 0 and p.stdout.strip() == str(healthy), p.stdout + p.stderr

def _update_check(tmp_path, boot, current, record, boot_id, extra_env=None):
    """update-check on a boot of slot ``current`` with the app's record
    ``record`` written in the boot ``record["boot_id"]``; this boot is
    ``boot_id``. Returns the process and the record afterwards."""
    import json
    shim = tmp_path / "boot-slot"
    shim.write_text(f"#!/bin/sh\nexec sh {BOOT_SLOT} \"$@\"\n")
    shim.chmod(0o755)
    (tmp_path / "cmdline").write_text(
        f"root=PARTUUID=4170706c-0{2 if current == 'A' else 4} ro rauc.slot={current}\n")
    (tmp_path / "boot_id").write_text(boot_id + "\n")
    path = tmp_path / "update-trial.json"
    path.write_text(json.dumps(record))
    env = {"BOOT_SLOT": str(shim), "BOOT_SLOT_DIR": str(boot),
           "BOOT_SLOT_CMDLINE": str(tmp_path / "cmdline"), "BOOT_SLOT_ROOT_B": str(tmp_path / "rootb"),
           "UPDATE_CHECK_RECORD": str(path), "UPDATE_CHECK_BOOT_ID": str(tmp_path / "boot_id"),
           "UPDATE_CHECK_DEADLINE": "0", **(extra_env or {})}
    p = run([sys.executable, UPDATE_CHECK], env=env)
    return p, json.loads(path.read_text())


def test_update_check_closes_a_trial_that_never_came_up(slots, tmp_path):
    """The app asked for a trial boot; the next boot is the old slot (the
    trial hung or panicked and the watchdog ended it): the record says so
    and the trial is dropped."""
    boot, call = slots
    out(call("set-primary", "B"))
    asked = {"outcome": "trial", "boot_id": "boot-1", "from_slot": "A"}
    p, record = _update_check(tmp_path, boot, "A", asked, "boot-2")
    assert p.returncode == 0, p.stderr
    assert record["outcome"] == "rolled-back" and record["slot"] == "B"
    assert "never came up" in record["reason"] and record["from_slot"] == "A"
    assert not (boot / "tryboot.txt").exists() and out(call("get-state", "B")) == "bad"


def test_update_check_leaves_a_trial_not_yet_booted(slots, tmp_path):
    boot, call = slots
    out(call("set-primary", "B"))
    asked = {"outcome": "trial", "boot_id": "boot-1"}
    p, record = _update_check(tmp_path, boot, "A", asked, "boot-1")   # the same boot
    assert p.returncode == 0 and record == asked
    assert (boot / "tryboot.txt").exists()


def test_update_check_records_a_commit(slots, tmp_path):
    import http.server
    import threading

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    boot, call = slots
    out(call("set-primary", "B"))
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "systemctl").write_text("#!/bin/sh\nexit 0\n")      # appliance.service is active
    (shims / "rauc").write_text(f"#!/bin/sh\nexec sh {BOOT_SLOT} set-state B good\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    with http.server.HTTPServer(("127.0.0.1", 0), Status) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            p, record = _update_check(
                tmp_path, boot, "B", {"outcome": "trial", "boot_id": "boot-1"}, "boot-2",
                {"PATH": f"{shims}:/usr/bin:/bin", "UPDATE_CHECK_DEADLINE": "30",
                 "UPDATE_CHECK_URL": f"http://127.0.0.1:{server.server_port}/api/status"})
        finally:
            server.shutdown()
    assert p.returncode == 0, p.stdout + p.stderr
    assert record["outcome"] == "committed" and record["slot"] == "B", record
    assert "os_prefix=slot-b/" in (boot / "config.txt").read_text()


# --- appliance update --------------------------------------------------------------

def test_appliance_update_refuses_what_is_not_a_bundle_file(tmp_path):
    def update(*args):
        return subprocess.run([sys.executable, "-m", "appliance.cli", "update", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    p = update(str(tmp_path))
    assert p.returncode == 2 and "is not a file" in p.stderr
    p = update(str(tmp_path / "missing.raucb"))
    assert p.returncode == 2 and "is not a file" in p.stderr
    junk = tmp_path / "-rf"
    junk.write_bytes(b"not a bundle")
    p = update("--no-reboot", "--", str(junk))
    assert p.returncode == 1 and "refused or failed; nothing changed" in p.stderr
