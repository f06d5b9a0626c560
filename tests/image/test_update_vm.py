"""Signed A/B updates in QEMU (slow). The harness plays the Pi firmware
(image_vm.Card.firmware_slot: tryboot.txt once after a trial reboot, else
config.txt). Bundles reach the guest on a second virtual disk.

1. A good bundle (make bundle's, from the image itself): installed into slot
   B by `appliance update`, booted on trial, found healthy, committed; the
   state partition (settings, setup code) is the same afterwards.
2. A bundle signed by another key: refused, nothing changes.
3. A bundle whose app cannot start: installed into the other slot, booted on
   trial, not healthy within the deadline, marked bad; the appliance is back
   on the slot it came from by itself.

    make test-slow PYTEST_ARGS=tests/image/test_update_vm.py
"""
import subprocess
import time

import pytest

from image_helpers import REPO, run
from image_vm import TOKEN, VM, Card, partitions, ssh_key

APPLIANCE = "/opt/appliance/venv/bin/appliance"


def bundle_disk(tmp_path, bundles):
    """An ext4 file holding the bundles, attached as the guest's /dev/vdb."""
    d = tmp_path / "bundles"
    d.mkdir()
    size = 64
    for b in bundles:
        subprocess.run(["cp", "--sparse=always", str(b), str(d / b.name)], check=True)
        size += b.stat().st_size // (1024 * 1024) + 16
    disk = tmp_path / "bundles.ext4"
    run(["mkfs.ext4", "-q", "-F", "-L", "bundles", "-d", d, disk, f"{size}M"], check=True, timeout=600)
    return disk


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
    disk = bundle_disk(tmp_path, [good, wrong, broken])

    card = Card(img, tmp_path / "card.img")
    sshkey = ssh_key(tmp_path)
    card.settings("--ssh-key", f"{sshkey}.pub", "--token", TOKEN)
    vm = VM(card, tmp_path, sshkey, extra=["-drive", f"file={disk},if=none,format=raw,id=d1,readonly=on",
                                           "-device", "virtio-blk-pci,drive=d1"])
    times = {}
    try:
        assert vm.boot() == ("A", "config.txt")
        vm.wait_status()
        vm.wait_ssh()
        vm.ssh("sudo mount -o ro /dev/vdb /mnt")
        state_before = vm.ssh("sudo cat /var/lib/appliance/config.toml").stdout
        assert status(vm) == {"current": "A", "committed": "A", "trial": ""}

        # 2. Another key: refused before anything is written.
        p = vm.ssh(f"sudo {APPLIANCE} update /mnt/wrong.raucb", check=False)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "refused or failed; nothing changed" in p.stderr
        assert status(vm) == {"current": "A", "committed": "A", "trial": ""}

        # 1. The good one: install, trial boot, healthy, committed.
        t0 = time.monotonic()
        p = vm.ssh(f"sudo {APPLIANCE} update /mnt/good.raucb", check=False, timeout=1800)
        times["install"] = time.monotonic() - t0
        assert "rebooting into it on trial" in p.stdout, p.stdout + p.stderr
        vm.wait_exit()
        assert vm.boot() == ("B", "tryboot.txt")
        times["trial boot to ready"], _ = vm.wait_status()
        vm.wait_ssh()
        deadline = time.monotonic() + 300
        while status(vm)["committed"] != "B":
            assert time.monotonic() < deadline, vm.ssh(
                "sudo journalctl -b --no-pager -u appliance-update-check -u rauc | tail -40", check=False).stdout
            time.sleep(3)
        assert status(vm) == {"current": "B", "committed": "B", "trial": ""}
        assert "root=PARTUUID=4170706c-04" in vm.ssh("cat /proc/cmdline").stdout
        assert vm.ssh("sudo cat /var/lib/appliance/config.toml").stdout == state_before, "state survives"
        assert "rauc.slot=B" in vm.ssh("cat /proc/cmdline").stdout
        # Power cycle: B is the committed slot now.
        vm.stop()
        assert vm.boot() == ("B", "config.txt")
        vm.wait_status()
        vm.wait_ssh()
        vm.ssh("sudo mount -o ro /dev/vdb /mnt")

        # 3. An update whose app cannot start: into slot A, tried, rolled back.
        p = vm.ssh(f"sudo {APPLIANCE} update /mnt/broken.raucb", check=False, timeout=1800)
        assert "rebooting into it on trial" in p.stdout, p.stdout + p.stderr
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
    finally:
        vm.stop()
    with capsys.disabled():
        print("\nupdate times (emulated): " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
