"""The image under QEMU for the slow tests: the Raspberry Pi firmware's part
played here (which slot to boot, tryboot once), user networking with the
appliance's port 80 and SSH forwarded to loopback, and a shell over SSH with
a key written to the card's appliance.toml the way a user would (flash.sh
--settings-only).

    qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -no-reboot

-no-reboot: a reboot in the guest ends QEMU, and the next boot() reads the
boot partition again, as the firmware does at power-on.
"""
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from image_helpers import FLASH, REPO, run

BOOT_TIMEOUT = 900  # seconds; emulated cortex-a72 on 2 host cores
# /api/status is for the admin: the tests' cards carry this token
# (flash.sh --token) and send it as the appliance's scripts would.
TOKEN = "image-test-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_image(tmp_path, extra=()):
    """APPLIANCE_TEST_IMAGE, or `make image` into tmp_path (25+ minutes)."""
    given = os.environ.get("APPLIANCE_TEST_IMAGE")
    if given:
        return Path(given)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--set", f"OUT_DIR={out}", "--set", f"WORK_DIR={work}",
            *shlex.split(os.environ.get("APPLIANCE_IMAGE_ARGS", "")), *extra]
    t0 = time.monotonic()
    log = tmp_path / "build.log"  # written as the build goes: tail -f it
    with open(log, "w") as f:
        p = subprocess.run(["make", "-C", str(REPO), "image", "IMAGE_ARGS=" + shlex.join(args)],
                           stdout=f, stderr=subprocess.STDOUT, timeout=3 * 3600)
    assert p.returncode == 0, log.read_text(errors="replace")[-5000:]
    print(f"image built in {time.monotonic() - t0:.0f} s")
    images = sorted(out.glob("*.img"))
    assert len(images) == 1, images
    return images[0]


def partitions(img):
    return json.loads(run(["sfdisk", "-J", img], check=True).stdout)["partitiontable"]["partitions"]


class Card:
    """A working copy of the image: what is on the SD card."""

    def __init__(self, img: Path, path: Path):
        subprocess.run(["cp", "--sparse=always", str(img), str(path)], check=True)
        self.path = path
        self.at = f"{path}@@{partitions(path)[0]['start'] * 512}"

    def read(self, name):
        p = run(["mtype", "-i", self.at, f"::{name}"])
        return p.stdout if p.returncode == 0 else None

    def copy_out(self, name, dest):
        run(["mcopy", "-n", "-i", self.at, f"::{name}", dest], check=True)

    def delete(self, name):
        run(["mdel", "-i", self.at, f"::{name}"], check=True)

    def settings(self, *options):
        p = run([FLASH, "--allow-file", "--settings-only", self.path, *options])
        assert p.returncode == 0, p.stderr

    def firmware_slot(self):
        """What the Pi firmware would boot now: tryboot.txt's slot once when
        the last reboot asked for it (tryboot.flag), else config.txt's."""
        name = "config.txt"
        if self.read("tryboot.flag") is not None:
            self.delete("tryboot.flag")
            if self.read("tryboot.txt") is not None:
                name = "tryboot.txt"
        m = re.findall(r"^os_prefix=slot-([ab])/\s*$", self.read(name), re.M)
        assert m, f"{name} names no slot"
        return m[-1].upper(), name


