"""State that survives restarts and power loss, kept as one JSON file
(``<state_dir>/state.json``) written atomically: temp file, fsync, rename,
fsync of the directory. A reader sees either the old file or the new one.

Layout::

    {"version": 1,
     "seed": "<digest of the config's sources/sinks/routes>",
     "graph": {"sources": [...], "sinks": [...], "routes": [...]},
     "sections": {"mixer": {...}, ...}}

The graph is what the admin API changed. The config file's graph only seeds
it: the persisted graph is used as long as the config's graph is the one it
was seeded from; edit the config's graph and the config wins again (its
digest changed). ``sections`` holds state other parts of the app keep (the
web UI's mixer settings, for example) under their own names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import trio

from .config import Config, ConfigError, RouteConfig, SinkConfig, SourceConfig, check_id
from .engine import RouteSpec, SinkSpec, SourceSpec

__all__ = ["Store", "Graph", "atomic_write", "graph_from_config", "StoreError"]

log = logging.getLogger(__name__)
VERSION = 1


class StoreError(Exception):
    """The state file could not be written."""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that after a crash or power loss it
    holds either the old or the new contents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclasses.dataclass(frozen=True)
class Graph:
    sources: tuple[SourceConfig, ...]
    sinks: tuple[SinkConfig, ...]
    routes: tuple[RouteConfig, ...]

    def to_json(self) -> dict[str, Any]:
        def one(entity: Any) -> dict[str, Any]:
            return {"id": entity.id, "name": entity.name, **dataclasses.asdict(entity.spec)}
        return {"sources": [one(s) for s in self.sources],
                "sinks": [one(s) for s in self.sinks],
                "routes": [one(r) for r in self.routes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Graph":
        def many(key: str, spec_cls: type, make: type, kind: str) -> tuple[Any, ...]:
            out = []
            for item in data.get(key, []):
                item = dict(item)
                entity_id = check_id(kind, item.pop("id"))
                name = str(item.pop("name", entity_id))
                names = {f.name for f in dataclasses.fields(spec_cls)}
                unknown = set(item) - names
                if unknown:
                    raise ConfigError(f"{key}: unknown field {sorted(unknown)[0]!r}")
                out.append(make(entity_id, name, spec_cls(**item)))
            return tuple(out)
        return cls(many("sources", SourceSpec, SourceConfig, "source"),
                   many("sinks", SinkSpec, SinkConfig, "sink"),
                   many("routes", RouteSpec, RouteConfig, "route"))

    def digest(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def graph_from_config(config: Config) -> Graph:
    return Graph(config.sources, config.sinks, config.routes)


class Store:
    """The state file of one state directory. Writes are serialised and run
    in a worker thread (fsync blocks)."""

    def __init__(self, state_dir: Path | str):
        self.path = Path(state_dir) / "state.json"
        self._data: dict[str, Any] = {"version": VERSION, "seed": None, "graph": None,
                                      "sections": {}}
        self._lock = trio.Lock()
        self.writes = 0

    def load(self) -> None:
        """Read the file if there is one; a damaged file is set aside (renamed
        to ``state.json.bad``) rather than stopping the appliance."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError("unknown version")
            if data.get("graph") is not None:
                Graph.from_json(data["graph"])  # validate now
        except (ValueError, KeyError, TypeError, ConfigError) as error:
            bad = self.path.with_name(self.path.name + ".bad")
            log.error("state file %s is damaged (%s); moved to %s", self.path, error, bad)
            os.replace(self.path, bad)
            return
        data.setdefault("sections", {})
        self._data = data

    def graph_for(self, config: Config) -> Graph:
        """The graph to start with: the persisted one unless the config's graph
        changed since it was seeded."""
        seed = graph_from_config(config)
        if self._data.get("graph") is not None and self._data.get("seed") == seed.digest():
            return Graph.from_json(self._data["graph"])
        return seed

    def section(self, name: str, default: Any = None) -> Any:
        return self._data["sections"].get(name, default)

    async def save_graph(self, config: Config, graph: Graph) -> None:
        async with self._lock:
            self._data["seed"] = graph_from_config(config).digest()
            self._data["graph"] = graph.to_json()
            await self._write()

    async def save_section(self, name: str, value: Any) -> None:
        """Persist JSON-able ``value`` under ``name`` (for other blueprints)."""
        async with self._lock:
            self._data["sections"][name] = value
            await self._write()

    async def _write(self) -> None:
        blob = json.dumps(self._data, indent=1, sort_keys=True).encode()
        try:
            await trio.to_thread.run_sync(atomic_write, self.path, blob)
        except OSError as error:
            raise StoreError(f"cannot write {self.path}: {error}") from error
        self.writes += 1
