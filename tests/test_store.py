"""Persistence: atomic writes, damaged files set aside, config seeding."""
from __future__ import annotations

import json
import os

import pytest

from appliance.config import parse_config
from appliance.model import Graph
from appliance.store import MAX_STATE_BYTES, Store, atomic_write, atomic_write_files


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(os.listdir(path.parent)) == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_several_files_get_their_modes_and_none_replaces_its_old_one_until_all_are_written(tmp_path):
    old_umask = os.umask(0o077)  # the modes asked for, not the umask's
    try:
        atomic_write_files(tmp_path, {"key": (b"k1", 0o600), "cert": (b"c1", 0o644)})
    finally:
        os.umask(old_umask)
    assert {n: (tmp_path / n).stat().st_mode & 0o777 for n in ("key", "cert")} == {
        "key": 0o600, "cert": 0o644}
    with pytest.raises(TypeError):
        atomic_write_files(tmp_path, {"key": (b"k2", 0o600), "cert": ("not bytes", 0o644)})  # type: ignore[dict-item]
    assert (tmp_path / "key").read_bytes() == b"k1"
    assert (tmp_path / "cert").read_bytes() == b"c1"
    assert sorted(os.listdir(tmp_path)) == ["cert", "key"]


@pytest.mark.trio
async def test_graph_and_sections_round_trip_and_follow_the_config(tmp_path):
    config = parse_config({}, cards=[])
    store = Store(tmp_path)
    store.load()
    assert store.graph_for(config) == config.graph
    changed = Graph(config.sources, config.sinks, (config.routes[0].__class__(
        "tone-main", "Tone", config.routes[0].spec.__class__("tone", "main", -6.0)),))
    await store.save_graph(config, changed)
    await store.save_section("mixer", {"Master": 70})
    again = Store(tmp_path)
    again.load()
    assert again.graph_for(config) == changed
    assert again.section("mixer") == {"Master": 70} and again.section("nope", 1) == 1
    # a config whose graph changed wins over the persisted graph
    other = parse_config({"sources": [{"id": "x", "kind": "tone"}],
                          "sinks": [{"id": "main", "kind": "opus"}]}, cards=[])
    assert again.graph_for(other) == other.graph


GOOD_GRAPH = {"sources": [{"id": "a", "kind": "tone"}], "sinks": [{"id": "main", "kind": "opus"}],
              "routes": []}


def state(**graph_changes) -> str:
    return json.dumps({"version": 1, "graph": {**GOOD_GRAPH, **graph_changes}})


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not JSON"),
    ("\xff\xfe", "not JSON"),
    ("[" * 30000 + "]" * 30000, "not JSON"),
    ("1" * 5000, "not JSON"),
    ("[]", "object"),
    (json.dumps({"version": 2}), "version"),
    (json.dumps({"version": 1, "graph": []}), "graph must be an object"),
    (json.dumps({"version": 1, "sections": []}), "sections must be an object"),
    (state(sources=[{"id": "a", "kind": "tone", "channels": "2"}]), "sources[0].channels"),
    (state(sources=[{"id": "a", "kind": "tone", "tone_hz": "440"}]), "sources[0].tone_hz"),
    (state(sources=[{"id": "a", "kind": "alsa", "device": 5}]), "sources[0].device"),
    (state(sources=[{"id": "a", "kind": "tone", "channels": 2 ** 40}]), "sources[0].channels"),
    (state(sources=[{"id": "a", "kind": "tone", "bogus": 1}]), "sources[0].bogus"),
    (state(sources=[{"id": "a\n", "kind": "tone"}]), "sources[0].id"),
    (state(routes=[{"id": "r", "source_id": "a", "sink_id": "nope"}]), "'nope' is not a sink"),
])
def test_a_damaged_state_file_is_set_aside_and_the_reason_named(tmp_path, caplog, content,
                                                                  reason):
    (tmp_path / "state.json").write_text(content, errors="surrogateescape")
    store = Store(tmp_path)
    store.load()
    assert not (tmp_path / "state.json").exists()
    assert store.set_aside is not None and store.set_aside.read_text(
        errors="surrogateescape") == content
    assert reason in caplog.text
    config = parse_config({}, cards=[])
    assert store.graph_for(config) == config.graph   # starts on the config's seed


def test_damaged_files_never_overwrite_each_other(tmp_path):
    for content in ("{1", "{2", "{3"):
        (tmp_path / "state.json").write_text(content)
        Store(tmp_path).load()
    aside = sorted(p.read_text() for p in tmp_path.glob("state.json.bad*"))
    assert aside == ["{1", "{2", "{3"]


def test_a_state_path_that_is_a_directory_or_too_large_is_set_aside(tmp_path):
    (tmp_path / "state.json").mkdir()
    store = Store(tmp_path)
    store.load()
    assert store.set_aside is not None and store.set_aside.is_dir()
    with open(tmp_path / "state.json", "wb") as f:
        f.truncate(MAX_STATE_BYTES + 1)   # sparse: no real disk use
    store = Store(tmp_path)
    store.load()
    assert store.set_aside is not None and not (tmp_path / "state.json").exists()


def test_temp_files_left_by_a_power_cut_are_removed(tmp_path):
    (tmp_path / ".state.json.abc123.tmp").write_text("half")
    (tmp_path / "state.json").write_text(state())
    (tmp_path / "keep.tmp").write_text("not ours")
    store = Store(tmp_path)
    store.load()
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp", "state.json"]
    assert store.set_aside is None
