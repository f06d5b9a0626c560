"""appliance/bundle_check.py against the worst an uploaded file can be: no
room for a signature, a size field past the file, a plain (detached)
signature, a manifest that is not text, parameters that are options, a
hash tree larger than the file, a payload its tree does not vouch for.
Each is left to RAUC (which refuses it before writing) or refused as
damaged; none raises anything else. The manifests are signed with openssl
here (who signed is RAUC's check, not this one's). The real RAUC bundles,
intact and damaged, are tests/web/test_update_upload.py's."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from appliance.bundle_check import BLOCK, DamagedBundleError, check_payload

pytestmark = [pytest.mark.trio,
              pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("veritysetup")),
                                 reason="openssl and veritysetup (packages/test.txt)")]

ROOT = "ab" * 32
SALT = "cd" * 32


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("signer")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=test"], check=True, capture_output=True)
    return cert, key


def signed(signer: tuple[Path, Path], manifest: bytes, *, detached: bool = False) -> bytes:
    """A DER CMS signature of ``manifest``, carrying it unless ``detached``."""
    return subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-outform", "DER", "-signer", signer[0],
         "-inkey", signer[1], *([] if detached else ["-nodetach"])],
        input=manifest, check=True, capture_output=True).stdout


def bundle(tmp_path: Path, payload: bytes, tree: bytes, signature: bytes,
           length: int | None = None) -> Path:
    path = tmp_path / "upload.raucb"
    path.write_bytes(payload + tree + signature
                     + struct.pack(">Q", len(signature) if length is None else length))
    return path


def verity(root: str = ROOT, salt: str = SALT, size: int | str = BLOCK) -> bytes:
    return (f"[update]\ncompatible=x\nversion=1\n\n[bundle]\nformat=verity\n"
            f"verity-hash={root}\nverity-salt={salt}\nverity-size={size}\n").encode()


@pytest.mark.parametrize("data", [b"", b"x" * 7, b"\xff" * 8, b"\x00" * 8,
                                  b"x" * 100 + struct.pack(">Q", 1 << 63),
                                  b"x" * 100 + struct.pack(">Q", 100),
                                  b"x" * 100 + struct.pack(">Q", 50)])
async def test_a_file_with_no_readable_signature_is_left_to_rauc(tmp_path, data):
    path = tmp_path / "upload.raucb"
    path.write_bytes(data)
    await check_payload(path)


@pytest.mark.parametrize("manifest, detached", [
    (verity(), True),                                   # a plain bundle's signature
    (b"[bundle]\nformat=plain\n", False),
    (b"\xff\xfe not text", False),
    (b"no section at all", False),
    (verity(root="--help"), False),                     # never an option of veritysetup
    (verity(salt="-v"), False),
    (verity(size="-4096"), False),
    (verity(size="4096 --debug"), False),
])
async def test_what_is_not_a_well_formed_verity_manifest_is_left_to_rauc(
        tmp_path, signer, manifest, detached):
    await check_payload(bundle(tmp_path, b"\0" * BLOCK, b"\0" * BLOCK,
                               signed(signer, manifest, detached=detached)))


@pytest.mark.parametrize("payload, size", [
    (b"\0" * BLOCK, 10 * BLOCK),     # a tree larger than the file
    (b"\0" * (BLOCK + 1), BLOCK),    # a payload of part of a block
    (b"", BLOCK),                    # no payload at all
])
async def test_sizes_that_do_not_add_up_are_damage(tmp_path, signer, payload, size):
    with pytest.raises(DamagedBundleError, match="does not match its signed manifest"):
        await check_payload(bundle(tmp_path, payload, b"\0" * BLOCK,
                                   signed(signer, verity(size=size))))


async def test_a_payload_its_tree_does_not_vouch_for_is_damage(tmp_path, signer):
    with pytest.raises(DamagedBundleError, match="veritysetup: .*failed"):
        await check_payload(bundle(tmp_path, b"\1" * 2 * BLOCK, b"\2" * BLOCK,
                                   signed(signer, verity())))
