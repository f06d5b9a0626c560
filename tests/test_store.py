"""Persistence: atomic writes, damaged files set aside, config seeding."""
from __future__ import annotations

import json
import os

import pytest
import trio

from appliance.config import parse_config
from appliance.store import Graph, Store, atomic_write, graph_from_config


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


@pytest.mark.trio
async def test_graph_and_sections_round_trip_and_follow_the_config(tmp_path):
    config = parse_config({}, cards=[])
    store = Store(tmp_path)
    store.load()
    assert store.graph_for(config) == graph_from_config(config)
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
    assert again.graph_for(other) == graph_from_config(other)


@pytest.mark.trio
async def test_a_damaged_state_file_is_set_aside(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    store = Store(tmp_path)
    await trio.to_thread.run_sync(store.load)
    assert (tmp_path / "state.json.bad").read_text() == "{not json"
    assert not (tmp_path / "state.json").exists()
    (tmp_path / "state.json").write_text(json.dumps(
        {"version": 1, "graph": {"sources": [{"id": "a", "kind": "tone", "bogus": 1}]}}))
    store = Store(tmp_path)
    store.load()
    assert (tmp_path / "state.json.bad").exists()
    config = parse_config({}, cards=[])
    assert store.graph_for(config) == graph_from_config(config)
