"""Signed A/B updates in QEMU (slow), uploaded through the admin page's API
(POST /api/update over HTTPS with the admin's token), as the page does. The
harness plays the Pi firmware (image_vm.Card.firmware_slot: tryboot.txt once
after a trial reboot, else config.txt).

1. A bundle signed by another key and a damaged one: refused before
   anything is written (RAUC's reason; for the damaged payload, veritysetup's
   through appliance/bundle_check.py); the slots and the update folder are
   as they were.
2. A good bundle (make bundle's, from the image itself): it fits the state
   partition, is installed into slot B, booted on trial, found healthy,
   committed, and GET /api/update says so afterwards; the state partition
   (settings, setup code) is the same.
3. A bundle whose app cannot start: installed into the other slot, booted on
   trial, not healthy within the deadline, marked bad; the appliance is back
   on the slot it came from by itself, and the page says it rolled back and why.

    make test-slow PYTEST_ARGS=tests/image/test_update_vm.py
"""
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from image_helpers import REPO, run
from image_vm import TOKEN, VM, Card, partitions, ssh_key

APPLIANCE = "/opt/appliance/venv/bin/appliance"


def failing_image(img, tmp_path):
    """The image with an app that exits at once, and a short trial deadline."""
    bad = tmp_path / "bad.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(bad)], check=True)
    fail = tmp_path / "fail.sh"
    fail.write_text("#!/bin/sh\necho 'this update is broken' >&2\nexit 1\n")
    unit = tmp_path / "check.service"
    off = partitions(bad)[1]["start"] * 512
    text = run(["debugfs", "-R", "cat /etc/systemd/system/appliance-update-check.service",
                f"{bad}?offset={off}"], check=True).stdout
    unit.write_text(text.replace("UPDATE_CHECK_DEADLINE=240", "UPDATE_CHECK_DEADLINE=90"))
    cmds = tmp_path / "debugfs.cmds"
    cmds.write_text(
        f"rm {APPLIANCE}\nwrite {fail} {APPLIANCE}\nsif {APPLIANCE} mode 0100755\n"
        f"sif {APPLIANCE} uid 0\nsif {APPLIANCE} gid 0\n"
        "rm /etc/systemd/system/appliance-update-check.service\n"
        f"write {unit} /etc/systemd/system/appliance-update-check.service\n"
        "sif /etc/systemd/system/appliance-update-check.service mode 0100644\n")
    run(["debugfs", "-w", "-f", cmds, f"{bad}?offset={off}"], check=True)
    return bad


def admin_api(vm, method, path, body=None, timeout=60):
    """(status, JSON or text) of an admin request over the guest's HTTPS
    (its own certificate, made at its first start: not checked here)."""
    unchecked = ssl.create_default_context()
    unchecked.check_hostname, unchecked.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {vm.token}"}
    data = None
    if body is not None:
        headers |= {"Content-Type": "application/octet-stream",
                    "Content-Length": str(body.stat().st_size)}
        data = body.open("rb")
    request = urllib.request.Request(f"https://127.0.0.1:{vm.https_port}{path}", data=data,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=unchecked) as r:
            code, text = r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        code, text = error.code, error.read().decode()
    finally:
        if data is not None:
            data.close()
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text


def last_update(vm):
    code, body = admin_api(vm, "GET", "/api/update")
    assert code == 200, body
    return body["last_update"]


def update_folder(vm):
    return vm.ssh("sudo ls -A /var/lib/appliance/update", check=False).stdout.split()


def status(vm):
    return dict(kv.split("=", 1) for kv in vm.ssh("/usr/lib/appliance/boot-slot status").stdout.split())


