"""The slow proof: build the full image (make image), boot it in
qemu-system-aarch64 -M virt -cpu cortex-a72 with user networking, reach the
appliance's /api/status through a port forwarded on 127.0.0.1, and measure
power-on to ready against the floor: a minimal Debian of the same release
booted the same way whose only service answers /api/status from a file.

    make test-slow PYTEST_ARGS="tests/image/test_boot.py"

APPLIANCE_TEST_IMAGE=path/to/appliance-X.img boots an image already built
instead of building one (the build takes 25+ minutes on 2 cores);
APPLIANCE_IMAGE_ARGS adds image/build.sh options (e.g. "--set APP=stub");
APPLIANCE_FLOOR_IMAGE reuses a floor image (an ext4 file);
APPLIANCE_FLOOR=derived uses this image with the appliance's units masked
instead of a minimal Debian (no bootstrap: minutes cheaper, but it measures
what the appliance adds, not the distance to a minimal system);
APPLIANCE_BOOT_ROUNDS (default 3) is how many later boots of each are timed.
"""
import json
import os
import statistics
import subprocess
import sys

import pytest

from image_helpers import canonical, locked_python, run
from image_vm import TOKEN, VM, Card, boot_floor, build_floor, derived_floor, partitions, ssh_key

MIB = 1024 * 1024
XZ_BUDGET = 250 * MIB
ROOT_BUDGET = 700 * MIB


# The emulation's slowness, measured on the workload that dominates the
# app's start: importing it (Quart, hypercorn, trio, the engine's module).
IMPORT_PROBE = ("import time; t = time.perf_counter(); "
                "import appliance.cli, appliance.web, appliance.engine; "
                "print(time.perf_counter() - t)")


def import_seconds(command):
    """The faster of two runs (the first may read from a cold cache)."""
    return min(float(command().strip().splitlines()[-1]) for _ in range(2))


def root_used(img):
    """Bytes the root file system (slot A) uses."""
    off = partitions(img)[1]["start"] * 512
    stats = run(["debugfs", "-R", "stats", f"{img}?offset={off}"], check=True).stdout
    def field(name: str) -> int:
        return int(next(line.split(":")[1] for line in stats.splitlines() if line.startswith(name)))
    return (field("Block count") - field("Free blocks")) * field("Block size")


def generator_seconds(vm):
    """How long PID 1's generators took in the running boot: they share a
    fixed 90 s, past which the boot does not start (one did, on a busy
    machine)."""
    shown = vm.ssh("systemctl show -p GeneratorsStartTimestampMonotonic "
                   "-p GeneratorsFinishTimestampMonotonic").stdout
    stamps = dict(line.split("=", 1) for line in shown.split())
    return (int(stamps["GeneratorsFinishTimestampMonotonic"])
            - int(stamps["GeneratorsStartTimestampMonotonic"])) / 1e6


def floor_booter(img, tmp_path):
    """(what the floor is, a function that powers it on and returns seconds
    to /api/status). Made after the appliance's first boot, whose kernel
    and initramfs the bootstrapped floor boots with."""
    if os.environ.get("APPLIANCE_FLOOR") == "derived":
        # a folder of its own: its serial-N.log would overwrite the appliance's
        (tmp_path / "floor").mkdir()
        fvm = VM(Card(derived_floor(img, tmp_path), tmp_path / "floor-card.img"), tmp_path / "floor")

        def boot():
            try:
                fvm.boot()
                return fvm.wait_status()[0]
            finally:
                fvm.stop()
        return "this image with the appliance's units masked, python3 -m http.server", boot
    floor = build_floor(tmp_path, img)
    kernel, initrd = tmp_path / "vmlinuz-1", tmp_path / "initrd-1"
    return ("minimal Debian, same kernel and initramfs, python3 -m http.server",
            lambda: boot_floor(floor, kernel, initrd, tmp_path))


