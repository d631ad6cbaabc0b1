"""Start-up time of the `tunesmith` command against the 1.5 s target.

Runs `tunesmith --help` (and `tunesmith ls`) as fresh processes, one warm-up then the
median of 5, and prints each time next to the target. Exit code 1 if `--help` misses it.

    .venv/bin/python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 1.5


def tunesmith_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m tunesmith.cli`."""
    script = Path(sys.executable).parent / "tunesmith"
    if script.is_file():
        return [str(script)]
    found = shutil.which("tunesmith")
    return [found] if found else [sys.executable, "-m", "tunesmith.cli"]


def median_seconds(argv: list[str], runs: int) -> float:
    """Median wall time of `runs` fresh processes (after one warm-up run)."""
    subprocess.run(argv, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs per command (median is reported)"
    )
    parser.add_argument("--quick", action="store_true", help="same as --runs 3")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    command = tunesmith_command()
    help_s = median_seconds([*command, "--help"], runs)
    ls_s = median_seconds([*command, "ls"], runs)
    python_s = median_seconds([sys.executable, "-c", "pass"], runs)
    print(f"cli_startup ({' '.join(command)}, median of {runs})")
    print(f"  bare python           {python_s:6.3f} s")
    print(
        f"  tunesmith --help      {help_s:6.3f} s   target < {TARGET_S} s   ratio {help_s / TARGET_S:.2f}x of budget"
    )
    print(
        f"  tunesmith ls          {ls_s:6.3f} s   target < {TARGET_S} s   ratio {ls_s / TARGET_S:.2f}x of budget"
    )
    ok = help_s < TARGET_S
    print(
        f"  {'PASS' if ok else 'FAIL'}: tunesmith --help {'within' if ok else 'over'} the {TARGET_S} s target"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
