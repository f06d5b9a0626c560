"""One file that holds a box's settings: the saved graph (sources, sinks,
routes), the state sections other parts keep (the HAT mixer's), and the
admin password's hash only when asked. Never the setup code, never a token
(those live in the config file, not in the state).

A restore goes through ``model`` like every other way in (``Graph.from_json``
checks every value), says what will change (a dry run shows the same plan),
and refuses a file from a newer version of the appliance.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

from . import __version__
from .errors import InvalidError
from .model import Graph
from .passwords import is_password_hash

__all__ = ["FORMAT", "Backup", "make_backup", "read_backup"]

FORMAT = "appliance-backup"
# the state sections a backup carries: what their owners check again when
# they apply them (the HAT mixer's: device and controls, at the next start)
SECTIONS = frozenset({"mixer", "publications", "relays"})


@dataclass(frozen=True)
class Backup:
    graph: Graph
    sections: dict[str, Any]
    password_hash: str | None
    version: str


def _version(text: Any, where: str) -> tuple[int, ...]:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6}){0,3}", text):
        raise InvalidError(f"{where} must be a version like 0.1.0")
    return tuple(int(part) for part in text.split("."))


def make_backup(name: str, graph: Graph, sections: Mapping[str, Any],
                password_hash: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"format": FORMAT, "version": __version__, "name": name,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "graph": graph.to_json(),
                           "sections": {k: v for k, v in sections.items() if k in SECTIONS}}
    if password_hash:
        out["admin"] = {"password_hash": password_hash}
    return out


def read_backup(data: Any) -> Backup:
    """A backup file's contents, checked; ``InvalidError`` names what is wrong."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise InvalidError(f"not an appliance backup (its \"format\" is not {FORMAT!r})")
    unknown = set(data) - {"format", "version", "name", "created", "graph", "sections", "admin"}
    if unknown:
        raise InvalidError(f"backup: unknown key {sorted(unknown)[0]!r}")
    made_by = _version(data.get("version"), "backup.version")
    if made_by > _version(__version__, "version"):
        raise InvalidError(f"this backup was made by version {data['version']}, newer than "
                           f"this appliance's {__version__}: update the appliance first")
    graph = Graph.from_json(data.get("graph", {}), "backup.graph")
    sections = data.get("sections", {})
    if not isinstance(sections, Mapping) or not set(sections) <= SECTIONS:
        raise InvalidError(f"backup.sections may hold only {', '.join(sorted(SECTIONS))}")
    password_hash = None
    admin = data.get("admin")
    if admin is not None:
        if not isinstance(admin, Mapping) or set(admin) != {"password_hash"} \
                or not isinstance(admin["password_hash"], str) \
                or not is_password_hash(admin["password_hash"]):
            raise InvalidError("backup.admin.password_hash is not a password hash")
        password_hash = admin["password_hash"]
    return Backup(graph, dict(sections), password_hash, data["version"])