@pytest.mark.slow
def test_image_boots_and_serves_status(appliance_image, tmp_path, capsys):
    img, _ = appliance_image
    card = Card(img, tmp_path / "card.img")
    key = ssh_key(tmp_path)
    # The user's way in: a key in appliance.toml (flash.sh --settings-only).
    card.settings("--ssh-key", f"{key}.pub", "--token", TOKEN)
    vm = VM(card, tmp_path, key)
    # One emulated boot varies by seconds with the host's load: later boots
    # of the appliance and boots of the floor take turns, and the medians
    # are compared.
    rounds = int(os.environ.get("APPLIANCE_BOOT_ROUNDS", "3"))
    later, floor_times = [], []
    report = []
    try:
        slot, source = vm.boot()
        assert (slot, source) == ("A", "config.txt")
        first, status = vm.wait_status()
        assert isinstance(status, dict)
        log = vm.log()
        assert "appliance-firstboot" in log, "first-boot settings ran"
        assert "Failed to start appliance" not in log
        vm.wait_ssh()
        chain_first = vm.ssh("systemd-analyze critical-chain appliance.service --no-pager", check=False).stdout
        generators = [generator_seconds(vm)]
        floor_kind, boot_the_floor = floor_booter(img, tmp_path)
        for _ in range(rounds):
            # A later power-on: settings already applied, what every boot costs.
            vm.ssh("sudo systemctl reboot", check=False)
            vm.wait_exit()
            floor_times.append(boot_the_floor())
            vm.boot()
            t, status = vm.wait_status()
            later.append(t)
            vm.wait_ssh()
            generators.append(generator_seconds(vm))
        chain = vm.ssh("systemd-analyze critical-chain appliance.service --no-pager", check=False).stdout
        blame = vm.ssh("systemd-analyze blame --no-pager | head -15", check=False).stdout
        total = vm.ssh("systemd-analyze --no-pager", check=False).stdout
        gst = vm.ssh("systemctl show appliance.service -p Environment", check=False).stdout
        assert "GST_REGISTRY_UPDATE=no" in gst
        # The registry made at build time is what the app's user reads: a
        # registry it cannot open means a scan of every plugin at each start.
        env = gst.strip().split("=", 1)[1]
        gst_init = vm.ssh(f"sudo -u appliance env {env} GST_DEBUG=GST_REGISTRY:4 GST_DEBUG_NO_COLOR=1 "
                          "python3 -c 'import ctypes; ctypes.CDLL(\"libgstreamer-1.0.so.0\")"
                          ".gst_init(None, None)' 2>&1").stdout
        assert "registry reading and updating done" in gst_init, gst_init[-2000:]
        assert "Unable to" not in gst_init and "write_cache" not in gst_init, gst_init[-2000:]
        guest_import = import_seconds(lambda: vm.ssh(
            f"/opt/appliance/venv/bin/python -c '{IMPORT_PROBE}'").stdout)
        host_import = import_seconds(lambda: subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True).stdout)
        frozen = vm.ssh("/opt/appliance/venv/bin/pip freeze --all").stdout
        # the initramfs waits for the root as long as systemd waits for the
        # boot's devices, and gives up with a reboot (panic=), not a shell
        in_initramfs = vm.ssh("lsinitramfs /boot/initrd.img-*").stdout
        cmdline = vm.ssh("cat /proc/cmdline").stdout.split()
        loaded = {line.split()[0] for line in vm.ssh("cat /proc/modules").stdout.splitlines()}
    finally:
        vm.stop()
    assert "scripts/local-block/appliance-root-wait" in in_initramfs.split(), in_initramfs[-2000:]
    # The initramfs carries the Pi's SD and USB disk drivers, but loads only
    # what the hardware asks for: QEMU has neither, so no boot here spends
    # seconds checking their signatures.
    carried = {os.path.basename(f).split(".ko")[0] for f in in_initramfs.split() if ".ko" in f}
    assert {"sdhci-iproc", "usb-storage", "xhci-pci", "virtio_blk", "ext4"} <= carried, carried
    assert "virtio_blk" in loaded and not loaded & {"sdhci_iproc", "usb_storage", "xhci_pci", "dwc2"}, \
        loaded
    assert "panic=10" in cmdline, cmdline
    # The image runs the Python packages the suite ran (packages/python.txt).
    in_image = dict(line.split("==") for line in frozen.split() if "==" in line)
    in_image = {canonical(name): version for name, version in in_image.items()}
    locked = locked_python()
    assert {n: in_image.get(n) for n in locked} == locked
    later_median, floor_median = statistics.median(later), statistics.median(floor_times)
    def listed(times: list[float]) -> str:
        return ", ".join(f"{t:.1f}" for t in times)
    xz = img.with_suffix(".img.xz")
    used = root_used(img)
    report += [
        f"image {img.name}: {img.stat().st_size / MIB:.0f} MiB .img"
        + (f", {xz.stat().st_size / MIB:.0f} MiB .img.xz" if xz.exists() else "")
        + f", root file system {used / MIB:.0f} MiB used",
        "power-on to /api/status ready (qemu -M virt -cpu cortex-a72 -smp 2, emulated):",
        f"  appliance, first boot (applies appliance.toml): {first:.1f} s",
        f"  appliance, later boots: {listed(later)} s; median {later_median:.1f} s",
        f"  floor ({floor_kind}): {listed(floor_times)} s; median {floor_median:.1f} s",
        f"  appliance - floor (medians):                    {later_median - floor_median:.1f} s",
        f"emulation factor (the app's imports: {guest_import:.2f} s in the guest, "
        f"{host_import:.2f} s on this host): {guest_import / host_import:.1f}",
        f"  appliance - floor at this host's speed:         "
        f"{(later_median - floor_median) * host_import / guest_import:.2f} s",
        f"PID 1's generators (of 90 s): {listed(generators)} s, first boot first",
        f"/api/status: {json.dumps(status)[:300]}",
        "systemd-analyze:", total.strip(),
        "critical chain (last boot):", chain.strip(),
        "critical chain (first boot):", chain_first.strip(),
        "blame (last boot):", blame.rstrip(),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(report))
    (tmp_path / "boot-report.txt").write_text("\n".join(report) + "\n")
    assert used <= ROOT_BUDGET, f"root uses {used / MIB:.0f} MiB, budget {ROOT_BUDGET / MIB:.0f}"
    if xz.exists():
        assert xz.stat().st_size <= XZ_BUDGET, f".img.xz is {xz.stat().st_size / MIB:.0f} MiB"


