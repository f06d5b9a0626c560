"""Config: one frozen object from TOML; unknown keys are refused by name."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.config import (
    Config, ConfigError, IceServer, detect_sound_cards, load_config, parse_config,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_sound_card_are_a_tone_routed_to_main():
    config = load_config(None, cards=[])
    assert config.server.host == "0.0.0.0" and config.server.port == 8080
    assert [(s.id, s.spec.kind) for s in config.sources] == [("tone", "tone")]
    assert [(s.id, s.spec.kind) for s in config.sinks] == [("main", "opus")]
    assert [(r.spec.source_id, r.spec.sink_id) for r in config.routes] == [("tone", "main")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "x"  # type: ignore[misc]


def test_with_a_sound_card_the_default_captures_from_it(tmp_path):
    cards = tmp_path / "cards"
    cards.write_text(" 0 [sndrpihifiberry]: HifiberryDacp - snd_rpi_hifiberry_dacplus\n"
                     "                      snd_rpi_hifiberry_dacplus\n")
    assert detect_sound_cards(str(cards)) == ["sndrpihifiberry"]
    assert detect_sound_cards(str(tmp_path / "none")) == []
    config = load_config(None, cards=["sndrpihifiberry"])
    (source,) = config.sources
    assert source.spec.kind == "alsa" and source.spec.device == "plughw:CARD=sndrpihifiberry"
    assert source.spec.allow_absent
    assert config.routes[0].spec.sink_id == "main"


def test_a_full_file(tmp_path):
    config = load_config(write(tmp_path, '''
name = "Hall A"
state_dir = "~/state"
[server]
host = "127.0.0.1"
port = 9000
listen_pin = "1234"
ice_servers = ["stun:stun.example.net:3478", {url = "turn:t.example.net", username = "u", credential = "c"}]
max_listeners = 20
[admin]
token = "t"
[engine]
gather_timeout_ms = 500
ice_addresses = ["127.0.0.1"]
[[sources]]
id = "in"
name = "Line in"
kind = "alsa"
device = "hw:0"
channels = 2
[[sinks]]
id = "en"
kind = "opus"
bitrate = 64000
[[routes]]
id = "in-en"
source_id = "in"
sink_id = "en"
gain_db = -3
source_channel = 1
'''), cards=[])
    assert isinstance(config, Config) and config.name == "Hall A"
    assert config.state_dir == Path("~/state").expanduser()
    assert config.server.port == 9000 and config.admin.token == "t"
    assert config.server.listen_pin == "1234"
    assert config.server.ice_servers == (IceServer("stun:stun.example.net:3478"),
                                         IceServer("turn:t.example.net", "u", "c"))
    assert config.engine.gather_timeout_ms == 500
    assert config.engine.ice_addresses == ("127.0.0.1",)
    assert config.engine.stun_server == "stun://stun.example.net:3478"
    assert config.sources[0].name == "Line in" and config.sources[0].spec.device == "hw:0"
    assert config.sinks[0].name == "en" and config.sinks[0].spec.bitrate == 64000
    assert config.routes[0].spec.gain_db == -3.0 and config.routes[0].spec.source_channel == 1


@pytest.mark.parametrize("text, key", [
    ('nmae = "x"', "'nmae'"),
    ('[server]\nprot = 1', "'server.prot'"),
    ('[engine]\nsample_rte = 1', "'engine.sample_rte'"),
    ('[[sources]]\nid = "a"\nkind = "tone"\ntone = 3', "'sources[0].tone'"),
    ('[[routes]]\nid = "r"\nsource_id = "a"\nsink_id = "b"\ngian_db = 1', "'routes[0].gian_db'"),
    ('[server]\nice_servers = [{url = "stun:x", user = "u"}]', "'server.ice_servers[0].user'"),
])
def test_unknown_keys_are_refused_by_name(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), cards=[])
    assert "unknown" in str(error.value) and key in str(error.value)


@pytest.mark.parametrize("data, words", [
    ({"server": {"port": "80"}}, "server.port must be an integer"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"server": {"max_listeners": 0}}, "server.max_listeners"),
    ({"server": {"ice_servers": ["http://x"]}}, "stun:"),
    ({"engine": {"upnp": 1}}, "engine.upnp must be true or false"),
    ({"sources": [{"id": "a", "kind": "laser"}]}, "sources[0].kind must be one of"),
    ({"sources": [{"kind": "tone"}]}, "sources[0].id is missing"),
    ({"sources": [{"id": "a b", "kind": "tone"}]}, "sources[0].id"),
    ({"sources": [{"id": "a", "kind": "tone"}, {"id": "a", "kind": "tone"}]}, "used twice"),
    ({"sinks": [{"id": "route", "kind": "opus"}]}, "reserved"),
    ({"sources": [{"id": "a", "kind": "tone"}],
      "routes": [{"id": "r", "source_id": "a", "sink_id": "zz"}]}, "'zz' is not a sink"),
    ({"server": 3}, "server must be a table"),
    # infinite and absurd values are refused, not taken
    ({"server": {"session_timeout_s": float("inf")}}, "server.session_timeout_s must be a finite"),
    ({"server": {"answer_timeout_s": float("nan")}}, "server.answer_timeout_s"),
    ({"server": {"max_listeners": 2 ** 63 - 1}}, "server.max_listeners must be between"),
    ({"sources": [{"id": "a", "kind": "tone", "channels": 2 ** 40}]}, "sources[0].channels"),
    ({"sources": [{"id": "a", "kind": "tone", "channels": "2"}]},
     "sources[0].channels must be an integer"),
    ({"sinks": [{"id": "a", "kind": "opus", "frame_ms": 1e308}]}, "sinks[0].frame_ms must be one of"),
    ({"sources": [{"id": "a\n", "kind": "tone"}]}, "sources[0].id"),
    ({"sources": [{"id": "a", "kind": "file", "path": 5}]}, "sources[0].path must be a string"),
    ({"sources": [{"id": "a", "kind": "alsa", "device": "\ud800"}]}, "sources[0].device"),
    ({"sources": [{"id": "a", "kind": ["tone"]}]}, "sources[0].kind must be one of"),
    ({"name": "x\x1b[2J"}, "name must not contain control characters"),
    ({"admin": {"token": 5}}, "admin.token must be a string"),
    ({"server": {"captive_redirect": "javascript:alert(1)"}}, "server.captive_redirect"),
    ({"server": {"captive_redirect": "http://10.42.0.1/\r\nSet-Cookie: x=1"}},
     "server.captive_redirect"),
    ({"server": {"ice_servers": [{"url": "stun:x", "username": 'a"b'}]}}, "username"),
])
def test_bad_values_name_the_key(data, words):
    with pytest.raises(ConfigError) as error:
        parse_config(data, cards=[])
    assert words in str(error.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)
    (tmp_path / "latin1.toml").write_bytes('name = "Salle \xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.toml"):
        load_config(tmp_path / "latin1.toml")
    with pytest.raises(ConfigError, match="appliance.toml"):
        load_config(write(tmp_path, "name = "))


def test_https_and_hotspot_keys():
    server = parse_config({}, cards=[]).server
    assert (server.port, server.https_port, server.certfile, server.keyfile) == (8080, 8443, "", "")
    assert (server.wifi_ssid, server.wifi_passphrase) == ("", "")
    server = parse_config({"server": {"https_port": 443, "certfile": "/c.pem", "keyfile": "/k.pem",
                                      "wifi_ssid": "Hall; A", "wifi_passphrase": 'p:a"s,s;'}},
                          cards=[]).server
    assert (server.https_port, server.certfile, server.keyfile) == (443, "/c.pem", "/k.pem")
    assert (server.wifi_ssid, server.wifi_passphrase) == ("Hall; A", 'p:a"s,s;')
    for table, words in [({"https_port": 8080}, "https_port must differ"),
                         ({"https_port": 70000}, "server.https_port"),
                         ({"keyfile": "/k.pem"}, "go together"),
                         ({"wifi_passphrase": "short"}, "server.wifi_passphrase"),
                         ({"wifi_passphrase": "tab\there!"}, "server.wifi_passphrase"),
                         ({"wifi_ssid": "é" * 17}, "longer than 32 bytes")]:
        with pytest.raises(ConfigError, match=words):
            parse_config({"server": table}, cards=[])


def test_an_opus_sink_of_more_than_two_channels_is_refused_by_the_model_as_by_the_engine():
    """The model took 1..8 for every sink and the engine refused an Opus sink
    of 3 at start: a config that checked out did not start."""
    with pytest.raises(ConfigError) as refused:
        parse_config({"sinks": [{"id": "main", "kind": "opus", "channels": 3}]}, cards=[])
    assert "sinks[0].channels: an Opus sink has 1 or 2 channels" in str(refused.value)
    parse_config({"sinks": [{"id": "hat", "kind": "alsa", "channels": 8}]}, cards=[])


def test_publications_and_relays_are_read_and_checked_as_the_admin_api_checks_them(tmp_path):
    config = load_config(write(tmp_path, '''
[[publications]]
id = "to-b"
sink_id = "main"
url = "https://b.local:8443/api/whip/from_a"
token = "publish-token-of-b-0123456789"
relay_whep_url = "http://b.local/api/whep/hall"

[[relays]]
id = "j1"
url = "http://10.0.0.5:8088/janus"
channels = ["main"]
listen_url = "https://relay.example/janus"
'''), cards=[])
    (publication,), (relay,) = config.publications, config.relays
    assert publication.id == "to-b" and publication.spec.sink_id == "main"
    assert publication.spec.relay_whep_url == "http://b.local/api/whep/hall"
    assert relay.id == "j1" and relay.spec.channels == ("main",) and relay.spec.srtp == "auto"
    assert parse_config({}, cards=[]).publications == ()


PUBLICATION = {"id": "p", "sink_id": "main", "url": "https://b/api/whip/x"}
RELAY = {"id": "r", "url": "http://10.0.0.5:8088/janus", "channels": ["main"]}


@pytest.mark.parametrize("data, words", [
    ({"publications": {"id": "p"}}, "publications must be a list of tables"),
    ({"publications": ["p"]}, "publications[0] must be a table"),
    ({"publications": [{"sink_id": "main", "url": "https://b/"}]}, "publications[0].id is missing"),
    ({"publications": [{**PUBLICATION, "id": "../p"}]}, "publications[0].id"),
    ({"publications": [PUBLICATION, PUBLICATION]}, "publications[1].id 'p' is used twice"),
    ({"publications": [{**PUBLICATION, "url": "javascript:x"}]}, "publications[0].url"),
    ({"publications": [{**PUBLICATION, "bogus": 1}]}, "publications[0].bogus"),
    ({"publications": [{**PUBLICATION, "url": "http://192.0.2.7/w", "token": "t" * 32}]},
     "publications[0].url: a bearer token is sent only over https://"),
    ({"publications": [{**PUBLICATION, "sink_id": "nothing"}]},
     "publications[0].sink_id: 'nothing' is not a channel of this config"),
    ({"relays": [{**RELAY, "srtp": "maybe"}]}, "relays[0].srtp"),
    ({"relays": [{**RELAY, "channels": "main"}]}, "relays[0].channels"),
    ({"relays": [{**RELAY, "channels": ["main", "solo"]}]},
     "relays[0].channels: 'solo' is not a channel of this config"),
    ({"relays": [{**RELAY, "api_secret": "s"}]}, "relays[0].url: a secret is sent only over"),
    ({"relays": [{**RELAY, "url": "https://j/janus", "api_secret": "s",
                  "listen_url": "https://j/janus"}]}, "relays[0].listen_url"),
    ({"sinks": [{"id": "hat", "kind": "alsa", "device": "hw:0"}],
      "relays": [{**RELAY, "channels": ["hat"]}]}, "'hat' is not a channel"),
])
def test_bad_publications_and_relays_name_the_key(data, words):
    with pytest.raises(ConfigError) as error:
        parse_config(data, cards=[])
    assert words in str(error.value)
