"""appliance-firstboot (runs on the appliance at boot) applied to a
directory tree with --root: what each setting in appliance.toml changes, and
that a bad file changes nothing and says why next to itself."""
import hashlib
import os
import shutil
import tomllib
from pathlib import Path

import pytest

from image_helpers import REPO, run

FIRSTBOOT = REPO / "image/files/common/usr/local/sbin/appliance-firstboot"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5Zm9ydGVzdHNvbmx5MTIzNDU2Nzg5MA me@laptop"


@pytest.fixture
def tree(tmp_path):
    r = tmp_path / "root"
    boot = r / "boot/firmware"
    boot.mkdir(parents=True)
    shutil.copy(REPO / "image/hats.tsv", boot / "hats.txt")
    (boot / "config.txt").write_text("arm_64bit=1\n")
    template = (REPO / "image/appliance.toml.template").read_text().replace("@HOSTNAME@", "appliance")
    (boot / "appliance.toml").write_text(template)
    (r / "etc").mkdir()
    (r / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\nappliance:x:999:995::/var/lib/appliance:/x\n"
                                  "admin:x:1000:1000::/home/admin:/bin/bash\n")
    (r / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tappliance\n")
    (r / "etc/appliance-base").write_text("debian\n")
    (r / "var/lib/appliance").mkdir(parents=True)
    (r / "home/admin").mkdir(parents=True)
    return r


def settings(tree, **kv):
    lines = [f'{k} = "{v}"' for k, v in kv.items()]
    (tree / "boot/firmware/appliance.toml").write_text("\n".join(lines) + "\n")


def firstboot(tree):
    p = run(["python3", FIRSTBOOT, "--root", tree])
    assert p.returncode == 0, p.stderr
    return p.stdout


def config(tree):
    return tomllib.loads((tree / "var/lib/appliance/config.toml").read_text())


def test_defaults_give_a_working_configuration(tree):
    out = firstboot(tree)
    assert config(tree) == {"name": "appliance", "state_dir": "/var/lib/appliance",
                            "server": {"host": "0.0.0.0", "port": 80, "token": ""}}
    assert (tree / "etc/hostname").read_text() == "appliance\n"
    assert "ssh" not in out or "ssh: off" in out
    assert not (tree / "home/admin/.ssh/authorized_keys").exists()
    assert not (tree / "boot/firmware/appliance-error.txt").exists()
    # Nothing changed: the second boot writes nothing.
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}
    assert firstboot(tree) == ""
    assert before == {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}


def test_every_setting_applied(tree):
    settings(tree, hostname="studio", wifi_country="gb", wifi_ssid="Home Net", wifi_psk="correct horse",
             hat="none", token="t0ken", ssh_key=KEY)
    firstboot(tree)
    assert (tree / "etc/hostname").read_text() == "studio\n"
    hosts = (tree / "etc/hosts").read_text()
    assert "127.0.1.1\tstudio" in hosts and "\tappliance" not in hosts
    wpa = (tree / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    text = wpa.read_text()
    assert "country=GB" in text and f"ssid={'Home Net'.encode().hex()}" in text
    psk = hashlib.pbkdf2_hmac("sha1", b"correct horse", b"Home Net", 4096, 32).hex()
    assert f"psk={psk}" in text and "correct horse" not in text, "the passphrase is not stored"
    assert wpa.stat().st_mode & 0o777 == 0o600
    assert os.readlink(tree / "etc/systemd/system/multi-user.target.wants/wpa_supplicant@wlan0.service") \
        == "/lib/systemd/system/wpa_supplicant@.service"
    assert (tree / "home/admin/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert os.readlink(tree / "etc/systemd/system/multi-user.target.wants/ssh.service") \
        == "/lib/systemd/system/ssh.service"
    assert config(tree)["server"]["token"] == "t0ken" and config(tree)["name"] == "studio"
    # Taking the key and the Wi-Fi out again turns SSH and Wi-Fi off.
    settings(tree, hostname="studio")
    firstboot(tree)
    assert not (tree / "home/admin/.ssh/authorized_keys").exists()
    assert not (tree / "etc/systemd/system/multi-user.target.wants/ssh.service").exists()
    assert not wpa.exists()


def test_networkmanager_base_gets_a_connection_file(tree):
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/sbin/NetworkManager").write_text("")
    settings(tree, wifi_country="DE", wifi_ssid="Buero", wifi_psk="geheim123")
    firstboot(tree)
    nm = tree / "etc/NetworkManager/system-connections/appliance-wifi.nmconnection"
    assert "ssid=Buero" in nm.read_text() and nm.stat().st_mode & 0o777 == 0o600


def test_hat_overlay_on_raspios_base(tree):
    (tree / "etc/appliance-base").write_text("raspios\n")
    settings(tree, hat="iqaudio-codec")
    out = firstboot(tree)
    cfg = (tree / "boot/firmware/config.txt").read_text()
    assert cfg.endswith("[all]\ndtoverlay=iqaudio-codec\n# <<< appliance hat\n")
    assert "reboot" in out
    settings(tree, hat="none")
    firstboot(tree)
    assert (tree / "boot/firmware/config.txt").read_text() == "arm_64bit=1\n"


@pytest.mark.parametrize("content, why", [
    ('hostname = "x"\ncolour = "red"\n', "unknown key 'colour'"),
    ('hostname = "Not Valid"\n', "hostname 'Not Valid'"),
    ('wifi_ssid = "x"\n', "wifi_country is empty"),
    ('wifi_ssid = "x"\nwifi_country = "GB"\nwifi_psk = "short"\n', "wifi_psk must be 8-63"),
    ('hat = "hifiberry-dacplusadc"\n', "does not work on this image's base (debian)"),
    ('hat = "nope"\n', "hat 'nope' is not known"),
    ('ssh_key = "hello"\n', "not an OpenSSH public key"),
    ('token = 5\n', "'token' must be a string"),
    ('hostname = "unterminated\n', "not applied"),
])
def test_bad_file_changes_nothing_and_says_why(tree, content, why):
    settings(tree, hostname="first", token="keep")
    firstboot(tree)
    (tree / "boot/firmware/appliance.toml").write_text(content)
    out = firstboot(tree)
    assert why in out
    error = (tree / "boot/firmware/appliance-error.txt").read_text()
    assert why in error and "Fix appliance.toml" in error
    assert (tree / "etc/hostname").read_text() == "first\n"
    assert config(tree)["server"]["token"] == "keep"
    # Fixed: applied, and the error file goes away.
    settings(tree, hostname="second")
    firstboot(tree)
    assert (tree / "etc/hostname").read_text() == "second\n"
    assert not (tree / "boot/firmware/appliance-error.txt").exists()


def test_bad_file_on_first_boot_still_gives_a_configuration(tree):
    (tree / "boot/firmware/appliance.toml").write_text("bogus = 1\n")
    firstboot(tree)
    assert config(tree)["name"] == "appliance"
    assert (tree / "boot/firmware/appliance-error.txt").exists()
