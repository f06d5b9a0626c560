"""A verity bundle's payload, checked whole before RAUC writes a byte.

RAUC checks a bundle's signature before it installs. A plain bundle's
signature covers all of it, so RAUC finds damage there before writing. A
verity bundle's (the image's format) covers only its manifest, whose
dm-verity root hash covers the payload: dm-verity finds a damaged block as
RAUC reads it, and by then RAUC is copying into the other slot. So a verity
payload is read once first, with the well-kept tools: openssl reads the
manifest out of the CMS signature (who signed it stays RAUC's check), and
veritysetup (cryptsetup) checks every payload block against the manifest's
root hash, salt and tree size.

RAUC's verity layout: the payload (squashfs, whole 4 KiB blocks), its hash
tree (``verity-size`` bytes), the CMS signature, and the signature's size
(8 bytes, big-endian). A file that does not have it (a plain bundle, or
one too broken to read) is left to RAUC, which refuses it before writing.
"""
from __future__ import annotations

import configparser
import re
import shutil
import struct
from pathlib import Path

import trio

from .errors import UnavailableError, UnsupportedError

__all__ = ["DamagedBundleError", "check_payload"]

BLOCK = 4096                 # RAUC's verity data and hash block size
MAX_SIGNATURE = 1 << 20      # a CMS signature with its certificate chain is a few KiB
MAX_MANIFEST = 1 << 20
HEX = re.compile(r"[0-9a-f]{2,256}")


class DamagedBundleError(UnsupportedError):
    """The payload does not match its signed hash tree; the message says where."""


def _signature(path: Path) -> tuple[bytes, int] | None:
    """The CMS signature at the end of the file and where it starts, or None
    (no room for one)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 8:
            return None
        f.seek(size - 8)
        (length,) = struct.unpack(">Q", f.read(8))
        if not 0 < length <= min(MAX_SIGNATURE, size - 8):
            return None
        f.seek(size - 8 - length)
        return f.read(length), size - 8 - length


async def _manifest(path: Path) -> tuple[configparser.ConfigParser, int] | None:
    """The manifest inside the signature (a verity bundle's) and where the
    signature starts, or None."""
    found = await trio.to_thread.run_sync(_signature, path)
    openssl = shutil.which("openssl")
    if found is None or openssl is None:
        return None
    signature, start = found
    read = await trio.run_process(
        [openssl, "cms", "-verify", "-noverify", "-binary", "-inform", "DER"],
        stdin=signature, capture_stdout=True, capture_stderr=True, check=False)
    if read.returncode != 0 or len(read.stdout) > MAX_MANIFEST:
        return None   # detached (plain) or unreadable: RAUC's own check refuses
    manifest = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        manifest.read_string(read.stdout.decode("utf-8"))
    except (UnicodeDecodeError, configparser.Error):
        return None
    return manifest, start


async def check_payload(path: Path) -> None:
    """Raise DamagedBundleError when the verity bundle at ``path`` has a
    payload block its hash tree does not vouch for; return for an intact one
    and for anything RAUC checks whole itself."""
    found = await _manifest(path)
    if found is None or found[0].get("bundle", "format", fallback="") != "verity":
        return
    manifest, signature_start = found
    root = manifest.get("bundle", "verity-hash", fallback="")
    salt = manifest.get("bundle", "verity-salt", fallback="")
    tree = manifest.get("bundle", "verity-size", fallback="")
    if not (HEX.fullmatch(root) and HEX.fullmatch(salt) and tree.isdigit()):
        return   # RAUC refuses a manifest like that before it writes
    payload = signature_start - int(tree)
    if payload <= 0 or payload % BLOCK:
        raise DamagedBundleError("the bundle is damaged: its size does not match its "
                                 "signed manifest (nothing was written)")
    veritysetup = shutil.which("veritysetup")
    if veritysetup is None:
        raise UnavailableError("cannot check the bundle before installing it: veritysetup "
                               "(Debian package cryptsetup-bin) is not installed")
    checked = await trio.run_process(
        [veritysetup, "verify", str(path), str(path), root, "--no-superblock", "--format=1",
         "--hash=sha256", f"--data-block-size={BLOCK}", f"--hash-block-size={BLOCK}",
         f"--data-blocks={payload // BLOCK}", f"--hash-offset={payload}", f"--salt={salt}"],
        stdin=b"", capture_stdout=True, capture_stderr=True, check=False)
    if checked.returncode != 0:
        said = " ".join(checked.stderr.decode("utf-8", "replace").split())[:200]
        raise DamagedBundleError(f"the bundle is damaged: veritysetup: {said or 'failed'} "
                                 "(nothing was written)")
