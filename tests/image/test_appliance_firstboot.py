"""appliance-firstboot (runs on the appliance at boot) applied to a
directory tree with --root: what each setting in appliance.toml changes, and
that a bad file changes nothing and says why next to itself. It loads the
settings' schema (appliance/firstboot.py) from the app's venv in the tree,
where the image installs it."""
import hashlib
import os
import shutil
import sys
import tomllib

import pytest

from image_helpers import REPO, run

sys.path.insert(0, str(REPO))
from appliance.passwords import hash_password, verify_password  # noqa: E402

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
    # The app's venv, as step 20 installs it: the schema is appliance/firstboot.py.
    pkg = r / "opt/appliance/venv/lib/python3.11/site-packages/appliance"
    pkg.mkdir(parents=True)
    for name in ("__init__.py", "firstboot.py", "passwords.py"):
        shutil.copy(REPO / "appliance" / name, pkg / name)
    return r


def settings(tree, **kv):
    """Top-level keys; admin_token and admin_password_hash go into [admin]."""
    top = [f'{k} = "{v}"' for k, v in kv.items() if not k.startswith("admin_")]
    admin = [f'{k[6:]} = "{v}"' for k, v in kv.items() if k.startswith("admin_")]
    text = "\n".join(top + (["[admin]", *admin] if admin else []))
    (tree / "boot/firmware/appliance.toml").write_text(text + "\n")


def firstboot(tree):
    p = run(["python3", FIRSTBOOT, "--root", tree])
    assert p.returncode == 0, p.stderr
    return p.stdout


def config(tree):
    return tomllib.loads((tree / "var/lib/appliance/config.toml").read_text())


def test_defaults_give_a_working_configuration(tree):
    out = firstboot(tree)
    assert config(tree) == {"name": "appliance", "state_dir": "/var/lib/appliance",
                            "server": {"host": "0.0.0.0", "port": 80, "https_port": 443},
                            "admin": {"token": "", "password_hash": "",
                                      "setup_code_file": "/var/lib/appliance/setup-code.txt"}}
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
             hat="none", admin_token="t0ken", ssh_key=KEY)
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
    assert config(tree)["admin"]["token"] == "t0ken" and config(tree)["name"] == "studio"
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
    text = nm.read_text()
    assert "ssid=66;117;101;114;111;\n" in text and nm.stat().st_mode & 0o777 == 0o600
    assert "psk=geheim123\n" in text


HOTSPOT_LINK = "etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/appliance-hotspot.service"


def test_hotspot_mode_replaces_the_client_and_goes_again(tree):
    settings(tree, wifi_country="gb", wifi_ssid="Home Net", wifi_psk="correct horse")
    firstboot(tree)
    wpa = tree / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
    assert wpa.exists()
    settings(tree, wifi_country="gb", wifi_ssid="Listen here", wifi_psk="correct horse",
             wifi_mode="hotspot", wifi_channel="11")
    out = firstboot(tree)
    assert "hotspot 'Listen here' in GB, channel 11, WPA2/WPA3, at 10.42.0.1" in out
    assert not wpa.exists(), "wlan0 is the access point, not a client"
    assert not (tree / "etc/systemd/system/multi-user.target.wants/wpa_supplicant@wlan0.service").exists()
    hdir = tree / "etc/appliance/hotspot"
    assert sorted(p.name for p in hdir.iterdir()) \
        == ["dnsmasq.conf", "hostapd-sae.conf", "hostapd.conf", "hotspot.nft"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in hdir.iterdir())
    hostapd = (hdir / "hostapd.conf").read_text()
    assert f"ssid2={'Listen here'.encode().hex()}\n" in hostapd and "channel=11\n" in hostapd
    assert "correct horse" not in hostapd
    assert os.readlink(tree / HOTSPOT_LINK) == "/etc/systemd/system/appliance-hotspot.service"
    # The app sends other hosts' requests (captive-portal probes) to the listen page.
    assert config(tree)["server"]["captive_redirect"] == "http://10.42.0.1/"
    # ...and prints a Wi-Fi join QR code with the hotspot's name and passphrase
    assert (config(tree)["server"]["wifi_ssid"], config(tree)["server"]["wifi_passphrase"]) \
        == ("Listen here", "correct horse")
    network = (tree / "etc/systemd/network/24-appliance-hotspot.network").read_text()
    assert "Name=wlan0\n" in network and "Address=10.42.0.1/24\n" in network
    # The unit the link names is in the image, and reads the files written here.
    unit = (REPO / "image/files/common/etc/systemd/system/appliance-hotspot.service").read_text()
    assert "ExecStart=/usr/lib/appliance/hotspot-hostapd\n" in unit
    assert "/etc/appliance/hotspot/hotspot.nft" in unit
    assert "/etc/appliance/hotspot" in (REPO / "image/files/common/usr/lib/appliance/hotspot-hostapd").read_text()
    # a hex key instead of a passphrase: WPA2 only, the old SAE file goes
    settings(tree, wifi_country="gb", wifi_ssid="Listen here", wifi_psk="ab" * 32,
             wifi_mode="hotspot")
    assert "WPA2, at 10.42.0.1" in firstboot(tree)
    assert not (hdir / "hostapd-sae.conf").exists()
    dns_unit = (REPO / "image/files/common/etc/systemd/system/appliance-hotspot-dns.service").read_text()
    assert "--conf-file=/etc/appliance/hotspot/dnsmasq.conf" in dns_unit
    # Back to Ethernet only: every trace of the hotspot goes.
    settings(tree, hostname="appliance")
    assert "wifi: hotspot removed" in firstboot(tree)
    assert not hdir.exists() or not any(hdir.iterdir())
    assert not (tree / HOTSPOT_LINK).exists()
    assert not (tree / "etc/systemd/network/24-appliance-hotspot.network").exists()
    assert "captive_redirect" not in config(tree)["server"]
    assert "wifi_passphrase" not in config(tree)["server"]


