"""Image assembly from a small stub root (image/build.sh --stub-root): the
same steps 00, 30, 40 and 50 as the full build, checked from the outside
with sfdisk -J, mdir/mtype, e2fsck and debugfs."""
import hashlib
import os
import json
import lzma
import re
import tomllib
from pathlib import Path

import pytest

from image_helpers import BUILD, SMALL, build, make_stub_root, run

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def built(stub_build):
    return stub_build


def partitions(img):
    t = json.loads(run(["sfdisk", "-J", img], check=True).stdout)["partitiontable"]
    return t, t["partitions"]


def offset(img, n):
    return partitions(img)[1][n - 1]["start"] * 512


def debugfs(img, n, cmd):
    return run(["debugfs", "-R", cmd, f"{img}?offset={offset(img, n)}"], check=True).stdout


def cat(img, n, path):
    return debugfs(img, n, f"cat {path}")


def stat(img, n, path):
    out = debugfs(img, n, f"stat {path}")
    mode = int(re.search(r"Mode:\s+(\d+)", out).group(1), 8)
    uid = int(re.search(r"User:\s+(\d+)", out).group(1))
    gid = int(re.search(r"Group:\s+(\d+)", out).group(1))
    return mode, uid, gid, out


def test_build_shows_progress_by_numbered_steps(built):
    _, _, _, p = built
    steps = re.findall(r"==> \[\s*\d+s\] (\d\d) ", p.stderr)
    assert steps == ["00", "10", "30", "40", "50"], p.stderr


def test_the_state_partition_is_sized_for_an_uploaded_update(built):
    """The default (DATA_SIZE_MB=0) holds the root's size plus the margin the
    app keeps free when it takes an upload from the admin page (a bundle, the
    root compressed, is smaller): a fixed 64 MiB could never hold one. A
    smaller size asked for (SMALL's 8) is built, with a warning."""
    from appliance.config import UpdateConfig
    assert re.search(r"^DATA_SIZE_MB=0$", (BUILD.parent / "config.defaults").read_text(), re.M)
    assemble = (BUILD.parent / "stages/40-assemble.sh").read_text()
    margin_mb = int(re.search(r"^UPDATE_MARGIN_MB=(\d+)$", assemble, re.M).group(1))
    assert margin_mb << 20 == UpdateConfig().free_margin_bytes
    _, _, _, p = built
    assert "an update uploaded from the admin page will not fit" in p.stderr


def test_partition_table(built):
    _, _, img, _ = built
    table, parts = partitions(img)
    assert table["label"] == "dos"
    assert table["id"] == "0x4170706c"
    assert [p["type"] for p in parts] == ["c", "83", "83", "83"]
    assert parts[0].get("bootable") is True
    for p in parts:
        assert p["start"] * 512 % (4 * MIB) == 0, "partitions start on 4 MiB boundaries"
    assert parts[0]["size"] * 512 == 36 * MIB
    assert parts[2]["size"] * 512 == 8 * MIB
    # Root slot B (A/B updates): as large as slot A, after the state, empty.
    assert parts[3]["size"] == parts[1]["size"]
    assert parts[3]["start"] == parts[2]["start"] + parts[2]["size"]
    assert parts[3]["start"] + parts[3]["size"] == img.stat().st_size // 512


def test_boot_partition(built):
    _, _, img, _ = built
    at = f"{img}@@{offset(img, 1)}"
    listing = run(["mdir", "-i", at, "-b", "::"], check=True).stdout
    names = {Path(line.strip()).name for line in listing.splitlines()}
    assert {"config.txt", "hats.txt", "appliance.toml", "appliance-release.txt", "slot-a"} <= names, listing
    assert not names & {"cmdline.txt", "tryboot.txt", "slot-b"}, listing
    # Slot A's kernel, overlays and command line are in slot-a/, which config.txt names.
    slot = {Path(line.strip()).name for line in run(["mdir", "-i", at, "-b", "::slot-a"], check=True).stdout.splitlines()}
    assert {"vmlinuz", "cmdline.txt", "overlays"} <= slot, slot
    config_txt = run(["mtype", "-i", at, "::config.txt"], check=True).stdout
    assert config_txt.splitlines()[-2:] == ["[all]", "os_prefix=slot-a/"]
    cmdline = run(["mtype", "-i", at, "::slot-a/cmdline.txt"], check=True).stdout
    words = cmdline.split()
    assert len(cmdline.strip().splitlines()) == 1
    assert "root=PARTUUID=4170706c-02" in words and "ro" in words and "rw" not in words
    assert "rauc.slot=A" in words and "panic=10" in words
    assert "console=tty0" in words and not any(w.startswith(("init=", "root=LABEL")) for w in words)
    settings = tomllib.loads(run(["mtype", "-i", at, "::appliance.toml"], check=True).stdout)
    assert settings == {"hostname": "appliance", "wifi_country": "", "wifi_ssid": "",
                        "wifi_psk": "", "wifi_mode": "client", "wifi_channel": "",
                        "hat": "none", "ssh_key": "",
                        "admin": {"password_hash": "", "token": ""}}
    label = run(["mlabel", "-i", at, "-s", "::"], check=True).stdout
    assert "BOOTFS" in label.upper()


