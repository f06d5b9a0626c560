"""The slow proof: build the full image (make image), boot it in
qemu-system-aarch64 -M virt -cpu cortex-a72 with user networking, and reach
the appliance's /api/status through a port forwarded on 127.0.0.1.

    make test-slow PYTEST_ARGS="tests/image/test_boot.py"

APPLIANCE_TEST_IMAGE=path/to/appliance-X.img boots an image already built
instead of building one (the build takes 25+ minutes on 2 cores);
APPLIANCE_IMAGE_ARGS adds image/build.sh options (e.g. "--set APP=stub").
"""
import json
import os
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from image_helpers import REPO, run

BOOT_TIMEOUT = 900  # seconds; emulated cortex-a72 on 2 host cores


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_image(tmp_path):
    given = os.environ.get("APPLIANCE_TEST_IMAGE")
    if given:
        return Path(given)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--set", f"OUT_DIR={out}", "--set", f"WORK_DIR={work}",
            *shlex.split(os.environ.get("APPLIANCE_IMAGE_ARGS", ""))]
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


@pytest.mark.slow
def test_image_boots_and_serves_status(tmp_path, capsys):
    img = build_image(tmp_path)
    parts = json.loads(run(["sfdisk", "-J", img], check=True).stdout)["partitiontable"]["partitions"]
    at = f"{img}@@{parts[0]['start'] * 512}"
    names = run(["mdir", "-i", at, "-b", "::"], check=True).stdout.split()
    kernel = next(Path(n).name for n in names if Path(n).name.startswith("vmlinuz-"))
    initrd = next(Path(n).name for n in names if Path(n).name.startswith("initrd.img-"))
    for name in (kernel, initrd):
        run(["mcopy", "-n", "-i", at, f"::{name}", tmp_path / name], check=True)
    cmdline = run(["mtype", "-i", at, "::cmdline.txt"], check=True).stdout.split()
    # The image's own command line (root=PARTUUID=…, ro), with QEMU's console.
    append = " ".join([w for w in cmdline if not w.startswith("console=") and w != "quiet"]
                      + ["console=ttyAMA0"])
    assert "ro" in append.split() and "root=PARTUUID=4170706c-02" in append

    port = free_port()
    serial = tmp_path / "serial.log"
    cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
           "-nographic", "-monitor", "none", "-serial", f"file:{serial}",
           "-kernel", tmp_path / kernel, "-initrd", tmp_path / initrd, "-append", append,
           "-drive", f"file={img},if=none,format=raw,id=d0,snapshot=on",
           "-device", "virtio-blk-pci,drive=d0",
           "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80",
           "-device", "virtio-net-pci,netdev=n0,romfile=",
           "-device", "virtio-rng-pci"]
    t0 = time.monotonic()
    vm = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    status = None
    try:
        while time.monotonic() - t0 < BOOT_TIMEOUT:
            assert vm.poll() is None, f"qemu exited: {vm.stdout.read().decode()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
                    if r.status == 200:
                        status = json.loads(r.read())
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        ready = time.monotonic() - t0
        log = serial.read_text(errors="replace") if serial.exists() else ""
        assert status is not None, f"no /api/status within {BOOT_TIMEOUT} s; serial console:\n{log[-6000:]}"
        with capsys.disabled():
            print(f"\nimage {img.name}: power-on to /api/status ready in {ready:.1f} s "
                  f"(qemu -M virt -cpu cortex-a72, emulated)\n/api/status: {json.dumps(status)[:400]}")
        assert isinstance(status, dict)
        assert "appliance-firstboot" in log, "first-boot settings ran"
        assert "Failed to start appliance" not in log
    finally:
        vm.terminate()
        try:
            vm.wait(timeout=20)
        except subprocess.TimeoutExpired:
            vm.kill()
            vm.wait()
        vm.stdout.close()
