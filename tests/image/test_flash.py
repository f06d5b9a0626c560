"""flash.sh against fake card readers (FLASH_SYSROOT, read by lsblk
--sysroot) and plain files: every refusal, every way of writing, the
read-back, and every first-boot option."""
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

from image_helpers import FLASH, REPO, FakeSys, run

sys.path.insert(0, str(REPO))
from appliance.passwords import verify_password  # noqa: E402

GB = 1000 ** 3
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5Zm9ydGVzdHNvbmx5MTIzNDU2Nzg5MA test@laptop"


@pytest.fixture(scope="module")
def release(stub_build):
    """A small real image from the build, with its .xz, .bmap and .sha256."""
    return stub_build[2].parent


def only(release, tmp_path, *names):
    """A directory holding only some of the release files (e.g. no .bmap)."""
    d = tmp_path / "dl"
    d.mkdir(exist_ok=True)
    for n in names:
        shutil.copy(release / n, d / n)
    return d


IMG = "appliance-0.1.0.img"
XZ = "appliance-0.1.0.img.xz"
BMAP = "appliance-0.1.0.bmap"
SUMS = "appliance-0.1.0.sha256"


@pytest.fixture
def sysroot(tmp_path):
    """A machine: system SSD with / on it, a card reader with a 1 GB card,
    and every kind of disk flash.sh must refuse."""
    fs = FakeSys(tmp_path / "sysroot")
    fs.add_disk("sda", 500 * GB, bus="ata", model="Samsung SSD 860", vendor="ATA", partitions=2, node=None)
    fs.mount("sda2", "/", "8:2", "ext4")
    fs.add_disk("sdb", 1 * GB, partitions=1)                        # the card
    fs.add_disk("sdc", 1 * GB, partitions=1)                        # a card, mounted
    fs.mount("sdc1", "/media/me/bootfs", "8:33")
    fs.add_disk("sdd", 2000 * GB, bus="ata", model="WD Red", vendor="ATA", node=None)  # fixed, unmounted
    fs.add_disk("sde", 1 * GB, ro=True, node=None)                 # write-protected
    fs.add_disk("sdf", 0, node=None)                                # reader, no card
    fs.add_disk("sdg", 500 * GB, model="Expansion HDD", vendor="Seagate", node="file")  # big USB disk
    fs.add_disk("mmcblk0", 1 * GB, bus="mmc", removable=True, model="SD32G", vendor="")
    fs.add_disk("sdh", 50 * 1000 ** 2)                                 # too small a card
    fs.add_disk("loop0", 1 * GB, bus="virtual", node=None)
    fs.add_disk("sr0", 1 * GB, bus="ata", removable=True, scsi_type=5, model="DVD-RW", node=None)
    fs.add_disk("zram0", 1 * GB, bus="virtual", node=None)
    fs.add_disk("ram0", 16 * 1000 ** 2, bus="virtual", node=None)
    return fs


def flash(sysroot, *args, env=None, input=None):
    e = {"FLASH_SYSROOT": str(sysroot.root)} if sysroot else {}
    e.update(env or {})
    return run([FLASH, *args], env=e, input=input)


def head(path, n):
    with open(path, "rb") as f:
        return f.read(n)


def untouched(path, n=1 << 20):
    return head(path, n) == b"\0" * n


def settings_on(target):
    t = run(["sfdisk", "-J", target], check=True).stdout
    start = json.loads(t)["partitiontable"]["partitions"][0]["start"] * 512
    at = f"{target}@@{start}"
    return (tomllib.loads(run(["mtype", "-i", at, "::appliance.toml"], check=True).stdout),
            run(["mtype", "-i", at, "::config.txt"], check=True).stdout)


# --- listing ---------------------------------------------------------------------