def test_file_systems_are_clean(built, tmp_path):
    _, _, img, _ = built
    for n in (2, 3):
        p = run(["e2fsck", "-fn", f"{img}?offset={offset(img, n)}"])
        assert p.returncode == 0, p.stdout + p.stderr
    boot = partitions(img)[1][0]
    with open(img, "rb") as f:
        f.seek(boot["start"] * 512)
        (tmp_path / "boot.vfat").write_bytes(f.read(boot["size"] * 512))
    p = run(["fsck.vfat", "-n", tmp_path / "boot.vfat"])
    assert p.returncode == 0, p.stdout + p.stderr


def test_root_file_system_contents(built):
    _, _, img, _ = built
    assert "volume name:   rootfs" in debugfs(img, 2, "stats").lower()
    unit = cat(img, 2, "/etc/systemd/system/appliance.service")
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=appliance",
                 "SupplementaryGroups=audio", "LimitRTPRIO=", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "--port 80"):
        assert line in unit
    assert "-> /etc/systemd/system/appliance.service" in debugfs(
        img, 2, "stat /etc/systemd/system/multi-user.target.wants/appliance.service") or \
        "appliance.service" in debugfs(img, 2, "ls -l /etc/systemd/system/multi-user.target.wants")
    wants = debugfs(img, 2, "ls /etc/systemd/system/multi-user.target.wants")
    assert "ssh.service" not in wants, "SSH stays off until a key is given"
    assert "appliance-firstboot.service" in debugfs(img, 2, "ls /etc/systemd/system/sysinit.target.wants")
    assert "appliance-setup-code.path" in debugfs(img, 2, "ls /etc/systemd/system/paths.target.wants")
    assert "PathChanged=/var/lib/appliance/setup-code.txt" in cat(
        img, 2, "/etc/systemd/system/appliance-setup-code.path")
    assert "--setup-code" in cat(img, 2, "/etc/systemd/system/appliance-setup-code.service")
    assert "_http._tcp" in cat(img, 2, "/etc/avahi/services/appliance.service")
    journald = cat(img, 2, "/etc/systemd/journald.conf.d/appliance.conf")
    assert "Storage=volatile" in journald and "RuntimeMaxUse=" in journald
    fstab = cat(img, 2, "/etc/fstab")
    # No line for /: it is slot A or B, mounted read-only by the kernel.
    assert not any(line.split()[1:2] == ["/"] for line in fstab.splitlines() if not line.startswith("#"))
    assert "/var/lib/appliance" in fstab and "data=journal" in fstab
    # A slow udev (an emulated boot on a busy machine) is no reason for
    # emergency mode: the boot's devices get minutes, not systemd's 90 s.
    mounts = [line.split() for line in fstab.splitlines() if line.startswith("PARTUUID=")]
    assert len(mounts) == 2 and all("x-systemd.device-timeout=5min" in m[3] for m in mounts)
    assert "DefaultDeviceTimeoutSec=5min" in cat(img, 2, "/etc/systemd/system.conf.d/appliance-devices.conf")
    # ... and the initramfs waits as long for the root (a local-block script)
    mode, uid, _, _ = stat(img, 2, "/etc/initramfs-tools/scripts/local-block/appliance-root-wait")
    assert (mode & 0o7777, uid) == (0o755, 0)
    # Emergency mode waits for no one: it reboots (a trial slot falls back).
    emergency = cat(img, 2, "/etc/systemd/system/emergency.service.d/appliance-reboot.conf")
    assert "ExecStart=\n" in emergency and "systemctl reboot" in emergency
    # Units that only load kernel modules nothing on the box uses.
    for unit in ("modprobe@drm.service", "sys-fs-fuse-connections.mount", "sys-kernel-config.mount",
                 "systemd-pstore.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount"):
        assert "/dev/null" in debugfs(img, 2, f"stat /etc/systemd/system/{unit}"), unit
    # Generators with nothing to find on the box (PID 1 gives them all 90 s).
    for g in ("ssh", "gpt-auto", "hibernate-resume", "tpm2", "system-update", "run", "rc-local", "sysv"):
        assert "/dev/null" in debugfs(img, 2, f"stat /etc/systemd/system-generators/systemd-{g}-generator"), g
    assert "fstab" not in debugfs(img, 2, "ls /etc/systemd/system-generators")
    # A PID 1 that cannot start reboots instead of freezing.
    assert "CrashReboot=yes" in cat(img, 2, "/etc/systemd/system.conf.d/appliance-crash.conf")
    assert cat(img, 2, "/etc/machine-id") == ""
    assert "ssh_host_" not in debugfs(img, 2, "ls /etc/ssh")
    assert cat(img, 2, "/etc/appliance-base").strip() == "debian"
    mode, uid, gid, _ = stat(img, 2, "/etc/sudoers.d/admin")
    assert (mode & 0o7777, uid, gid) == (0o440, 0, 0)
    mode, uid, _, _ = stat(img, 2, "/usr/local/sbin/appliance-firstboot")
    assert (mode & 0o7777, uid) == (0o755, 0)
    mode, uid, gid, _ = stat(img, 2, "/var/lib/appliance")
    assert (mode & 0o7777, uid, gid) == (0o750, 999, 995)
    # Reproducible: every time is the pinned date.
    _, _, _, out = stat(img, 2, "/usr/bin/hello")
    assert "2025" in re.search(r"mtime:.*", out).group(0)