@pytest.mark.slow
def test_update_taken_refused_and_rolled_back(appliance_image, tmp_path, capsys):
    img, work = appliance_image
    cert, key = work / "rauc-dev/cert.pem", work / "rauc-dev/key.pem"
    assert cert.exists(), f"the image's signing key pair is not in {work}/rauc-dev"
    good, wrong, broken = tmp_path / "good.raucb", tmp_path / "wrong.raucb", tmp_path / "broken.raucb"
    run([REPO / "image/bundle.sh", "--image", img, "--cert", cert, "--key", key, "--out", good],
        check=True, timeout=1800)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "k.pem",
         "-out", tmp_path / "c.pem", "-days", "1", "-subj", "/CN=not the project"], check=True)
    p = run([REPO / "image/bundle.sh", "--image", img, "--cert", tmp_path / "c.pem",
             "--key", tmp_path / "k.pem", "--out", wrong], timeout=1800)
    assert p.returncode == 0 and "appliances running it will refuse this bundle" in p.stderr
    run([REPO / "image/bundle.sh", "--image", failing_image(img, tmp_path), "--cert", cert,
         "--key", key, "--out", broken], check=True, timeout=1800)
    damaged = tmp_path / "damaged.raucb"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF          # one byte of the payload
    damaged.write_bytes(bytes(data))

    card = Card(img, tmp_path / "card.img")
    sshkey = ssh_key(tmp_path)
    card.settings("--ssh-key", f"{sshkey}.pub", "--token", TOKEN)
    vm = VM(card, tmp_path, sshkey)
    times = {}
    try:
        assert vm.boot() == ("A", "config.txt")
        vm.wait_status()
        vm.wait_ssh()
        state_before = vm.ssh("sudo cat /var/lib/appliance/config.toml").stdout
        assert status(vm) == {"current": "A", "committed": "A", "trial": ""}
        assert last_update(vm) is None

        # 1. Another key, a damaged bundle: refused before anything is written
        # (RAUC's signature check; the damaged payload by appliance.bundle_check,
        # before RAUC is asked: dm-verity would find it only while RAUC writes)
        for bundle, reason in ((wrong, "signature verification failed"),
                               (damaged, "the bundle is damaged: veritysetup: ")):
            code, body = admin_api(vm, "POST", "/api/update?reboot=yes", bundle, timeout=1800)
            print(f"\n{bundle.name}: {code} {str(body)[:300]}")
            assert code == 422 and reason in str(body), (code, body)
            assert status(vm) == {"current": "A", "committed": "A", "trial": ""}
            assert update_folder(vm) == []

        # 2. The good one: it fits, install, trial boot, healthy, committed.
        t0 = time.monotonic()
        code, body = admin_api(vm, "POST", "/api/update?reboot=yes", good, timeout=1800)
        times["upload and install"] = time.monotonic() - t0
        assert code == 200 and body["state"] in ("installed", "rebooting"), (code, body)
        vm.wait_exit()
        assert vm.boot() == ("B", "tryboot.txt")
        times["trial boot to ready"], _ = vm.wait_status()
        vm.wait_ssh()
        deadline = time.monotonic() + 300
        while (record := last_update(vm) or {}).get("outcome") != "committed":
            assert time.monotonic() < deadline, (record, vm.ssh(
                "sudo journalctl -b --no-pager -u appliance-update-check -u rauc | tail -40",
                check=False).stdout)
            time.sleep(3)
        assert record["slot"] == "B" and record["from_slot"] == "A", record
        assert status(vm) == {"current": "B", "committed": "B", "trial": ""}
        assert "root=PARTUUID=4170706c-04" in vm.ssh("cat /proc/cmdline").stdout
        assert vm.ssh("sudo cat /var/lib/appliance/config.toml").stdout == state_before, "state survives"
        assert update_folder(vm) == []
        # Power cycle: B is the committed slot now.
        vm.stop()
        assert vm.boot() == ("B", "config.txt")
        vm.wait_status()
        vm.wait_ssh()

        # 3. An update whose app cannot start: into slot A, tried, rolled back.
        code, body = admin_api(vm, "POST", "/api/update?reboot=yes", broken, timeout=1800)
        assert code == 200, (code, body)
        vm.wait_exit()
        assert vm.boot() == ("A", "tryboot.txt")
        t0 = time.monotonic()
        vm.wait_exit(timeout=900)      # update-check gives up and reboots
        times["rollback after trial start"] = time.monotonic() - t0
        log = vm.log()
        assert "not healthy within 90 s: back to slot B" in log, log[-4000:]
        assert vm.boot() == ("B", "config.txt")
        vm.wait_status()
        vm.wait_ssh()
        assert status(vm) == {"current": "B", "committed": "B", "trial": ""}
        assert vm.ssh("/usr/lib/appliance/boot-slot get-state A").stdout.strip() == "bad"
        record = last_update(vm)
        assert record["outcome"] == "rolled-back" and "not healthy" in record["reason"], record
    finally:
        vm.stop()
    with capsys.disabled():
        print("\nupdate times (emulated): " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