def test_list_offers_only_card_readers(sysroot):
    p = flash(sysroot, "--list")
    assert p.returncode == 0, p.stderr
    offered = [line.split()[0] for line in p.stdout.splitlines()[1:]]
    assert sorted(offered) == ["/dev/mmcblk0", "/dev/sdb", "/dev/sdc", "/dev/sdg", "/dev/sdh"]
    assert "Generic SD/MMC Reader" in p.stdout and "1.0 GB" in p.stdout
    assert "/media/me/bootfs" in p.stdout, "mounted cards are shown with their mount points"
    for name, why in [("sda", "holds the running system"), ("sdd", "is neither removable nor hot-pluggable"),
                      ("sde", "is read-only"), ("sdf", "has no medium"), ("loop0", "is a loop device"),
                      ("sr0", "is an optical drive"), ("zram0", "is a zram"), ("ram0", "is a RAM disk")]:
        assert f"not offered: /dev/{name} {why}" in p.stderr, p.stderr


# --- refusals ----------------------------------------------------------------------

@pytest.mark.parametrize("device, why", [
    ("sda", "/dev/sda holds the running system (/ is mounted from it)"),
    ("/dev/sdd", "/dev/sdd is neither removable nor hot-pluggable"),
    ("sde", "/dev/sde is read-only"),
    ("sdf", "/dev/sdf has no medium"),
    ("loop0", "/dev/loop0 is a loop device"),
    ("sr0", "/dev/sr0 is an optical drive"),
    ("zram0", "/dev/zram0 is a zram"),
    ("ram0", "/dev/ram0 is a RAM disk"),
    ("sdb1", "/dev/sdb1 is a partition of /dev/sdb: give the whole disk"),
    ("sdz", "sdz is not a block device this system knows"),
    ("sdc", "/dev/sdc has mounted file systems (/media/me/bootfs): close them, or use --unmount"),
    ("sdg", "over the 128 GB limit for a card"),
    ("sdh", "is larger than /dev/sdh (50.0 MB)"),
])
def test_refusals_say_why_and_write_nothing(sysroot, release, device, why):
    p = flash(sysroot, "--yes", release / IMG, device)
    assert p.returncode == 2, p.stderr
    assert "refusing: " + why in p.stderr or why in p.stderr, p.stderr
    for n in ("sdb", "sdc", "sdg", "sdh", "mmcblk0"):
        assert untouched(sysroot.root / "dev" / n)


def test_plain_file_needs_allow_file(sysroot, release, tmp_path):
    target = tmp_path / "card.img"
    p = flash(sysroot, "--yes", release / IMG, target)
    assert p.returncode == 2
    assert "is not a disk under /dev; to write into a plain file, say --allow-file" in p.stderr
    assert not target.exists()
    p = flash(None, release / IMG, tmp_path)
    assert p.returncode == 2 and "--allow-file" in p.stderr
    p = flash(None, "--allow-file", release / IMG, tmp_path)
    assert p.returncode == 2 and "exists and is not a plain file" in p.stderr


def test_no_terminal_no_yes_is_refused(sysroot, release):
    p = flash(sysroot, release / IMG, "sdb", input="sdb\n")
    assert p.returncode == 2
    assert "no terminal to confirm on" in p.stderr
    assert untouched(sysroot.root / "dev/sdb")


def test_bad_arguments(sysroot, release, tmp_path):
    assert flash(sysroot, "--frob").returncode == 1
    assert flash(sysroot, release / IMG).returncode == 1
    (tmp_path / "x.iso").write_bytes(b"1")
    p = flash(sysroot, "--yes", tmp_path / "x.iso", "sdb")
    assert p.returncode == 1 and "expected a .img or .img.xz" in p.stderr
    p = flash(sysroot, "--yes", tmp_path / "missing.img", "sdb")
    assert p.returncode == 1 and "not found" in p.stderr


# --- typed confirmation (in a pseudo-terminal) ---------------------------------------