class VM:
    def __init__(self, card: Card, workdir: Path, key: Path | None = None, extra=(), token=TOKEN):
        self.card, self.workdir, self.key, self.extra = card, workdir, key, list(extra)
        self.token = token
        self.proc = None
        self.boots = 0

    def boot(self):
        """Power on: the firmware's choice of slot, its kernel, initramfs
        and command line; returns (slot, file it came from)."""
        slot, source = self.card.firmware_slot()
        d = f"slot-{slot.lower()}"
        self.boots += 1
        kernel, initrd = self.workdir / f"vmlinuz-{self.boots}", self.workdir / f"initrd-{self.boots}"
        self.card.copy_out(f"{d}/vmlinuz", kernel)
        self.card.copy_out(f"{d}/initrd.img", initrd)
        cmdline = self.card.read(f"{d}/cmdline.txt").split()
        append = " ".join([w for w in cmdline if not w.startswith("console=") and w != "quiet"]
                          + ["console=ttyAMA0"])
        self.port, self.ssh_port, self.https_port = free_port(), free_port(), free_port()
        self.serial = self.workdir / f"serial-{self.boots}.log"
        cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
               "-nographic", "-monitor", "none", "-serial", f"file:{self.serial}", "-no-reboot",
               "-kernel", kernel, "-initrd", initrd, "-append", append,
               "-drive", f"file={self.card.path},if=none,format=raw,id=d0",
               "-device", "virtio-blk-pci,drive=d0",
               "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:80,"
                          f"hostfwd=tcp:127.0.0.1:{self.https_port}-:443,"
                          f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
               "-device", "virtio-net-pci,netdev=n0,romfile=",
               "-device", "virtio-rng-pci", *self.extra]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return slot, source

    def log(self):
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def wait_status(self, timeout=BOOT_TIMEOUT):
        """Seconds from power-on to GET /api/status answering 200, and the
        body; waits up to ``timeout`` seconds from now."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu exited ({self.proc.returncode}); serial:\n{self.log()[-4000:]}")
            # The app takes its admin token over HTTPS only (the host is not
            # loopback to the guest); the stub app serves plain HTTP only.
            # The guest's certificate is its own, made at its first start:
            # not checked here (this only waits for the service).
            unchecked = ssl.create_default_context()
            unchecked.check_hostname, unchecked.verify_mode = False, ssl.CERT_NONE
            for url, context in ((f"https://127.0.0.1:{self.https_port}/api/status", unchecked),
                                 (f"http://127.0.0.1:{self.port}/api/status", None)):
                try:
                    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
                    with urllib.request.urlopen(req, timeout=5, context=context) as r:
                        if r.status == 200:
                            return time.monotonic() - self.t0, json.loads(r.read())
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                    pass
            time.sleep(0.5)
        raise AssertionError(f"no /api/status within {timeout} s; serial:\n{self.log()[-6000:]}")

    def ssh(self, command, timeout=300, check=True, input=None):
        assert self.key, "no SSH key on this card"
        p = subprocess.run(["ssh", "-i", str(self.key), "-p", str(self.ssh_port),
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
                            "admin@127.0.0.1", command],
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check:
            assert p.returncode == 0, f"{command}: {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    def wait_ssh(self, timeout=BOOT_TIMEOUT):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"qemu exited; serial:\n{self.log()[-4000:]}"
            if self.ssh("true", check=False, timeout=60).returncode == 0:
                return
            time.sleep(2)
        raise AssertionError(f"no SSH within {timeout} s; serial:\n{self.log()[-4000:]}")

    def wait_exit(self, timeout=600):
        """The guest rebooted or powered off (-no-reboot ends QEMU)."""
        self.proc.wait(timeout=timeout)
        self.proc.stdout.close()
        self.proc = None

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None


def ssh_key(tmp_path):
    key = tmp_path / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    return key


FLOOR_HOOK = (
    'mkdir -p "$1/srv/api" && echo "{\\"floor\\": true}" > "$1/srv/api/status"; '
    'printf "[Unit]\\nDescription=floor\\nAfter=network.target\\n[Service]\\n'
    'ExecStart=/usr/bin/python3 -m http.server 80 --directory /srv\\n'
    '[Install]\\nWantedBy=multi-user.target\\n" > "$1/etc/systemd/system/floor.service"; '
    'mkdir -p "$1/etc/systemd/system/multi-user.target.wants"; '
    'ln -s /etc/systemd/system/floor.service "$1/etc/systemd/system/multi-user.target.wants/floor.service"; '
    'printf "[Match]\\nName=en*\\n[Network]\\nDHCP=yes\\n" > "$1/etc/systemd/network/20-wired.network"; '
    'ln -sf /lib/systemd/system/systemd-networkd.service '
    '"$1/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"; '
    'echo floor > "$1/etc/hostname"')


def floor_tar(tmp_path, suite):
    """The floor's root as a tarball (mmdebstrap, a few minutes);
    APPLIANCE_FLOOR_TAR reuses one."""
    given = os.environ.get("APPLIANCE_FLOOR_TAR")
    if given:
        return Path(given)
    tar = tmp_path / "floor.tar"
    p = run(["mmdebstrap", "--mode=unshare", "--variant=minbase", "--arch=arm64",
             "--include=systemd-sysv,udev,dbus,kmod,iproute2,python3",
             f"--customize-hook={FLOOR_HOOK}", suite, tar], timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    return tar


def build_floor(tmp_path, img):
    """The floor: a minimal Debian of the image's release booted the same way
    (same kernel, initramfs and modules, same QEMU machine, systemd and
    systemd-networkd), whose only service answers GET /api/status from a
    file with python3 -m http.server. APPLIANCE_FLOOR_IMAGE reuses one."""
    given = os.environ.get("APPLIANCE_FLOOR_IMAGE")
    if given:
        return Path(given)
    root_off = partitions(img)[1]["start"] * 512
    # /etc/os-release is a symlink to it, which debugfs's cat does not follow.
    release = run(["debugfs", "-R", "cat /usr/lib/os-release", f"{img}?offset={root_off}"],
                  check=True).stdout
    suite = re.search(r"^VERSION_CODENAME=(\S+)", release, re.M).group(1)
    t0 = time.monotonic()
    tar = floor_tar(tmp_path, suite)
    tree = tmp_path / "floor-root"
    tree.mkdir()
    run(["tar", "-xpf", tar, "-C", tree, "--numeric-owner"], check=True, timeout=600)
    # The appliance's kernel modules (its kernel boots the floor).
    run(["debugfs", "-R", f"rdump /usr/lib/modules {tree / 'usr/lib'}", f"{img}?offset={root_off}"],
        check=True, timeout=600)
    floor = tmp_path / "floor.ext4"
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "floor", "-d", tree, floor, "1200M"],
        check=True, timeout=600)
    print(f"floor image made in {time.monotonic() - t0:.0f} s")
    shutil.rmtree(tree, ignore_errors=True)
    return floor


def boot_floor(floor, kernel, initrd, workdir):
    """Power-on to /api/status of the floor image, booted like the appliance."""
    port = free_port()
    serial = workdir / "floor-serial.log"
    cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
           "-nographic", "-monitor", "none", "-serial", f"file:{serial}", "-no-reboot",
           "-kernel", kernel, "-initrd", initrd,
           "-append", "console=ttyAMA0 root=/dev/vda ro rootwait fsck.repair=yes",
           "-drive", f"file={floor},if=none,format=raw,id=d0,snapshot=on",
           "-device", "virtio-blk-pci,drive=d0",
           "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80",
           "-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci"]
    t0 = time.monotonic()
    proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < BOOT_TIMEOUT:
            assert proc.poll() is None, serial.read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError("floor: no /api/status; serial:\n" + serial.read_text(errors="replace")[-4000:])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def derived_floor(img, tmp_path):
    """A cheaper floor when there is no time to bootstrap one: this image
    with the appliance's own units masked and the same one-line
    `python3 -m http.server` answering /api/status from a file. It keeps the
    image's system services (networkd, avahi, dbus, journald), so it
    measures what the appliance itself adds to the boot, not the distance to
    a minimal Debian. Booted like the image (Card + VM)."""
    floor = tmp_path / "floor-derived.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(floor)], check=True)
    off = partitions(floor)[1]["start"] * 512
    unit = tmp_path / "floor.service"
    unit.write_text("[Unit]\nDescription=floor\nAfter=network.target\n[Service]\n"
                    "ExecStart=/usr/bin/python3 -m http.server 80 --directory /srv\n"
                    "[Install]\nWantedBy=multi-user.target\n")
    status = tmp_path / "floor-status"
    status.write_text('{"floor": true}\n')
    cmds = tmp_path / "floor.cmds"
    lines = ["write %s /etc/systemd/system/floor.service" % unit,
             "sif /etc/systemd/system/floor.service mode 0100644",
             "symlink /etc/systemd/system/multi-user.target.wants/floor.service /etc/systemd/system/floor.service",
             "mkdir /srv/api", "write %s /srv/api/status" % status, "sif /srv/api/status mode 0100644"]
    for u in ("appliance.service", "appliance-firstboot.service", "appliance-update-check.service",
              "appliance-setup-code.path"):
        lines += [f"rm /etc/systemd/system/{u}", f"symlink /etc/systemd/system/{u} /dev/null"]
    cmds.write_text("\n".join(lines) + "\n")
    run(["debugfs", "-w", "-f", cmds, f"{floor}?offset={off}"], check=True)
    return floor
