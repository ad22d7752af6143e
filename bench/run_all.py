"""`make bench`: run every bench/*.py script that exists, passing --quick or nothing (full).

    .venv/bin/python bench/run_all.py [--quick]

Each script prints its own figures and exits non-zero when it misses its targets; this runner
reports which ones did and exits non-zero if any did.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark in bench/.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes in every script")
    args = parser.parse_args()
    # _*.py are helpers the scripts import, not benchmarks.
    scripts = sorted(p for p in HERE.glob("*.py")
                     if p.name != Path(__file__).name and not p.name.startswith("_"))
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.perf_counter()
        cmd = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        code = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== {script.name}: exit {code} in {time.perf_counter() - started:.1f} s\n",
              flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print("missed targets or failed: " + ", ".join(failed))
        return 1
    print(f"all {len(scripts)} benchmark(s) met their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