def in_pty(sysroot, args, answers, env=None):
    master, slave = os.openpty()
    e = {**os.environ, "FLASH_SYSROOT": str(sysroot.root), "PATH": os.environ["PATH"] + ":/usr/sbin:/sbin"}
    e.update(env or {})
    p = subprocess.Popen([str(FLASH), *map(str, args)], stdin=slave, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=e)
    os.close(slave)
    err = b""
    deadline = time.monotonic() + 60
    for answer in answers:
        while b"continue: " not in err and b"sure it is the card: " not in err:
            r, _, _ = select.select([p.stderr], [], [], max(0.0, deadline - time.monotonic()))
            assert r, f"no prompt: {err!r}"
            chunk = os.read(p.stderr.fileno(), 4096)
            assert chunk, f"no prompt: {err!r}"
            err += chunk
        os.write(master, answer.encode() + b"\n")
        prompt_seen, err = err, b""
    out, rest = p.communicate(timeout=60)
    os.close(master)
    return p.returncode, (prompt_seen + err + rest).decode()


def test_typed_confirmation_names_model_and_size(sysroot, release):
    code, err = in_pty(sysroot, [release / IMG, "sdb"], ["yes"])
    assert code == 2 and "not confirmed (typed 'yes')" in err
    assert untouched(sysroot.root / "dev/sdb")
    code, err = in_pty(sysroot, [release / IMG, "sdb"], ["sdb"])
    assert code == 0, err
    assert "ERASES everything on" in err and "Generic SD/MMC Reader, 1.0 GB" in err
    assert head(sysroot.root / "dev/sdb", 1 << 20) == head(release / IMG, 1 << 20)


def test_large_disk_needs_a_second_confirmation(sysroot, release):
    code, err = in_pty(sysroot, [release / IMG, "sdg"], ["no"])
    assert code == 2 and "larger than an SD card usually is" in err and "not confirmed" in err
    code, err = in_pty(sysroot, [release / IMG, "sdg"], ["large", "sdg"])
    assert code == 0, err
    assert "Seagate Expansion HDD, 500.0 GB" in err
    p = flash(sysroot, "--yes", "--allow-large", "--no-verify", release / IMG, "sdg")
    assert p.returncode == 0, p.stderr
    p = flash(sysroot, "--yes", "--size-limit", "1000", "--no-verify", release / IMG, "sdg")
    assert p.returncode == 0, p.stderr


# --- writing -------------------------------------------------------------------------

def card_holds(target, image_bytes):
    return head(target, len(image_bytes)) == image_bytes


@pytest.mark.parametrize("files, image, env", [
    ((IMG,), IMG, {}),
    ((IMG, SUMS), IMG, {}),
    ((XZ,), XZ, {}),
    ((XZ, SUMS), XZ, {}),
    ((IMG, BMAP), IMG, {}),
    ((XZ, BMAP), XZ, {}),
    ((IMG, BMAP), IMG, {"FLASH_NO_BMAPTOOL": "1"}),
    ((XZ, BMAP, SUMS), XZ, {"FLASH_NO_BMAPTOOL": "1"}),
], ids=["img", "img+sha256", "xz", "xz+sha256", "bmaptool", "bmaptool-xz", "own-bmap", "own-bmap-xz"])
def test_write_verify(sysroot, release, tmp_path, files, image, env):
    d = only(release, tmp_path, *files)
    target = sysroot.root / "dev/sdb"
    with open(target, "r+b") as f:  # an old card full of junk
        f.write(b"\xa5" * (4 << 20))
    p = flash(sysroot, "--yes", d / image, "/dev/sdb", env=env)
    assert p.returncode == 0, p.stderr
    assert "verified" in p.stderr
    if BMAP in files:
        assert "bmap" in p.stderr
        with_bmaptool = "FLASH_NO_BMAPTOOL" not in env
        assert ("with bmaptool" in p.stderr) == with_bmaptool
    img = (release / IMG).read_bytes()
    if BMAP in files:
        # Unmapped blocks keep the old junk; what is mapped must make sound
        # file systems and a readable boot partition.
        root = json.loads(run(["sfdisk", "-J", target], check=True).stdout)["partitiontable"]["partitions"][1]
        fsck = run(["e2fsck", "-fn", f"{target}?offset={root['start'] * 512}"])
        assert fsck.returncode == 0, fsck.stdout
        assert settings_on(target)[0]["hostname"] == "appliance"
        assert head(target, 512) == img[:512]
    else:
        assert card_holds(target, img)
        assert target.stat().st_size == 1 * GB, "a card does not change size"
    assert p.stderr.count("refusing") == 0


