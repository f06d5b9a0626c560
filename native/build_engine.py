"""cffi (API, out-of-line) build script for the engine: generates the private
module ``appliance._engine_cffi`` from ae_engine.h and compiles it together
with the engine's C sources. Wired into the package build by setup.py."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools wants paths relative to the project root
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("ae_*.c"))
PKG_CONFIG = ["gstreamer-1.0", "gstreamer-app-1.0", "gstreamer-webrtc-1.0",
              "gstreamer-sdp-1.0", "nice", "alsa", "opus", "openssl", "libsrtp2", "speexdsp"]


def _pkg_config(flag: str) -> list[str]:
    out = subprocess.run(["pkg-config", flag, *PKG_CONFIG], check=True,
                         capture_output=True, text=True).stdout
    return shlex.split(out)


def _cdef_from_header() -> str:
    """The public header as cffi's parser takes it: the C preprocessor drops
    the comments, the include guard and the C++ guard; the header leaves out
    <stdint.h> when AE_CFFI_CDEF is defined (cffi knows those types)."""
    cpp = os.environ.get("CPP", "cpp")
    text = subprocess.run([cpp, "-P", "-undef", "-nostdinc", "-DAE_CFFI_CDEF",
                           str(HERE / "ae_engine.h")],
                          check=True, capture_output=True, text=True).stdout
    return text + '\nextern "Python" void ae_python_event_cb(void *, const ae_event *);\n'


def _write_limits() -> None:
    """native/ae_limits.h from this tree's model (appliance/engine_limits.py):
    the engine is built with the bounds the model checks, never older ones.
    The header is checked in too (make native-check reads it without Python);
    tests/test_limits.py says when the checked-in one is behind the model."""
    sys.path.insert(0, str(HERE.parent))
    try:
        from appliance import engine_limits
    finally:
        sys.path.remove(str(HERE.parent))
    if Path(engine_limits.__file__).resolve().parent != HERE.parent / "appliance":
        raise RuntimeError(f"the model imported is not this tree's: {engine_limits.__file__}")
    engine_limits.write()


_write_limits()
ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header())
extra = shlex.split(os.environ.get("AE_EXTRA_CFLAGS", ""))
ffibuilder.set_source(
    "appliance._engine_cffi",
    '#include "ae_engine.h"\n',
    sources=SOURCES,
    include_dirs=[str(HERE)],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-O2", "-g",
                        *_pkg_config("--cflags"), *extra],
    extra_link_args=[*_pkg_config("--libs"), "-lm", "-lpthread",
                     *shlex.split(os.environ.get("AE_EXTRA_LDFLAGS", ""))],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
