"""What the listen page reads: channels with their language and description,
the page's language negotiation, the message catalogues, and the listen
feed's latency and source states."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.errors import InvalidError
from appliance.events import DeviceLost, DeviceRestored
from appliance.model import SinkSpec, build
from tests.web.conftest import make_config, open_server
from tests.web.test_events import next_event, open_events

I18N = Path(__file__).resolve().parents[2] / "appliance" / "static" / "i18n"


@pytest.mark.parametrize("tag", ["", "fr", "pt-BR", "zh-Hant-TW", "de-CH-1996", "es-419", "ar"])
def test_language_tags_that_are_well_formed(tag):
    assert build(SinkSpec, {"kind": "opus", "language": tag}, "sink").language == tag


@pytest.mark.parametrize("value", [
    "french", "fr_FR", "f", "fr-", "-fr", "fr--CA", "x" * 36, "fr\n", "fr CA", "../etc",
    "fr;rm -rf /", "plug:hw", "é", 12, None, True, ["fr"], {"fr": 1}])
def test_language_tags_that_are_refused(value):
    with pytest.raises(InvalidError, match="language"):
        build(SinkSpec, {"kind": "opus", "language": value}, "sink")


@pytest.mark.parametrize("value", ["x" * 201, "a\x00b", "bell\x07", "\ud800", 5])
def test_descriptions_that_are_refused(value):
    with pytest.raises(InvalidError, match="description"):
        build(SinkSpec, {"kind": "opus", "description": value}, "sink")


def _placeholders(text) -> set[str]:
    texts = text.values() if isinstance(text, dict) else [text]
    return {m for t in texts for m in re.findall(r"\{(\w+)\}", t)}


def test_every_catalogue_has_every_message_with_the_same_placeholders():
    english = json.loads((I18N / "en.json").read_text(encoding="utf-8"))
    files = sorted(I18N.glob("*.json"))
    assert {f.stem for f in files} >= {"en", "fr", "de", "es", "it", "nl", "pt", "ar"}
    for f in files:
        messages = json.loads(f.read_text(encoding="utf-8"))
        assert set(messages) == set(english), f.name
        assert messages["_dir"] in ("ltr", "rtl")
        for key, text in english.items():
            if key.startswith("_"):
                continue
            theirs = messages[key]
            assert isinstance(theirs, type(text)), (f.name, key)
            if isinstance(text, dict):
                assert "other" in theirs, (f.name, key)
            # a plural form may leave the number out ("one listener")
            assert _placeholders(theirs) <= _placeholders(text), (f.name, key)
            if not isinstance(text, dict):
                assert _placeholders(theirs) == _placeholders(text), (f.name, key)


DATA = {
    "sources": [{"id": "tone", "kind": "tone"}],
    "sinks": [{"id": "main", "name": "Floor", "kind": "opus"},
              {"id": "fr", "name": "Français", "kind": "opus", "language": "fr",
               "description": "Interprétation simultanée"},
              {"id": "empty", "name": "Empty", "kind": "opus", "language": "de"}],
    "routes": [{"id": "tone-main", "source_id": "tone", "sink_id": "main"},
               {"id": "tone-fr", "source_id": "tone", "sink_id": "fr"}],
}


@pytest.mark.trio
async def test_channels_carry_language_description_and_source_state(tmp_path):
    async with open_server(make_config(tmp_path, data=DATA), headers={}) as server:
        channels = (await server.client.get("/api/listen/channels")).json()
        by_id = {c["id"]: c for c in channels}
        assert [c["id"] for c in channels] == ["main", "fr", "empty"]
        assert by_id["fr"]["language"] == "fr"
        assert by_id["fr"]["description"] == "Interprétation simultanée"
        assert by_id["main"]["language"] == "" and by_id["main"]["description"] == ""
        assert by_id["main"]["source"] == "ok" and by_id["empty"]["source"] == "none"
        assert by_id["main"]["engine_latency_ms"] is None  # nothing sent yet

        # the feed: the engine's latency rides with the levels, device
        # changes become each channel's source state
        async with open_events(server.url, "/api/listen/events", headers={}) as events:
            assert events.status == 200
            for _ in range(40):
                levels = await next_event(events, "levels")
                if "latency_ms" in levels:
                    break
            assert set(levels["latency_ms"]) == {"main", "fr", "empty"}
            feed = server.service.feed
            feed._on_event(DeviceLost("source", "tone", "unplugged"))
            assert (await next_event(events, "device"))["sinks"] == {
                "main": "lost", "fr": "lost", "empty": "none"}
            lost = {c["id"]: c["source"] for c in
                    (await server.client.get("/api/listen/channels")).json()}
            assert lost == {"main": "lost", "fr": "lost", "empty": "none"}
            feed._on_event(DeviceRestored("source", "tone"))
            assert (await next_event(events, "device"))["sinks"]["main"] == "ok"


@pytest.mark.trio
async def test_language_and_description_change_on_a_live_channel(server):
    r = await server.client.patch("/api/sinks/main", json={"language": "nl",
                                                           "description": "Vloer"})
    assert r.status_code == 200, r.text
    assert (r.json()["language"], r.json()["description"]) == ("nl", "Vloer")
    for bad in ({"language": "dutch"}, {"description": "x" * 500}, {"language": None}):
        r = await server.client.patch("/api/sinks/main", json=bad)
        assert r.status_code == 400, (bad, r.text)


@pytest.mark.parametrize("accept, cookie, lang, direction", [
    ("de-CH, fr;q=0.5", None, "de", "ltr"),
    ("ar-EG,ar;q=0.9,en;q=0.8", None, "ar", "rtl"),
    ("pt-BR", None, "pt", "ltr"),
    ("sv, nl;q=0.4", None, "nl", "ltr"),
    ("fr;q=0, es;q=0.2", None, "es", "ltr"),
    ("xx, *", None, "en", "ltr"),
    (";;;,,q=2,\x7f", None, "en", "ltr"),
    ("a" * 6000, None, "en", "ltr"),
    ("de", "ar", "ar", "rtl"),
    ("de", "../../etc/passwd", "de", "ltr"),
    ("", "it", "it", "ltr"),
])
@pytest.mark.trio
async def test_the_listen_page_speaks_the_listeners_language(server, accept, cookie, lang, direction):
    headers = {"Accept-Language": accept}
    if cookie is not None:
        headers["Cookie"] = f"appliance_lang={cookie}"
    for path in ("/", "/listen/main"):
        r = await server.client.get(path, headers=headers)
        assert r.status_code == 200
        assert f'<html lang="{lang}" dir="{direction}"' in r.text
        assert "Accept-Language" in r.headers["Vary"]
        english = json.loads((I18N / "en.json").read_text(encoding="utf-8"))
        ours = json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8"))
        assert ours["intro"] in r.text.replace("&#39;", "'").replace("&amp;", "&")
        if lang != "en":
            assert english["intro"] not in r.text