def test_state_partition(built):
    _, _, img, _ = built
    stats = debugfs(img, 3, "stats")
    assert "volume name:   appdata" in stats.lower()
    assert "9a5d0a7e-3e0b-4d6c-8a51-6170706c0003" in stats
    mode, uid, gid, _ = stat(img, 3, "/")
    assert (uid, gid) == (999, 995)


def test_release_files(built):
    _, _, img, _ = built
    out = img.parent
    data = img.read_bytes()
    assert lzma.decompress((out / "appliance-0.1.0.img.xz").read_bytes()) == data
    p = run(["sha256sum", "-c", "appliance-0.1.0.sha256"], check=False, env={})
    sums = (out / "appliance-0.1.0.sha256").read_text()
    assert hashlib.sha256(data).hexdigest() + "  appliance-0.1.0.img" in sums
    assert "appliance-0.1.0.img.xz" in sums
    bmap = (out / "appliance-0.1.0.bmap").read_text()
    assert int(re.search(r"<ImageSize>\s*(\d+)", bmap).group(1)) == len(data)
    mapped = int(re.search(r"<MappedBlocksCount>\s*(\d+)", bmap).group(1))
    total = int(re.search(r"<BlocksCount>\s*(\d+)", bmap).group(1))
    assert 0 < mapped < total, "the image is sparse; the bmap skips the holes"
    packages = (out / "appliance-0.1.0.packages").read_text()
    assert "stub-base\t1.0-1\tarm64" in packages
    del p


# a second whole assembly: with the slow suite, which builds the real image
@pytest.mark.slow
def test_reproducible(built):
    tmp, stub, img, _ = built
    # The same signing certificate (the first build made a development pair).
    keys = tmp / "work-out/rauc-dev"
    p, again = build(tmp, stub, "--set", f"RAUC_CERT={keys / 'cert.pem'}",
                     "--set", f"RAUC_KEY={keys / 'key.pem'}", name="again")
    assert p.returncode == 0, p.stderr
    assert "development key" not in p.stderr
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(img.read_bytes()).hexdigest()
    assert (again.parent / "appliance-0.1.0.img.xz").read_bytes() == \
        (img.parent / "appliance-0.1.0.img.xz").read_bytes()


