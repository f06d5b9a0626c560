"""Fixtures for the image and flash.sh tests; the helpers are in
image_helpers.py."""
import os
import shutil
from pathlib import Path

import pytest

from image_helpers import TOOLS, FakeSys, build, make_stub_root


@pytest.fixture(scope="session", autouse=True)
def _tools_present():
    missing = [t for t in TOOLS if shutil.which(t) is None
               and not os.path.exists(f"/usr/sbin/{t}") and not os.path.exists(f"/sbin/{t}")]
    assert not missing, f"missing tools {missing}: run `make test` (installs packages/test.txt)"


@pytest.fixture(scope="session")
def stub_build(tmp_path_factory):
    """One image from a stub root, shared by the assembly and flash tests
    (which only read it): tmp dir, stub root, .img path, build process."""
    tmp = tmp_path_factory.mktemp("assemble")
    stub = make_stub_root(tmp / "stub")
    p, img = build(tmp, stub)
    assert p.returncode == 0, p.stderr
    return tmp, stub, img, p


@pytest.fixture
def fakesys(tmp_path):
    return FakeSys(tmp_path / "sysroot")


@pytest.fixture(scope="session")
def appliance_image(tmp_path_factory):
    """The full image for the QEMU tests (slow): APPLIANCE_TEST_IMAGE, or
    built once with `make image`. Its signing key pair is in the build's
    WORK_DIR/rauc-dev/ (APPLIANCE_TEST_WORK_DIR with a given image)."""
    from image_vm import build_image
    tmp = tmp_path_factory.mktemp("image")
    img = build_image(tmp)
    work = Path(os.environ.get("APPLIANCE_TEST_WORK_DIR", tmp / "work"))
    return img, work
