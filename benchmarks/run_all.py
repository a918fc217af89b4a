"""Run every benchmark in sequence (never in parallel: they would share the same cores).

    python benchmarks/run_all.py [--out benchmarks/.data/results]
Writes one JSON per benchmark; copy the numbers into docs/performance.md with machine and date.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("bench_decode.py", "bench_hog.py", "bench_flow.py", "bench_pipeline.py")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=HERE / ".data" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        json_path = args.out / script.replace(".py", ".json")
        subprocess.run([sys.executable, str(HERE / script), "--json", str(json_path)], check=True)


if __name__ == "__main__":
    main()