@pytest.mark.parametrize("config, message", [
    ("FOO=1\n", "unknown key 'FOO'"),
    ("HOSTNAME=Bad_Name\n", "bad value for 'HOSTNAME'"),
    ("BOOT_SIZE_MB=12\n", "bad value for 'BOOT_SIZE_MB'"),
    ("APP=whatever\n", "bad value for 'APP'"),
    ("just words\n", "expected KEY=value"),
])
def test_config_is_checked_before_anything_runs(tmp_path, config, message):
    cfg = tmp_path / "my.conf"
    cfg.write_text("# a comment\n\n" + config)
    p = run([BUILD, "--config", cfg, "--stub-root", tmp_path / "nothing",
             "--set", f"OUT_DIR={tmp_path}/o", "--set", f"WORK_DIR={tmp_path}/w"])
    assert p.returncode != 0
    assert message in p.stderr
    if "FOO" in message:
        assert f"{cfg}:3" in p.stderr, "the error names the file and line"
    assert not (tmp_path / "w").exists()


def test_unknown_set_key_and_option(tmp_path):
    p = run([BUILD, "--set", "NOPE=1"])
    assert p.returncode != 0 and "unknown key 'NOPE'" in p.stderr
    p = run([BUILD, "--frobnicate"])
    assert p.returncode != 0 and "unknown option '--frobnicate'" in p.stderr


def test_root_too_small_is_an_error(tmp_path):
    stub = make_stub_root(tmp_path / "stub")
    (stub / "big").write_bytes(b"\1" * (3 * MIB))
    p, _ = build(tmp_path, stub, "--set", "ROOT_SIZE_MB=2")
    assert p.returncode != 0
    assert "ROOT_SIZE_MB" in p.stderr


def test_base_image_is_unpacked_and_customised_without_mounts(built, tmp_path):
    """--base: a Raspberry Pi OS-like image (here: our stub image, with the
    first-boot resize in its cmdline.txt) unpacked with mcopy and debugfs
    rdump and rebuilt with our layout. The chroot step is skipped: it needs
    the real arm64 root. debugfs keeps owners only for root."""
    assert os.geteuid() == 0, "the --base path (debugfs rdump with owners) needs root"
    _, _, img, _ = built
    base = tmp_path / "raspios-lite.img"
    base.write_bytes(img.read_bytes())
    at = f"{base}@@{offset(base, 1)}"
    cmdline = run(["mtype", "-i", at, "::slot-a/cmdline.txt"], check=True).stdout.strip()
    (tmp_path / "cmdline.txt").write_text(cmdline.replace(" ro ", " rw ") +
                                          " init=/usr/lib/raspberrypi-sys-mods/firstboot\n")
    run(["mcopy", "-o", "-i", at, tmp_path / "cmdline.txt", "::cmdline.txt"], check=True)
    p = run([BUILD, "--base", base, "--set", f"OUT_DIR={tmp_path}/out", "--set", f"WORK_DIR={tmp_path}/w",
             *SMALL], env={"BASE_SKIP_CHROOT": "1"})
    assert p.returncode == 0, p.stderr
    assert "11 base" in p.stderr and "debugfs rdump" in p.stderr
    new = tmp_path / "out/appliance-0.1.0.img"
    assert [q["type"] for q in partitions(new)[1]] == ["c", "83", "83", "83"]
    assert run(["e2fsck", "-fn", f"{new}?offset={offset(new, 2)}"]).returncode == 0
    words = run(["mtype", "-i", f"{new}@@{offset(new, 1)}", "::slot-a/cmdline.txt"], check=True).stdout.split()
    assert "ro" in words and not any(w.startswith("init=") for w in words)
    assert cat(new, 2, "/etc/appliance-base").strip() == "raspios"
    assert "/dev/null" in debugfs(new, 2, "stat /etc/systemd/system/userconfig.service")
    assert "/dev/null" in debugfs(new, 2, "stat /etc/systemd/system/sshswitch.service")
    mode, uid, gid, _ = stat(new, 2, "/var/lib/appliance")
    assert (uid, gid) == (999, 995), "owners survive rdump"
    p = run([BUILD, "--base", tmp_path / "missing.img"])
    assert p.returncode != 0 and "no such file" in p.stderr