def boot_to_exit(card: Card, tmp_path, cmdline: str) -> str:
    """Boot slot A with ``cmdline`` until the guest ends (a reboot ends
    QEMU: -no-reboot); its serial console."""
    (tmp_path / "cmdline.txt").write_text(cmdline)
    run(["mcopy", "-o", "-i", card.at, tmp_path / "cmdline.txt", "::slot-a/cmdline.txt"], check=True)
    vm = VM(card, tmp_path)
    try:
        vm.boot()
        vm.wait_exit(timeout=900)
    finally:
        vm.stop()
    return vm.log()


@pytest.mark.slow
def test_a_box_that_cannot_finish_booting_reboots_instead_of_waiting_at_a_console(
        appliance_image, tmp_path):
    """The box has no screen: wherever a boot stops, it reboots (on a Pi,
    tryboot then brings a trial slot's failure back to the committed slot).

    1. root= names a partition no disk has: the initramfs waits for it as
       long as systemd would wait for a device (its local-block script,
       270 s), then gives up with a reboot (panic=10), not a shell.
    2. systemd in emergency mode (asked for here with systemd.unit=, as a
       mount that fails would): it says so and reboots after 30 s."""
    img, _ = appliance_image
    card = Card(img, tmp_path / "card.img")
    good = card.read("slot-a/cmdline.txt")
    assert "root=PARTUUID=4170706c-02" in good
    log = boot_to_exit(card, tmp_path, good.replace("root=PARTUUID=4170706c-02",
                                                    "root=PARTUUID=4170706c-09"))
    assert "appliance-root-wait: waited 270 s for PARTUUID=4170706c-09" in log, log[-4000:]
    assert "Rebooting automatically due to panic= boot argument" in log, log[-4000:]
    log = boot_to_exit(card, tmp_path, good.strip() + " systemd.unit=emergency.target\n")
    assert "appliance: emergency mode on a box with no console: rebooting in 30 s" in log, \
        log[-4000:]


@pytest.mark.slow
def test_a_pid_1_that_crashes_reboots_instead_of_freezing(appliance_image, tmp_path):
    """systemd freezes by default when PID 1 crashes or cannot start (its
    generators past their 90 s): on a box without a screen a hang until
    someone pulls the plug. The image's CrashReboot=yes takes the path both
    share (freeze_or_exit_or_reboot); a crash is what can be asked for from
    outside."""
    img, _ = appliance_image
    card = Card(img, tmp_path / "card.img")
    key = ssh_key(tmp_path)
    card.settings("--ssh-key", f"{key}.pub", "--token", TOKEN)
    vm = VM(card, tmp_path, key)
    try:
        vm.boot()
        vm.wait_ssh()
        booted = len(vm.log())
        vm.ssh("sudo kill -SEGV 1", check=False)
        # Nobody asks for a reboot: only PID 1's crash path can end QEMU
        # (-no-reboot) here; frozen, the guest would run on and this times out.
        vm.wait_exit(timeout=600)
    finally:
        vm.stop()
    # Its messages go to the journal (running by then), not the console;
    # what the console shows is the kernel's reboot with no shutdown before
    # it: PID 1 called reboot(2) itself, stopping nothing.
    after = vm.log()[booted:]
    assert "reboot: Restarting system" in after, after[-4000:]
    assert "Stopping" not in after and "Stopped" not in after, after[-4000:]
