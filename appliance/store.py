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

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from .config import Config
from .errors import InvalidError
from .model import Graph

__all__ = ["Store", "atomic_write", "atomic_write_files", "StoreError", "MAX_STATE_BYTES"]

log = logging.getLogger(__name__)
VERSION = 1
# far above any real graph; a larger file is damage, not state
MAX_STATE_BYTES = 4 << 20


class StoreError(Exception):
    """The state file could not be written."""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) so that after a crash or
    power loss it holds either the old or the new contents."""
    path = Path(path)
    atomic_write_files(path.parent, {path.name: (data, 0o600)})


def atomic_write_files(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Replace each ``folder/<name>`` with its ``(data, mode)``: every new file
    is complete on disk, with its mode from the start, before any of them
    replaces its old one. After a crash or power loss each file holds its old
    or its new contents; files that must match (a certificate and its key) are
    checked together by their reader, since a cut between two renames can mix
    them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path]] = []
    try:
        for name, (data, mode) in files.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            written.append((tmp, folder / name))
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def graph_digest(graph: Graph) -> str:
    text = json.dumps(graph.to_json(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_state(data: Any) -> dict[str, Any]:
    """The parsed state file, checked; InvalidError names what is wrong."""
    if not isinstance(data, dict):
        raise InvalidError("the file must hold a JSON object")
    if data.get("version") != VERSION:
        raise InvalidError(f"version must be {VERSION}")
    unknown = set(data) - {"version", "seed", "graph", "sections"}
    if unknown:
        raise InvalidError(f"unknown key {sorted(unknown)[0]!r}")
    if data.get("seed") is not None and not isinstance(data["seed"], str):
        raise InvalidError("seed must be a string")
    if data.get("graph") is not None:
        Graph.from_json(data["graph"])
    sections = data.setdefault("sections", {})
    if not isinstance(sections, dict):
        raise InvalidError("sections must be an object")
    return data


class Store:
    """The state file of one state directory. Writes are serialised and run
    in a worker thread (fsync blocks)."""

    def __init__(self, state_dir: Path | str):
        self.path = Path(state_dir) / "state.json"
        self._data: dict[str, Any] = {"version": VERSION, "seed": None, "graph": None,
                                      "sections": {}}
        self._lock = trio.Lock()
        self.writes = 0
        self.set_aside: Path | None = None   # where a damaged file went, this start

    def load(self) -> None:
        """Read the file if there is one. A damaged file (any type error, any
        shape, too large, not a file) is set aside under a unique name with
        the reason logged, rather than stopping the appliance; temp files
        that a power cut left behind are removed."""
        self._remove_orphans()
        try:
            if not self.path.is_file() and self.path.exists():
                raise InvalidError("it is not a regular file")
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except InvalidError as error:
            self._set_aside(error.message)
            return
        try:
            if len(raw) > MAX_STATE_BYTES:
                raise InvalidError(f"it is larger than {MAX_STATE_BYTES} bytes")
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError) as error:   # UnicodeDecodeError is one
                raise InvalidError(f"not JSON: {error}") from None
            self._data = _check_state(data)
        except InvalidError as error:
            self._set_aside(error.message)

    def _remove_orphans(self) -> None:
        prefix = f".{self.path.name}."
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix) and name.endswith(".tmp"):
                try:
                    os.unlink(self.path.parent / name)
                    log.warning("removed %s, left by an interrupted write", name)
                except OSError:
                    pass

    def _set_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for n in range(1000):
            bad = self.path.with_name(f"{self.path.name}.bad-{stamp}" + (f"-{n}" if n else ""))
            if not os.path.lexists(bad):
                break
        log.error("state file %s is damaged (%s); moved to %s, starting from the config",
                  self.path, reason, bad)
        os.replace(self.path, bad)
        self.set_aside = bad

    def graph_for(self, config: Config) -> Graph:
        """The graph to start with: the persisted one unless the config's graph
        changed since it was seeded."""
        seed = config.graph
        if self._data.get("graph") is not None and self._data.get("seed") == graph_digest(seed):
            return Graph.from_json(self._data["graph"])
        return seed

    def section(self, name: str, default: Any = None) -> Any:
        return self._data["sections"].get(name, default)

    async def save_graph(self, config: Config, graph: Graph) -> None:
        async with self._lock:
            self._data["seed"] = graph_digest(config.graph)
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