def test_write_to_plain_file_when_asked(release, tmp_path):
    target = tmp_path / "card.img"
    p = flash(None, "--allow-file", release / XZ, target)
    assert p.returncode == 0, p.stderr
    assert target.read_bytes() == (release / IMG).read_bytes()


def test_unmount_when_asked(sysroot, release, tmp_path):
    log = tmp_path / "umount.log"
    fake = tmp_path / "fake-umount"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    p = flash(sysroot, "--yes", "--unmount", release / IMG, "sdc", env={"FLASH_UMOUNT": str(fake)})
    assert p.returncode == 0, p.stderr
    assert log.read_text() == "/media/me/bootfs\n"
    assert card_holds(sysroot.root / "dev/sdc", (release / IMG).read_bytes())


# --- corrupt images and faulty cards --------------------------------------------------

def corrupt(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupt_image_caught_by_checksum_before_writing(sysroot, release, tmp_path):
    d = only(release, tmp_path, IMG, SUMS)
    corrupt(d / IMG, 5 << 20)
    p = flash(sysroot, "--yes", d / IMG, "sdb")
    assert p.returncode == 1
    assert "image is corrupt: its sha256 is" in p.stderr and "download it again" in p.stderr
    assert untouched(sysroot.root / "dev/sdb")


def test_corrupt_xz_caught(sysroot, release, tmp_path):
    d = only(release, tmp_path, XZ)
    corrupt(d / XZ, (d / XZ).stat().st_size // 2)
    p = flash(sysroot, "--yes", d / XZ, "sdb")
    assert p.returncode == 1
    assert "image is corrupt" in p.stderr


@pytest.mark.parametrize("env, why", [
    ({"FLASH_NO_BMAPTOOL": "1"}, "do not match the bmap's checksum"),
    ({}, "bmaptool copy failed"),
])
def test_corrupt_image_caught_by_bmap(sysroot, release, tmp_path, env, why):
    d = only(release, tmp_path, IMG, BMAP)
    bmap = (d / BMAP).read_text()
    first = re.search(r"<Range chksum=\"[0-9a-f]+\">\s*(\d+)", bmap).group(1)
    corrupt(d / IMG, int(first) * 4096 + 100)
    p = flash(sysroot, "--yes", d / IMG, "sdb", env=env)
    assert p.returncode == 1
    assert why in p.stderr, p.stderr


@pytest.mark.parametrize("files, image, env", [
    ((IMG,), IMG, {}),
    ((XZ,), XZ, {}),
    ((IMG, BMAP), IMG, {}),
    ((IMG, BMAP), IMG, {"FLASH_NO_BMAPTOOL": "1"}),
], ids=["img", "xz", "bmaptool", "own-bmap"])
def test_faulty_card_caught_by_read_back(sysroot, release, tmp_path, files, image, env):
    d = only(release, tmp_path, *files)
    # Byte 450 is in the partition table: mapped in every bmap.
    p = flash(sysroot, "--yes", d / image, "sdb", env={"FLASH_TEST_DAMAGE_AT": "450", **env})
    assert p.returncode == 1
    assert "VERIFY FAILED" in p.stderr, p.stderr
    p = flash(sysroot, "--yes", "--no-verify", d / image, "sdb", env={"FLASH_TEST_DAMAGE_AT": "450", **env})
    assert p.returncode == 0 and "verif" not in p.stderr


def test_corrupt_bmap_file_refused(sysroot, release, tmp_path):
    d = only(release, tmp_path, IMG, BMAP)
    (d / BMAP).write_text((d / BMAP).read_text().replace("<BlockSize> 4096", "<BlockSize> 4097"))
    p = flash(sysroot, "--yes", d / IMG, "sdb", env={"FLASH_NO_BMAPTOOL": "1"})
    assert p.returncode == 1
    assert "is corrupt (its own checksum does not match)" in p.stderr


# --- first-boot settings --------------------------------------------------------------

def test_every_setting_is_written(sysroot, release, tmp_path):
    keyfile = tmp_path / "id_ed25519.pub"
    keyfile.write_text(KEY + "\n")
    p = flash(sysroot, "--yes", release / XZ, "sdb",
              "--hostname", "studio-2", "--wifi-ssid", 'Caf\u00e9 "5G" \\ net', "--wifi-psk", "pass word 1",
              "--wifi-country", "de", "--wifi-mode", "hotspot", "--wifi-channel", "11",
              "--hat", "none", "--token", "s3cr3t-t0ken", "--ssh-key", keyfile)
    assert p.returncode == 0, p.stderr
    settings, config = settings_on(sysroot.root / "dev/sdb")
    assert settings == {"hostname": "studio-2", "wifi_country": "DE", "wifi_ssid": 'Caf\u00e9 "5G" \\ net',
                        "wifi_psk": "pass word 1", "wifi_mode": "hotspot", "wifi_channel": "11",
                        "hat": "none", "ssh_key": KEY,
                        "admin": {"password_hash": "", "token": "s3cr3t-t0ken"}}
    assert "appliance hat" not in config, "no HAT: no overlay block"
    assert "settings written" in p.stderr


def test_settings_only_changes_one_key_and_keeps_the_rest(sysroot, release, tmp_path):
    target = tmp_path / "card.img"
    shutil.copy(release / IMG, target)
    p = flash(None, "--allow-file", "--settings-only", target, "--hostname", "one")
    assert p.returncode == 0, p.stderr
    p = flash(None, "--allow-file", "--settings-only", target, "--token", "tok",
              "--ssh-key", KEY + "\n" + KEY.replace("test@laptop", "second@pc"))
    assert p.returncode == 0, p.stderr
    settings, _ = settings_on(target)
    assert settings["hostname"] == "one" and settings["admin"]["token"] == "tok"
    assert settings["ssh_key"].splitlines() == [KEY, KEY.replace("test@laptop", "second@pc")]
    assert "# First-boot settings" in run(
        ["mtype", "-i", f"{target}@@{4 << 20}", "::appliance.toml"]).stdout, "comments are kept"
    # On a card reader too, with the typed confirmation skipped by --yes.
    assert flash(sysroot, "--yes", release / IMG, "sdb").returncode == 0
    p = flash(sysroot, "--yes", "--settings-only", "sdb", "--wifi-ssid", "home", "--wifi-country", "GB")
    assert p.returncode == 0, p.stderr
    assert settings_on(sysroot.root / "dev/sdb")[0]["wifi_ssid"] == "home"


def test_hat_needs_its_base(release, tmp_path):
    target = tmp_path / "card.img"
    shutil.copy(release / IMG, target)
    p = flash(None, "--allow-file", "--settings-only", target, "--hat", "hifiberry-dacplusadc")
    assert p.returncode == 1
    assert "does not work on this image's base (debian)" in p.stderr and "raspios" in p.stderr
    p = flash(None, "--allow-file", "--settings-only", target, "--hat", "no-such-hat")
    assert p.returncode == 1 and "is not known to this image" in p.stderr and "hifiberry-dacplusadc" in p.stderr


def test_hat_sets_overlay_on_raspios_base(release, tmp_path):
    target = tmp_path / "card.img"
    shutil.copy(release / IMG, target)
    (tmp_path / "rel.txt").write_text("appliance image 0.1.0 (base raspios)\n")
    run(["mcopy", "-o", "-i", f"{target}@@{4 << 20}", tmp_path / "rel.txt", "::appliance-release.txt"], check=True)
    p = flash(None, "--allow-file", "--settings-only", target, "--hat", "hifiberry-dacplusadc")
    assert p.returncode == 0, p.stderr
    settings, config = settings_on(target)
    assert settings["hat"] == "hifiberry-dacplusadc"
    assert config.splitlines()[-4:] == [
        "# >>> appliance hat (managed by flash.sh and appliance-firstboot)", "[all]",
        "dtoverlay=hifiberry-dacplusadc", "# <<< appliance hat"]
    p = flash(None, "--allow-file", "--settings-only", target, "--hat", "iqaudio-codec")
    _, config = settings_on(target)
    assert config.count("appliance hat (managed") == 1 and "dtoverlay=iqaudio-codec" in config
    assert "hifiberry" not in config
    p = flash(None, "--allow-file", "--settings-only", target, "--hat", "none")
    _, config = settings_on(target)
    assert "appliance hat" not in config and config.startswith("arm_64bit=1")


@pytest.mark.parametrize("args, why", [
    (["--hostname", "Bad_Name"], "--hostname 'Bad_Name': use 1-63 of a-z"),
    (["--hostname", "-x"], "--hostname '-x'"),
    (["--wifi-ssid", "net"], "--wifi-ssid: needs --wifi-country"),
    (["--wifi-country", "GBR"], "--wifi-country 'GBR'"),
    (["--wifi-ssid", "x" * 33, "--wifi-country", "GB"], "longer than 32 characters"),
    (["--wifi-ssid", "\u00e9" * 17, "--wifi-country", "GB"], "longer than 32 bytes"),
    (["--wifi-psk", "12345678"], "--wifi-psk: needs --wifi-ssid"),
    (["--wifi-ssid", "n", "--wifi-country", "GB", "--wifi-psk", "short"], "8-63 printable"),
    (["--token", "has space"], "--token: use up to 256"),
    (["--token", 'q"uote'], "--token: use up to 256"),
    (["--hat", "Bad Hat"], "not a HAT name"),
    (["--ssh-key", "not a key"], "not an OpenSSH public key"),
    (["--ssh-key", "-----BEGIN OPENSSH PRIVATE KEY-----"], "that is a private key"),
    # values that would add lines to appliance.toml or config.txt
    (["--wifi-ssid", 'x"\n[admin]\npassword_hash = "', "--wifi-country", "GB"],
     "--wifi-ssid 'x\"\\n[admin]"),
    (["--hostname", "x\ndtoverlay=evil"], "--hostname 'x\\ndtoverlay=evil'"),
    (["--hat", "none\ndtoverlay=evil"], "--hat 'none\\ndtoverlay=evil'"),
    (["--ssh-key", KEY + "\rcommand=x"], "--ssh-key"),
    (["--token", "a\u2028b"], "--token: use up to 256"),
    (["--hostname", "a" * 100_000], "is longer than 63 characters"),

    (["--hostname"], "--hostname needs a value"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_settings_refused_before_writing(sysroot, release, args, why):
    p = flash(sysroot, "--yes", release / IMG, "sdb", *args)
    assert p.returncode == 1
    assert why in p.stderr, p.stderr
    assert untouched(sysroot.root / "dev/sdb")


# --- the admin password --------------------------------------------------------------

def admin_hash(target):
    return settings_on(target)[0]["admin"]["password_hash"]


def test_admin_password_from_the_environment_or_stdin_only_its_hash(release, tmp_path):
    target = tmp_path / "card.img"
    shutil.copy(release / IMG, target)
    p = flash(None, "--allow-file", "--settings-only", target, "--admin-password",
              env={"FLASH_ADMIN_PASSWORD": "correct horse battery"})
    assert p.returncode == 0, p.stderr
    stored = admin_hash(target)
    assert stored.startswith("scrypt$") and verify_password("correct horse battery", stored)
    card = target.read_bytes()
    assert b"correct horse" not in card, "the clear password is nowhere on the card"
    assert "correct horse" not in p.stdout + p.stderr
    p = flash(None, "--allow-file", "--settings-only", target, "--admin-password",
              input="another good one\n")
    assert p.returncode == 0, p.stderr
    assert verify_password("another good one", admin_hash(target))
    assert b"another good one" not in target.read_bytes()
    # A second run changes only the hash; the other settings stay.
    assert settings_on(target)[0]["hostname"] == "appliance"


@pytest.mark.parametrize("password, why", [
    ("short", "--admin-password: the password must be 8 to 256 characters long"),
    ("tab\tinside it", "--admin-password: the password may not contain control characters"),
    ("x" * 257, "--admin-password: the password must be 8 to 256 characters long"),
    ("", "the password must be 8 to 256 characters long"),
])
def test_bad_admin_password_refused_before_writing(sysroot, release, password, why):
    p = flash(sysroot, "--yes", release / IMG, "sdb", "--admin-password",
              env={"FLASH_ADMIN_PASSWORD": password})
    assert p.returncode == 1
    assert why in p.stderr, p.stderr
    assert password not in p.stderr or not password
    assert untouched(sysroot.root / "dev/sdb")


def test_admin_password_asked_twice_on_the_terminal(sysroot, release, tmp_path):
    target = tmp_path / "card.img"
    shutil.copy(release / IMG, target)
    master, slave = os.openpty()
    p = subprocess.Popen([str(FLASH), "--allow-file", "--settings-only", str(target), "--admin-password"],
                         stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PATH": os.environ["PATH"] + ":/usr/sbin:/sbin"})
    os.close(slave)
    err = b""
    for prompt, answer in ((b"admin password for the appliance: ", b"typed secret 1"),
                           (b"the same again: ", b"typed secret 1")):
        while prompt not in err:
            r, _, _ = select.select([p.stderr], [], [], 60)
            assert r, f"no prompt: {err!r}"
            chunk = os.read(p.stderr.fileno(), 4096)
            assert chunk, f"no prompt: {err!r}"
            err += chunk
        os.write(master, answer + b"\n")
    _, rest = p.communicate(timeout=60)
    os.close(master)
    assert p.returncode == 0, (err + rest).decode()
    assert verify_password("typed secret 1", admin_hash(target))


def test_admin_password_is_never_taken_from_argv(release, tmp_path):
    target = tmp_path / "card.img"
    shutil.copy(release / IMG, target)
    p = flash(None, "--allow-file", "--settings-only", "--admin-password", "hunter2hunter2", target,
              input="")
    assert p.returncode == 1
    assert admin_hash(target) == ""


def test_settings_only_needs_a_setting_and_an_appliance_card(sysroot, tmp_path):
    p = flash(sysroot, "--yes", "--settings-only", "sdb")
    assert p.returncode == 1 and "without any setting" in p.stderr
    p = flash(sysroot, "--yes", "--settings-only", "sdb", "--hostname", "x")
    assert p.returncode == 1 and "no partition table" in p.stderr


def test_help_lists_every_option():
    p = run([FLASH, "--help"])
    assert p.returncode == 0
    for opt in ("--list", "--hostname", "--wifi-ssid", "--wifi-psk", "--wifi-country", "--hat", "--token",
                "--ssh-key", "--admin-password", "FLASH_ADMIN_PASSWORD", "--yes", "--unmount", "--allow-file", "--size-limit", "FLASH_SYSROOT"):
        assert opt in p.stdout
