"""appliance/firstboot.py: the one schema of the card's first-boot settings
(appliance.toml), its checks, the TOML and config.txt edits, and the command
line flash.sh runs. Every refusal names the field; no value can add a line to
appliance.toml, config.txt or any file written from them."""
import dataclasses
import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance import firstboot as fb
from appliance.passwords import hash_password, verify_password

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "appliance" / "firstboot.py"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5Zm9ydGVzdHNvbmx5MTIzNDU2Nzg5MA me@laptop"
HATS = fb.read_hats((REPO / "image/hats.tsv").read_text())
TEMPLATE = (REPO / "image/appliance.toml.template").read_text().replace("@HOSTNAME@", "appliance")


def refused(raw, field, *, hats=None, base=None):
    with pytest.raises(fb.SettingsError) as e:
        fb.validate(raw, hats, base)
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(field), str(e.value)
    return str(e.value)


def test_defaults():
    s = fb.validate({})
    assert s == fb.Settings()
    assert s.hostname == "appliance" and s.hat == "none" and s.ssh_keys == ()
    assert set(s.values()) == {f.name for f in fb.FIELDS}
    # the template on the card is exactly the defaults
    assert fb.validate(tomllib.loads(TEMPLATE), HATS, "debian") == s


def test_every_field_accepts_a_good_value():
    stored = hash_password("a good password")
    s = fb.validate({"hostname": "hall-2", "wifi_country": "gb", "wifi_ssid": 'Caf\u00e9 "5G" \\ net',
                     "wifi_psk": "pass word 1", "hat": "iqaudio-codec", "ssh_key": f"{KEY}\n\n{KEY}2\n",
                     "admin": {"token": "t0k-en", "password_hash": stored}}, HATS, "raspios")
    assert s.wifi_country == "GB"
    assert s.ssh_keys == (KEY, KEY + "2")
    assert s.admin_password_hash == stored and s.admin_token == "t0k-en"
    # dotted names work as well as tables (flash.sh gives dotted ones)
    assert fb.validate({"admin.token": "x"}).admin_token == "x"


FIELDS = [f.name for f in fb.FIELDS]


GOOD = {"hostname": "hall", "wifi_country": "GB", "wifi_ssid": "net", "wifi_psk": "passphrase",
        "hat": "none", "ssh_key": KEY, "admin.token": "tok",
        "admin.password_hash": hash_password("a good password")}


def put(field, value):
    """Good values everywhere but in ``field`` (so only that one can fail)."""
    raw = {**GOOD, field: value}
    assert fb.validate({**GOOD}), "the good values are good"
    return raw


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [
    "a\nb", "a\rb", "a\0b", "a\x1bb", "a\x7fb", "a\x85b", "a\u2028b", "a\u2029b", "a\u200eb",
    '"\n[admin]\npassword_hash = "', "x\ndtoverlay=evil",
], ids=repr)
def test_control_characters_and_injected_lines_refused_in_every_field(field, bad):
    if field == "ssh_key":
        bad = KEY + " " + bad   # in a key's comment (a newline separates keys: each must be one)
    message = refused(put(field, bad), field)
    assert "needs" not in message


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("size", [300, 70_000, 5_000_000])
def test_huge_values_refused_in_every_field(field, size):
    message = refused(put(field, "a" * size), field)
    assert len(message) < 400, "the message shows only the start of a huge value"


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [5, 1.5, True, ["x"], {"x": "y"}], ids=repr)
def test_non_strings_refused_in_every_field(field, bad):
    assert "must be a string" in refused(put(field, bad), field)


