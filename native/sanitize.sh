#!/usr/bin/env bash
# Build the engine with AddressSanitizer + UndefinedBehaviorSanitizer into
# build/asan/ (a copy of the package, so the normal build is untouched) and
# run the engine tests against it. Any sanitizer report fails the run.
# Usage: native/sanitize.sh [python]   (make sanitize)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
out=build/asan
rm -rf "$out" && mkdir -p "$out/appliance" "$out/cffi"
ln -s "$PWD/native" "$out/cffi/native"   # cffi compiles from its tmpdir; sources are project-relative
# the whole package (the web app too: some engine tests serve it), its own build after
cp -r appliance/. "$out/appliance/" && rm -f "$out"/appliance/_engine_cffi*.so
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1"
AE_EXTRA_CFLAGS="$flags" AE_EXTRA_LDFLAGS="-fsanitize=address,undefined" "$python" - "$out" <<'PY'
import sys, runpy
ns = runpy.run_path("native/build_engine.py")
ns["ffibuilder"].compile(tmpdir=sys.argv[1] + "/cffi", verbose=False)
import glob, shutil
so = glob.glob(sys.argv[1] + "/cffi/appliance/_engine_cffi*.so")[0]
shutil.copy(so, sys.argv[1] + "/appliance/")
PY
report=$(mktemp -d)
# Python and GLib keep memory to the end by design: leak checking would only
# report them. Every other error aborts with a report.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$report/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$report/ubsan"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export PYTHONPATH="$PWD/$out"
# The editable install's import hook would find the normal build first.
run() {
    "$python" - "$@" <<'PY'
import os, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
sys.path.append(os.getcwd())   # the tests package, after the sanitized appliance
import appliance._native
assert "build/asan" in appliance._native.__file__, appliance._native.__file__
import pytest
sys.exit(pytest.main(sys.argv[1:]))
PY
}
status=0
run -q -p no:cacheprovider tests/test_engine.py tests/test_lean.py tests/test_network_sources.py \
    tests/web/test_whip.py tests/web/test_publications.py "${@:2}" || status=$?
unset LD_PRELOAD
if compgen -G "$report/*" >/dev/null; then
    echo "sanitizer reports:"; cat "$report"/*; status=1
fi
rm -rf "$report"
exit $status
