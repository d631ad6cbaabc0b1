#!/usr/bin/env python
"""Download, on a networked machine, the wheels ``make bench-gpu`` installs on an offline GPU.

    make bench-gpu-wheels                         # -> benchmarks/gpu/wheels/ (~12 MiB)
    make bench-gpu-wheels BENCH_TORCH=cu128       # + CUDA torch 2.13.0 (~3 GiB, see below)

The GPU machine's own CUDA torch (and numpy, pyarrow, transformers, ...) is used as it is, so
by default only the packages of ``_setup.PACKAGES`` are fetched (torchtune 0.6.1, torchao
0.15.0, datasets, omegaconf, ...: no dependencies, one version each), for Linux x86-64 and
CPython 3.11 and 3.12. The folder is git-ignored; it is small enough to travel with the
checkout (a device call carries 64 MiB in all). ``BENCH_TORCH=cu12x`` also fetches CUDA
torch 2.13.0 and its NVIDIA libraries from ``download.pytorch.org/whl/<BENCH_TORCH>`` for a
machine with no torch at all (then install it with ``make venv TORCH=cu128
WHEELS=benchmarks/gpu/wheels``); those are gigabytes and cannot be carried that way.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _setup import PACKAGES, WHEELS  # noqa: E402

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]  # fmt: skip
CARRY_LIMIT_MIB = 48  # leave room for the checkout in a 64 MiB device call


def download(dists: list[str], dest: Path, python: str, extra: list[str] | None = None) -> int:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for p in PLATFORMS:
        cmd += ["--platform", p]
    return subprocess.run(cmd + (extra or []) + dists).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=WHEELS)
    ap.add_argument("--pythons", default="3.11,3.12")
    ap.add_argument("--torch", default="", help="also CUDA torch 2.13.0 from this index (cu128)")
    args = ap.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    dists = [d for d, _ in PACKAGES]
    rc = 0
    for py in args.pythons.split(","):
        for d in dists:  # one by one: a package without a wheel for one Python is reported
            if download([d], args.dest, py) != 0:
                print(f"fetch_wheels: no wheel of {d} for CPython {py}", file=sys.stderr)
                rc = 1
        if args.torch:
            index = ["--index-url", f"https://download.pytorch.org/whl/{args.torch}"]
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                   "--python-version", py, "--implementation", "cp", "-d", str(args.dest),
                   *index, f"torch==2.13.0+{args.torch}"]  # fmt: skip
            for p in PLATFORMS:
                cmd += ["--platform", p]
            rc |= subprocess.run(cmd).returncode
    files = sorted(args.dest.glob("*.whl"))
    total = sum(f.stat().st_size for f in files) / 2**20
    print(f"fetch_wheels: {len(files)} wheels, {total:.1f} MiB in {args.dest}")
    if total > CARRY_LIMIT_MIB:
        print(f"fetch_wheels: over {CARRY_LIMIT_MIB} MiB: too big to carry to a device machine "
              "with the checkout (drop the torch wheels there)")  # fmt: skip
    return rc


if __name__ == "__main__":
    sys.exit(main())
