"""The media folder: the only place file sources read from.

A file source names a file by its path relative to the media folder
(``<state_dir>/media`` unless configured). ``resolve_media`` turns that into
the absolute path the engine opens, after checking that it stays inside the
folder once every symlink is resolved, and that it is a readable regular
file of bounded size (not a FIFO, a device, a directory). Whatever goes
wrong before the file is known to be inside the folder gives the same
message, so an answer never tells whether some path outside it exists.

The engine opens the file again itself, non-blocking and refusing anything
but a regular file (native/ae_graph.c), so a file swapped for a FIFO between
this check and that open cannot stall it.
"""
from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidError

__all__ = ["MAX_MEDIA_BYTES", "MAX_PATH_CHARS", "MediaFile", "media_folder", "resolve_media",
           "list_media", "check_media_path"]

# The engine's own cap (MAX_FILE_SAMPLES * 4 bytes in ae_graph.c).
MAX_MEDIA_BYTES = 256 * 1024 * 1024
MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255           # one path component, as most file systems allow
MAX_LISTED = 1000              # list_media stops there
MAX_DEPTH = 8                  # and does not descend deeper than this

_UNIFORM = "not a file in the media folder"


@dataclass(frozen=True)
class MediaFile:
    path: str      # relative to the media folder, '/'-separated
    size: int

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size}


def media_folder(config: object) -> Path:
    """The config's media folder: ``media_dir`` when set, else
    ``<state_dir>/media``."""
    configured = getattr(config, "media_dir", None)
    if configured:
        return Path(configured)
    return Path(config.state_dir) / "media"


def check_media_path(path: object, *, field: str = "path") -> str:
    """The syntactic checks: a non-empty relative path without '..', control
    characters, lone surrogates, or over-long names. Returns it unchanged."""
    if not isinstance(path, str):
        raise InvalidError(f"{field}: must be a string, a path relative to the media folder")
    if not path or len(path) > MAX_PATH_CHARS:
        raise InvalidError(f"{field}: must be 1 to {MAX_PATH_CHARS} characters")
    for char in path:
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            raise InvalidError(f"{field}: holds a control character or a lone surrogate")
    if path.startswith("/"):
        raise InvalidError(f"{field}: must be relative to the media folder, not absolute")
    parts = path.split("/")
    if ".." in parts:
        raise InvalidError(f"{field}: must not contain '..'")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise InvalidError(f"{field}: a name in it is longer than {MAX_NAME_BYTES} bytes")
    return path


def resolve_media(media_dir: Path | str, path: object, *, field: str = "path",
                  max_bytes: int = MAX_MEDIA_BYTES) -> Path:
    """The absolute, symlink-free path of ``path`` (relative to ``media_dir``)
    if it is a readable regular file inside the folder of at most
    ``max_bytes``; ``InvalidError`` naming ``field`` otherwise."""
    check_media_path(path, field=field)
    nowhere = InvalidError(f"{field}: {_UNIFORM}")
    try:
        base = Path(media_dir).resolve(strict=True)
        target = (base / str(path)).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):   # missing, a loop, EACCES, ENAMETOOLONG
        raise nowhere from None
    if target == base or not target.is_relative_to(base):
        raise nowhere
    # Open it the way the engine will: never block on a FIFO, never follow a
    # last-moment symlink; then judge what was opened, not the name.
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise nowhere from None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise nowhere
    if info.st_size == 0:
        raise InvalidError(f"{field}: the file is empty")
    if info.st_size > max_bytes:
        raise InvalidError(f"{field}: the file is larger than {max_bytes // (1024 * 1024)} MiB")
    return target


def list_media(media_dir: Path | str, *, max_bytes: int = MAX_MEDIA_BYTES) -> list[MediaFile]:
    """The files a file source may use, sorted by path: regular files inside
    the folder (symlinks that stay inside count), non-empty, within the size
    bound. A missing folder lists nothing. Names that ``check_media_path``
    would refuse are left out, so every listed path is accepted."""
    try:
        base = Path(media_dir).resolve(strict=True)
    except (OSError, RuntimeError):
        return []
    found: list[MediaFile] = []

    def walk(folder: Path, prefix: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if len(found) >= MAX_LISTED:
                return
            rel = prefix + entry.name
            try:
                check_media_path(rel)
                real = Path(entry.path).resolve(strict=True)
                if not real.is_relative_to(base) or real == base:
                    continue
                info = real.stat()
            except (OSError, RuntimeError, InvalidError):
                continue
            if stat.S_ISDIR(info.st_mode):
                if depth < MAX_DEPTH and not entry.is_symlink():  # no cycles through links
                    walk(real, rel + "/", depth + 1)
            elif stat.S_ISREG(info.st_mode) and 0 < info.st_size <= max_bytes:
                found.append(MediaFile(rel, info.st_size))

    walk(base, "", 0)
    return found