def test_hotspot_on_networkmanager_base_unmanages_wlan0(tree):
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/sbin/NetworkManager").write_text("")
    settings(tree, wifi_country="DE", wifi_ssid="Saal", wifi_mode="hotspot")
    firstboot(tree)
    assert (tree / "etc/NetworkManager/conf.d/appliance-hotspot.conf").read_text() \
        == "[keyfile]\nunmanaged-devices=interface-name:wlan0\n"
    assert not (tree / "etc/NetworkManager/system-connections/appliance-wifi.nmconnection").exists()
    assert "wpa=" not in (tree / "etc/appliance/hotspot/hostapd.conf").read_text(), "open network"


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
    ('hostname = "x"\ncolour = "red"\n', "colour: unknown key"),
    ('hostname = "Not Valid"\n', "hostname 'Not Valid'"),
    ('wifi_ssid = "x"\n', "wifi_ssid: needs wifi_country"),
    ('wifi_ssid = "x"\nwifi_country = "GB"\nwifi_psk = "short"\n', "wifi_psk: must be 8-63"),
    ('hat = "hifiberry-dacplusadc"\n', "does not work on this image's base (debian)"),
    ('hat = "nope"\n', "hat 'nope': is not known"),
    ('ssh_key = "hello"\n', "not an OpenSSH public key"),
    ('[admin]\ntoken = 5\n', "admin.token 5: must be a string"),
    ('token = "old-style"\n', "token: unknown key"),
    ('[admin]\npassword_hash = "hunter2hunter2"\n', "admin.password_hash: not a password hash"),
    ('hostname = "unterminated\n', "not applied"),
    ('hostname = "a\\nb"\n', "hostname 'a\\nb'"),
    ('wifi_ssid = "x\\n[admin]"\nwifi_country = "GB"\n', "control characters"),
    ('hostname = "' + "a" * 100_000 + '"\n', "larger than 64 KiB"),
    ('admin = "x"\n', "must be a table"),
])
def test_bad_file_changes_nothing_and_says_why(tree, content, why):
    settings(tree, hostname="first", admin_token="keep")
    firstboot(tree)
    (tree / "boot/firmware/appliance.toml").write_text(content)
    out = firstboot(tree)
    assert why in out
    error = (tree / "boot/firmware/appliance-error.txt").read_text()
    assert why in error and "Fix appliance.toml" in error
    assert (tree / "etc/hostname").read_text() == "first\n"
    assert config(tree)["admin"]["token"] == "keep"
    assert "hunter2" not in out and "hunter2" not in error, "a clear password is never echoed"
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


def test_admin_password_hash_reaches_the_config_and_no_password_does(tree):
    stored = hash_password("correct horse battery")
    settings(tree, hostname="hall", admin_password_hash=stored, admin_token="s3cret-token")
    out = firstboot(tree)
    cfg = tree / "var/lib/appliance/config.toml"
    admin = config(tree)["admin"]
    assert admin["password_hash"] == stored and admin["token"] == "s3cret-token"
    assert verify_password("correct horse battery", admin["password_hash"])
    assert "correct horse" not in cfg.read_text() and "correct horse" not in out
    assert cfg.stat().st_mode & 0o777 == 0o640, "only root and the appliance read the hash"


def test_setup_code_is_mirrored_to_the_boot_partition(tree):
    code = tree / "var/lib/appliance/setup-code.txt"
    on_boot = tree / "boot/firmware/appliance-setup-code.txt"
    p = run(["python3", FIRSTBOOT, "--root", tree, "--setup-code"])
    assert p.returncode == 0 and not on_boot.exists()
    code.write_text("123-456\n")
    p = run(["python3", FIRSTBOOT, "--root", tree, "--setup-code"])
    assert p.returncode == 0, p.stderr
    assert on_boot.read_text() == "123-456\n" and "written" in p.stdout
    code.unlink()  # the password was chosen
    p = run(["python3", FIRSTBOOT, "--root", tree, "--setup-code"])
    assert not on_boot.exists() and "removed" in p.stdout


