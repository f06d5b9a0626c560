"""Clock drift over a simulated hour: the network receiver's steering holds
the latency while a sender's clock runs 200 ppm fast, and another's 200 ppm
slow (issue 19: within +-2 ms of its start, no underrun, no overrun).

    .venv/bin/python bench/drift_hour.py [--hours 1] [--ptime-ms 1] [--latency-ms 20]

bench/drift/drift_sim.c is built here against the engine's own receiver
(native/ae_netsrc.c and ae_core.c, libspeexdsp, libopus) and fed AES67
packets on loopback with the sender's clock made up: time is the packets'
own, so an hour takes about a minute. See that file for what it measures.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.scream import free_udp_port  # noqa: E402


def build(out: Path) -> Path:
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "speexdsp", "opus", "glib-2.0"],
                           check=True, capture_output=True, text=True).stdout
    binary = out / "drift_sim"
    subprocess.run(["gcc", "-O2", "-Wall", "-std=gnu11", f"-I{ROOT / 'native'}", "-o", str(binary),
                    str(ROOT / "bench/drift/drift_sim.c"), str(ROOT / "native/ae_netsrc.c"),
                    str(ROOT / "native/ae_core.c"), *shlex.split(flags), "-lpthread", "-lm"],
                   check=True)
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--ptime-ms", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        runs = [subprocess.Popen([str(binary), str(ppm), str(args.hours * 3600), str(args.ptime_ms),
                                  str(args.latency_ms), str(free_udp_port())],
                                 stdout=subprocess.PIPE, text=True)
                for ppm in (200, -200)]
        for run in runs:
            out, _ = run.communicate()
            print(next(line for line in out.splitlines() if line.startswith("RESULT")))
            if run.returncode:
                sys.exit(run.returncode)


if __name__ == "__main__":
    main()