@pytest.mark.parametrize("raw, field, why", [
    ({"hostname": "Not_Valid"}, "hostname", "use 1-63 of a-z"),
    ({"hostname": "-x"}, "hostname", "use 1-63"),
    ({"hostname": "a" * 64}, "hostname", "longer than 63"),
    ({"hostname": 'a"b'}, "hostname", "use 1-63"),
    ({"hostname": "h\u00e9"}, "hostname", "use 1-63"),
    ({"wifi_country": "GBR"}, "wifi_country", "longer than 2"),
    ({"wifi_country": "1A"}, "wifi_country", "two-letter"),
    ({"wifi_ssid": "x"}, "wifi_ssid", "needs wifi_country"),
    ({"wifi_ssid": "\u00e9" * 17, "wifi_country": "GB"}, "wifi_ssid", "longer than 32 bytes"),
    ({"wifi_psk": "12345678"}, "wifi_psk", "needs wifi_ssid"),
    ({"wifi_psk": "short", "wifi_ssid": "n", "wifi_country": "GB"}, "wifi_psk", "8-63 printable"),
    ({"wifi_psk": "pass\u00e9word", "wifi_ssid": "n", "wifi_country": "GB"}, "wifi_psk", "8-63 printable"),
    ({"hat": "Bad Hat"}, "hat", "not a HAT name"),
    ({"hat": "../../etc"}, "hat", "not a HAT name"),
    ({"ssh_key": "hello"}, "ssh_key", "not an OpenSSH public key"),
    ({"ssh_key": 'command="rm -rf /" ' + KEY}, "ssh_key", "not an OpenSSH public key"),
    ({"ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "ssh_key", "private key"),
    ({"ssh_key": "\n".join([KEY] * 33)}, "ssh_key", "more than 32 keys"),
    ({"admin": {"token": "has space"}}, "admin.token", "use up to 256"),
    ({"admin": {"token": 'q"uote'}}, "admin.token", "use up to 256"),
    ({"admin": {"token": "back\\slash"}}, "admin.token", "use up to 256"),
    ({"admin": {"password_hash": "scrypt$1$1$1$AAAA$AAAA"}}, "admin.password_hash", "not a password hash"),
    ({"admin": {"password_hash": "scrypt$16384$8$1$c2FsdHNhbHQ=$" + "A" * 40 + "\n"}},
     "admin.password_hash", "not a password hash"),
    ({"colour": "red"}, "colour", "unknown key"),
    ({"admin": {"colour": "red"}}, "admin.colour", "unknown key"),
    ({"admin": "x"}, "admin", "must be a table"),
    ({"token": "old"}, "token", "unknown key"),
])
def test_bad_values_refused_naming_the_field(raw, field, why):
    assert why in refused(raw, field)


def test_secrets_are_never_echoed():
    for raw, secret in [({"admin": {"password_hash": "my clear password"}}, "my clear password"),
                        ({"wifi_psk": "\u00e9\u00e9secret\u00e9", "wifi_ssid": "n", "wifi_country": "GB"},
                         "secret"),
                        ({"admin": {"token": "secret with space"}}, "secret")]:
        with pytest.raises(fb.SettingsError) as e:
            fb.validate(raw)
        assert secret not in str(e.value)


def test_hat_must_be_known_and_work_on_the_base():
    assert "is not known to this image" in refused({"hat": "nope"}, "hat", hats=HATS)
    assert "hifiberry-dacplusadc" in refused({"hat": "nope"}, "hat", hats=HATS), "lists the known ones"
    message = refused({"hat": "hifiberry-dacplusadc"}, "hat", hats=HATS, base="debian")
    assert "does not work on this image's base (debian)" in message and "raspios" in message
    assert fb.validate({"hat": "hifiberry-dacplusadc"}, HATS, "raspios").hat == "hifiberry-dacplusadc"
    assert fb.validate({"hat": "none"}, HATS, "debian").hat == "none"


def test_errors_render_for_flash_sh_options():
    with pytest.raises(fb.SettingsError) as e:
        fb.validate({"wifi_ssid": "x"})
    assert e.value.render(fb.option_label) == \
        "--wifi-ssid: needs --wifi-country (Wi-Fi stays off without a country)"
    with pytest.raises(fb.SettingsError) as e:
        fb.validate({"admin": {"token": "a b"}})
    assert e.value.render(fb.option_label).startswith("--token: ")
    # a value that looks like a placeholder stays a value
    with pytest.raises(fb.SettingsError) as e:
        fb.validate({"hostname": "{wifi_ssid}"})
    assert "'{wifi_ssid}'" in e.value.render(fb.option_label)


# --- writing appliance.toml -------------------------------------------------------

@pytest.mark.parametrize("value", ['Caf\u00e9 "5G" \\ net', "'''", '"""', "\\u0041", "# not a comment",
                                   "x = 1", "[admin]", "\t tab", "\U0001f3b5"])
def test_toml_strings_read_back_as_written(value):
    text = fb.edit_settings(TEMPLATE, {"wifi_ssid": value})
    parsed = tomllib.loads(text)
    assert parsed["wifi_ssid"] == value
    assert set(parsed) == set(tomllib.loads(TEMPLATE)), "no key added or lost"
    assert parsed["admin"] == {"password_hash": "", "token": ""}


def test_toml_str_escapes_every_control_character():
    every = "".join(chr(c) for c in range(0x00, 0x250)) + "\u2028\u2029\u200e"
    assert tomllib.loads(f"v = {fb.toml_str(every)}")["v"] == every
    assert "\n" not in fb.toml_str(every) and "\r" not in fb.toml_str(every)


def test_edit_keeps_comments_and_order_and_finds_the_tables():
    stored = hash_password("a good password")
    text = fb.edit_settings(TEMPLATE, {"hostname": "studio", "admin.password_hash": stored,
                                       "admin.token": "tok"})
    assert text.splitlines()[0] == "# First-boot settings of the listening appliance."
    assert text.count("\n") == TEMPLATE.count("\n"), "replaced in place, line for line"
    parsed = tomllib.loads(text)
    assert parsed["hostname"] == "studio" and parsed["admin"] == {"password_hash": stored, "token": "tok"}
    assert text.index("[admin]") < text.index(stored)


@pytest.mark.parametrize("before", [
    "", "# only a comment\n", 'hostname = "x"\n', '[admin]\ntoken = "a"\n',
    'hostname = "x"\n\n[admin]\n# comment\n',
    'ssh_key = """\nssh-ed25519 AAAA a\nhostname = "fake"\n"""\n',   # a multi-line string
])
def test_edit_inserts_missing_keys_where_they_belong(before):
    changes = {"hostname": "h", "wifi_psk": "p", "admin.token": "t", "admin.password_hash": "x"}
    parsed = tomllib.loads(fb.edit_settings(before, changes))
    want = {**tomllib.loads(before), "hostname": "h", "wifi_psk": "p"}
    want["admin"] = {**tomllib.loads(before).get("admin", {}), "token": "t", "password_hash": "x"}
    assert parsed == want


# --- hats.txt and config.txt --------------------------------------------------------

def test_hats_file_of_the_image():
    assert HATS["none"].lines == () and set(HATS["none"].bases) == {"debian", "raspios"}
    assert HATS["hifiberry-dacplusadc"].lines == ("dtoverlay=hifiberry-dacplusadc",)


@pytest.mark.parametrize("line", [
    "evil\tdebian\tdtoverlay=x;[all]\tinjects a section",
    "evil\tdebian\tdtoverlay=x y\tspace",
    "evil\tdebian\tdtoverlay=\"x\"\tquotes",
    "evil\tdebian\tdtoverlay=x\textra\tcolumns",
    "Evil Name\tdebian\t\tbad name",
])
def test_hats_file_lines_are_checked(line):
    with pytest.raises(fb.SettingsError) as e:
        fb.read_hats("# header\n" + line + "\n")
    assert e.value.field == "hats.txt" and "line 2" in str(e.value)


def test_hat_overlay_block_added_replaced_removed():
    base = "arm_64bit=1\n# my own\ndtparam=audio=on\n\n"
    one = fb.set_hat_overlay(base, ["dtoverlay=hifiberry-dacplusadc"])
    assert one == ("arm_64bit=1\n# my own\ndtparam=audio=on\n\n" + fb.HAT_BEGIN +
                   "\n[all]\ndtoverlay=hifiberry-dacplusadc\n" + fb.HAT_END + "\n")
    two = fb.set_hat_overlay(one, ["dtoverlay=iqaudio-codec"])
    assert two.count(fb.HAT_BEGIN) == 1 and "hifiberry" not in two and "dtoverlay=iqaudio-codec" in two
    assert fb.set_hat_overlay(two, []) == "arm_64bit=1\n# my own\ndtparam=audio=on\n"
    assert fb.set_hat_overlay(fb.set_hat_overlay(two, []), []) == fb.set_hat_overlay(two, [])


def test_hat_overlay_keeps_an_unterminated_block_and_refuses_bad_lines():
    text = "a=1\n" + fb.HAT_BEGIN + "\nmine=1\n"
    assert "mine=1" in fb.set_hat_overlay(text, [])
    with pytest.raises(fb.SettingsError) as e:
        fb.set_hat_overlay("a=1\n", ["dtoverlay=x\n[pi4]"])
    assert e.value.field == "hat"


def test_card_base():
    assert fb.card_base("appliance image 0.1.0 (base raspios)\n") == "raspios"
    assert fb.card_base("") == "debian"


# --- the command line (what flash.sh runs) -------------------------------------------

def cli(*args, stdin=b""):
    # -S -I: no site-packages, no current directory: only the standard library
    return subprocess.run([sys.executable, "-S", "-I", str(MODULE), *map(str, args)], input=stdin,
                          capture_output=True, timeout=60)


def pairs(**kv):
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in kv.items())


def test_cli_check_runs_on_the_standard_library_alone():
    p = cli("check", stdin=pairs(hostname="ok", token="tok"))
    assert p.returncode == 0, p.stderr
    p = cli("check", stdin=pairs(hostname="Bad_Name"))
    assert p.returncode == 1
    assert p.stderr.decode().strip() == "--hostname 'Bad_Name': use 1-63 of a-z, 0-9 and '-' (not first or last)"
    p = cli("check", stdin=pairs(colour="red"))
    assert p.returncode == 1 and b"colour: not a setting flash.sh knows" in p.stderr
    p = cli("check", stdin=b"wifi_ssid=\xff\xfe\0")
    assert p.returncode == 1 and b"--wifi-ssid: is not UTF-8 text" in p.stderr
    assert cli().returncode == 2 and cli("frob").returncode == 2


def test_cli_reads_ssh_keys_from_a_file(tmp_path):
    f = tmp_path / "id.pub"
    f.write_text(f"# my key\n\n{KEY}\n")
    assert cli("check", stdin=pairs(ssh_key=f)).returncode == 0
    f.write_text("# nothing\n")
    p = cli("check", stdin=pairs(ssh_key=f))
    assert p.returncode == 1 and b"the file holds no key" in p.stderr


def test_cli_hash_password():
    p = cli("hash-password", stdin=b"a good password\n")
    assert p.returncode == 0, p.stderr
    assert verify_password("a good password", p.stdout.decode().strip())
    p = cli("hash-password", stdin=b"short")
    assert p.returncode == 1 and p.stderr.decode().strip() == (
        "--admin-password: the password must be 8 to 256 characters long")
    p = cli("hash-password", stdin=b"\xff" * 10)
    assert p.returncode == 1 and b"UTF-8" in p.stderr


def card_dir(tmp_path, base="debian"):
    d = tmp_path / "card"
    d.mkdir()
    (d / "appliance.toml").write_text(TEMPLATE)
    (d / "hats.txt").write_text((REPO / "image/hats.tsv").read_text())
    (d / "config.txt").write_text("arm_64bit=1\n")
    (d / "appliance-release.txt").write_text(f"appliance image 0.1.0 (base {base})\n")
    return d


def test_cli_card_edits_only_what_changed(tmp_path):
    d = card_dir(tmp_path, "raspios")
    stored = hash_password("a good password")
    p = cli("card", d, stdin=pairs(hostname="hall", wifi_country="de", admin_password_hash=stored))
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().split() == ["appliance.toml"]
    parsed = tomllib.loads((d / "appliance.toml").read_text())
    assert parsed["hostname"] == "hall" and parsed["wifi_country"] == "DE"
    assert parsed["admin"]["password_hash"] == stored
    p = cli("card", d, stdin=pairs(hat="pisound"))
    assert p.stdout.decode().split() == ["appliance.toml", "config.txt"]
    assert (d / "config.txt").read_text().endswith("dtoverlay=pisound\n" + fb.HAT_END + "\n")
    p = cli("card", d, stdin=pairs(hat="pisound"))
    assert p.returncode == 0 and p.stdout == b"", "nothing changed, nothing to write"


def test_cli_card_refuses_and_writes_nothing(tmp_path):
    d = card_dir(tmp_path)
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    for stdin, why in [(pairs(hat="pisound"), "does not work on this image's base (debian)"),
                       (pairs(hat="nope"), "--hat 'nope': is not known to this image"),
                       (pairs(wifi_ssid="x"), "--wifi-ssid: needs --wifi-country")]:
        p = cli("card", d, stdin=stdin)
        assert p.returncode == 1 and why in p.stderr.decode(), p.stderr
    (d / "appliance.toml").write_text('hostname = "x"\nbogus = 1\n')
    p = cli("card", d, stdin=pairs(hostname="y"))
    assert p.returncode == 1 and b"bogus: unknown key" in p.stderr
    (d / "appliance.toml").write_text("hostname = \n")
    p = cli("card", d, stdin=pairs(hostname="y"))
    assert p.returncode == 1 and b"appliance.toml: is not valid TOML" in p.stderr
    (d / "appliance.toml").write_bytes(before["appliance.toml"])
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    (d / "appliance.toml").unlink()
    p = cli("card", d, stdin=pairs(hostname="y"))
    assert p.returncode == 1 and b"not an appliance card" in p.stderr


# --- the hotspot (wifi_mode = "hotspot") ----------------------------------------------

HOTSPOT = {"wifi_mode": "hotspot", "wifi_ssid": "Listen here", "wifi_country": "gb",
           "wifi_psk": "a passphrase"}
HOSTAPD_KEYS = {"interface", "driver", "ctrl_interface", "ssid2", "utf8_ssid", "country_code",
                "ieee80211d", "hw_mode", "channel", "ieee80211n", "wmm_enabled", "auth_algs",
                "ignore_broadcast_ssid", "ap_isolate"}
WPA_KEYS = {"wpa", "wpa_key_mgmt", "rsn_pairwise", "wpa_psk"}


def conf_lines(text):
    """key=value lines of a hostapd/dnsmasq file, comments dropped."""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            out.append(line.split("=", 1) if "=" in line else [line, None])
    return out


def test_hotspot_settings_and_their_files():
    s = fb.validate(HOTSPOT)
    assert (s.wifi_mode, s.wifi_country, s.wifi_channel) == ("hotspot", "GB", "")
    files = fb.hotspot_files(s)
    assert set(files) == {"hostapd.conf", "hostapd-sae.conf", "dnsmasq.conf", "hotspot.nft"}
    hostapd = dict(conf_lines(files["hostapd.conf"]))
    assert set(hostapd) == HOSTAPD_KEYS | WPA_KEYS
    assert bytes.fromhex(hostapd["ssid2"]).decode() == "Listen here"
    assert (hostapd["interface"], hostapd["country_code"], hostapd["hw_mode"], hostapd["channel"]) \
        == ("wlan0", "GB", "g", "6")
    assert hostapd["wpa"] == "2" and hostapd["wpa_key_mgmt"] == "WPA-PSK"
    # the derived key (what `wpa_passphrase "Listen here" "a passphrase"` prints), never the passphrase
    assert hostapd["wpa_psk"] == hashlib.pbkdf2_hmac("sha1", b"a passphrase", b"Listen here",
                                                     4096, 32).hex()
    assert all("passphrase" not in text for name, text in files.items()
               if name != "hostapd-sae.conf")
    # WPA3-SAE needs the passphrase itself: the transition-mode file, used
    # where the radio can do SAE (image/.../hotspot-hostapd)
    sae = dict(conf_lines(files["hostapd-sae.conf"]))
    assert set(sae) == HOSTAPD_KEYS | {"wpa", "wpa_key_mgmt", "rsn_pairwise", "ieee80211w",
                                       "sae_require_mfp", "wpa_passphrase"}
    assert (sae["wpa"], sae["wpa_key_mgmt"], sae["ieee80211w"], sae["sae_require_mfp"]) \
        == ("2", "WPA-PSK SAE", "1", "1")
    assert sae["wpa_passphrase"] == "a passphrase"
    assert {k: v for k, v in sae.items() if k in HOSTAPD_KEYS} \
        == {k: v for k, v in hostapd.items() if k in HOSTAPD_KEYS}
    dns = conf_lines(files["dnsmasq.conf"])
    assert ["interface", "wlan0"] in dns and ["address", "/#/10.42.0.1"] in dns
    assert ["dhcp-range", "10.42.0.10,10.42.0.250,255.255.255.0,1h"] in dns
    assert ["dhcp-option", "option:router,10.42.0.1"] in dns
    assert ["no-resolv", None] in dns and ["bind-dynamic", None] in dns
    assert not any(k in ("except-interface", "listen-address", "server") for k, _ in dns)
    nft = files["hotspot.nft"]
    assert 'iifname "wlan0" ip daddr != 10.42.0.1 tcp dport 80 dnat ip to 10.42.0.1:80' in nft
    assert "th dport 53 dnat ip to 10.42.0.1:53" in nft


def test_hotspot_open_network_5ghz_and_hex_key():
    s = fb.validate({**HOTSPOT, "wifi_psk": "", "wifi_channel": "36"})
    assert "hostapd-sae.conf" not in fb.hotspot_files(s), "open: no WPA3 either"
    hostapd = dict(conf_lines(fb.hotspot_files(s)["hostapd.conf"]))
    assert set(hostapd) == HOSTAPD_KEYS, "open: no WPA lines"
    assert (hostapd["hw_mode"], hostapd["channel"]) == ("a", "36")
    key = "AB" * 32
    s = fb.validate({**HOTSPOT, "wifi_psk": key, "wifi_channel": "13"})
    hostapd = dict(conf_lines(fb.hotspot_files(s)["hostapd.conf"]))
    assert hostapd["wpa_psk"] == key.lower() and hostapd["channel"] == "13"
    assert "hostapd-sae.conf" not in fb.hotspot_files(s), "SAE needs a passphrase, not a key"


@pytest.mark.parametrize("psk", ["#starts with a hash", "ends with spaces  ", "a=b;c\\d\"e'f|g",
                                 " " * 8, "~" * 63])
def test_hotspot_passphrase_is_one_literal_line_for_sae(psk):
    """hostapd takes everything after the first '=' up to the newline as the
    value: any printable passphrase is one line, read back as itself."""
    files = fb.hotspot_files(fb.validate({**HOTSPOT, "wifi_psk": psk}))
    lines = [line for line in files["hostapd-sae.conf"].split("\n")
             if line.startswith("wpa_passphrase=")]
    assert lines == [f"wpa_passphrase={psk}"]
    assert files["hostapd-sae.conf"].count("\n") == len(conf_lines(files["hostapd-sae.conf"])) + 1


@pytest.mark.parametrize("ssid", ['"; rm -rf /', "a\\nchannel=1", "x' y", "ssid2=6161",
                                  "#", "\u00e9\u00e9 = \\", " lead and trail "])
def test_hotspot_ssid_only_ever_in_hex(ssid):
    s = fb.validate({**HOTSPOT, "wifi_ssid": ssid})
    files = fb.hotspot_files(s)
    lines = conf_lines(files["hostapd.conf"])
    assert {k for k, _ in lines} == HOSTAPD_KEYS | WPA_KEYS and len(lines) == len(HOSTAPD_KEYS | WPA_KEYS)
    assert bytes.fromhex(dict(lines)["ssid2"]).decode() == ssid
    assert all(ssid not in t for t in files.values() if len(ssid) > 2)
    sae = dict(conf_lines(files["hostapd-sae.conf"]))
    assert bytes.fromhex(sae["ssid2"]).decode() == ssid


@pytest.mark.parametrize("raw, field, why", [
    ({"wifi_mode": "ap"}, "wifi_mode", 'use "client"'),
    ({"wifi_mode": "Hotspot"}, "wifi_mode", 'use "client"'),
    ({"wifi_mode": "hotspot\n"}, "wifi_mode", 'use "client"'),
    ({"wifi_mode": "hotspot", "wifi_country": "GB"}, "wifi_mode", "needs wifi_ssid"),
    ({"wifi_mode": "hotspot", "wifi_ssid": "n"}, "wifi_ssid", "needs wifi_country"),
    ({"wifi_channel": "6", "wifi_ssid": "n", "wifi_country": "GB"}, "wifi_channel", "only for"),
    ({**HOTSPOT, "wifi_channel": "14"}, "wifi_channel", "use 1-13"),
    ({**HOTSPOT, "wifi_channel": "0"}, "wifi_channel", "use 1-13"),
    ({**HOTSPOT, "wifi_channel": "06"}, "wifi_channel", "use 1-13"),
    ({**HOTSPOT, "wifi_channel": "52"}, "wifi_channel", "use 1-13"),   # DFS: radar detection
    ({**HOTSPOT, "wifi_channel": "6\n"}, "wifi_channel", "use 1-13"),
    ({**HOTSPOT, "wifi_channel": "6;"}, "wifi_channel", "use 1-13"),
    ({**HOTSPOT, "wifi_channel": "1234"}, "wifi_channel", "longer than 3"),
    ({**HOTSPOT, "wifi_psk": "short"}, "wifi_psk", "8-63 printable"),
])
def test_bad_hotspot_settings_refused_naming_the_field(raw, field, why):
    assert why in refused(raw, field)


@pytest.mark.parametrize("change", [
    {"wifi_country": "G\nB"}, {"wifi_country": 'G"'}, {"wifi_channel": "6\ninterface=eth0"},
    {"wifi_channel": "1 "}, {"wifi_ssid": "a\nb"}, {"wifi_ssid": "a\0b"}, {"wifi_ssid": ""},
    {"wifi_psk": "pass\nword1"}, {"wifi_psk": "x" * 65}, {"wifi_mode": "client"},
], ids=repr)
def test_hotspot_files_refuse_settings_that_skipped_the_checks(change):
    # A Settings built by hand (not through validate) still cannot inject a line.
    s = dataclasses.replace(fb.validate(HOTSPOT), **change)
    with pytest.raises(fb.SettingsError) as e:
        fb.hotspot_files(s)
    assert e.value.field in change


def test_hotspot_options_for_flash_sh(tmp_path):
    d = card_dir(tmp_path)
    p = cli("card", d, stdin=pairs(wifi_mode="hotspot", wifi_ssid="Hall", wifi_country="de",
                                   wifi_channel="11"))
    assert p.returncode == 0, p.stderr
    parsed = tomllib.loads((d / "appliance.toml").read_text())
    assert (parsed["wifi_mode"], parsed["wifi_channel"], parsed["wifi_country"]) == ("hotspot", "11", "DE")
    p = cli("card", d, stdin=pairs(wifi_mode="ap"))
    assert p.returncode == 1 and b"--wifi-mode 'ap': use" in p.stderr
    p = cli("card", d, stdin=pairs(wifi_mode="client"))
    assert p.returncode == 1 and b"--wifi-channel: only for" in p.stderr


@pytest.mark.parametrize("ssid, psk, channel", [("Listen here", "a passphrase", ""),
                                                ('"; x=1 \\ #', "", "40")])
def test_hotspot_files_pass_the_tools_own_checks(tmp_path, ssid, psk, channel):
    """dnsmasq --test and nft -c read what we generate (Debian's nftables and
    dnsmasq-base; hostapd has no check mode, the QEMU test runs it)."""
    import shutil
    tools = {t: shutil.which(t) or shutil.which(f"/usr/sbin/{t}") for t in ("nft", "dnsmasq")}
    if not all(tools.values()):
        pytest.skip(f"needs nftables and dnsmasq-base installed: {tools}")
    files = fb.hotspot_files(fb.validate({**HOTSPOT, "wifi_ssid": ssid, "wifi_psk": psk,
                                          "wifi_channel": channel}))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    p = subprocess.run([tools["dnsmasq"], "--test", "-C", tmp_path / "dnsmasq.conf"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "syntax check OK" in p.stderr, p.stderr
    p = subprocess.run([tools["nft"], "-c", "-f", tmp_path / "hotspot.nft"], capture_output=True, text=True)
    if p.returncode != 0 and "Operation not permitted" in p.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert p.returncode == 0, p.stderr