def test_factory_reset_file_wipes_the_state_and_first_boot_applies_again(tree):
    """A factory-reset file next to appliance.toml: the state is wiped
    before anything reads it, the marker goes, and the settings are applied
    again as on a first boot (config.toml comes back); a stale copy of an
    old setup code on the card goes with the state's."""
    settings(tree, hostname="hall")
    firstboot(tree)
    state, boot = tree / "var/lib/appliance", tree / "boot/firmware"
    (state / "state.json").write_text('{"version": 1}')
    (state / "admin-password").write_text("scrypt$...")
    (state / "tls").mkdir()
    (state / "tls/key.pem").write_text("key")
    (state / "setup-code.txt").write_text("OLD-CODE\n")
    (state / "rauc").mkdir()
    (state / "rauc/central.raucs").write_text("x")
    (boot / "appliance-setup-code.txt").write_text("OLD-CODE\n")
    (boot / "factory-reset").write_text("")
    out = firstboot(tree)
    assert "factory-reset: done" in out and "config.toml: written" in out
    assert not (boot / "factory-reset").exists()
    assert sorted(p.name for p in state.iterdir()) == [".settings-applied", "config.toml", "rauc"]
    assert config(tree)["name"] == "hall"
    assert not (boot / "appliance-setup-code.txt").exists()
    assert firstboot(tree) == ""   # the next boot: nothing to do


def test_without_the_app_it_says_so(tree):
    shutil.rmtree(tree / "opt")
    p = run(["python3", FIRSTBOOT, "--root", tree])
    assert p.returncode != 0 and "is the appliance installed?" in p.stderr


def test_the_appliance_reads_the_config_first_boot_writes(tree):
    from appliance.config import load_config
    stored = hash_password("correct horse battery")
    settings(tree, hostname="hall", admin_password_hash=stored, admin_token="tok")
    firstboot(tree)
    c = load_config(tree / "var/lib/appliance/config.toml")
    assert c.name == "hall" and c.server.port == 80
    assert (c.admin.token, c.admin.password_hash) == ("tok", stored)
    assert c.admin.setup_code_file == "/var/lib/appliance/setup-code.txt"


def test_the_appliance_reads_the_hotspot_config_first_boot_writes(tree):
    from appliance.config import load_config
    settings(tree, wifi_mode="hotspot", wifi_ssid="Saal", wifi_country="DE")
    firstboot(tree)
    c = load_config(tree / "var/lib/appliance/config.toml")
    assert c.server.captive_redirect == "http://10.42.0.1/"
    assert (c.server.wifi_ssid, c.server.wifi_passphrase) == ("", ""), "open: no join code"
    settings(tree, wifi_mode="hotspot", wifi_ssid="Saal A; 1:2", wifi_country="DE",
             wifi_psk="p;a:s,s=w#rd")
    firstboot(tree)
    c = load_config(tree / "var/lib/appliance/config.toml")
    assert (c.server.wifi_ssid, c.server.wifi_passphrase) == ("Saal A; 1:2", "p;a:s,s=w#rd")
    assert (c.server.port, c.server.https_port) == (80, 443)


HOTSPOT_HOSTAPD = REPO / "image/files/common/usr/lib/appliance/hotspot-hostapd"


@pytest.mark.parametrize("iw_says, sae", [
    ("\tDevice supports SAE with AUTHENTICATE command\n", True),          # mac80211 (soft-MAC)
    ("\tSupported extended features:\n\t\t* [ SAE_OFFLOAD_AP ]: ...\n", True),  # full-MAC firmware
    ("\tSupported extended features:\n\t\t* [ SAE_OFFLOAD ]: station only\n", False),
    (None, False),                                                       # no radio
])
def test_hotspot_uses_wpa3_only_where_the_radio_can(tmp_path, iw_says, sae):
    hdir, net, bin_ = tmp_path / "hotspot", tmp_path / "net", tmp_path / "bin"
    for d in (hdir, bin_):
        d.mkdir()
    for name in ("hostapd.conf", "hostapd-sae.conf"):
        (hdir / name).write_text("")
    if iw_says is not None:
        (net / "wlan0/phy80211").mkdir(parents=True)
        (net / "wlan0/phy80211/name").write_text("phy0\n")
    (bin_ / "iw").write_text(f"#!/bin/sh\n[ \"$1 $2 $3\" = \"phy phy0 info\" ] && printf '%s' '{iw_says}'\n")
    (bin_ / "hostapd").write_text("#!/bin/sh\necho \"hostapd $*\"\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOTSPOT_DIR": str(hdir), "SYS_NET": str(net),
           "IW": str(bin_ / "iw"), "HOSTAPD": str(bin_ / "hostapd")}
    p = run(["sh", HOTSPOT_HOSTAPD], env=env)
    assert p.returncode == 0, p.stderr
    conf = "hostapd-sae.conf" if sae else "hostapd.conf"
    assert f"hostapd {hdir / conf}\n" in p.stdout
    assert ("WPA2 and WPA3 (SAE)" in p.stdout) == sae, p.stdout
    (hdir / "hostapd-sae.conf").unlink()   # a hex key or an open network: WPA2 or open
    p = run(["sh", HOTSPOT_HOSTAPD], env=env)
    assert f"hostapd {hdir / 'hostapd.conf'}\n" in p.stdout
