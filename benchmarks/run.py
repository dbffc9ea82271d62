"""Run every benchmark in one process and write BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--threads N] [--out BENCHMARKS.md]

Each row times our implementation and a reference formulation in the same run (interleaved) and
reports the ratio; GFLOP/s are compared with this machine's GEMM throughput measured in the same
run. Absolute times on shared machines are noisy; the ratios are what the project claims.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import describe_peaks, format_rows, machine_line, measured_around

SUITES = ("bench_lca", "bench_mp", "bench_ep")
DISTRIBUTED = Path("docs/distributed-benchmark.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller repeats (minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def run_suites():
        sections = []
        for name in args.only:
            module = importlib.import_module(f"benchmarks.{name}")
            print(f"running {name} ...", flush=True)
            rows = module.collect(quick=args.quick)
            sections.append(((module.__doc__ or "").strip().split("\n\n"), rows))
        return sections

    sections, peaks = measured_around(run_suites)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        f"Machine: {machine_line()}. Measured peaks: {describe_peaks(peaks)}.",
        "",
        "ratio = reference time / our time (> 1: ours is faster), both measured in the same run.",
        "% of peak = the row's GFLOP/s over the highest throughput measured in the same run at its",
        "precision (a 2048^3 matmul and a CIFAR-size 3x3 convolution, before and after the rows).",
    ]
    for doc, rows in sections:
        lines += ["", f"## {doc[0].strip()}", "", *(p.strip() + "\n" for p in doc[1:-1]),
                  format_rows(rows, peaks)]
    # The data-parallel table needs several processes and minutes; its own script writes it.
    if DISTRIBUTED.is_file():
        lines += ["", "## Data-parallel throughput (1 vs 2 processes)", "",
                  f"Copied from [{DISTRIBUTED}]({DISTRIBUTED}), which "
                  "`python benchmarks/bench_distributed.py` writes (its own date and command):", "",
                  DISTRIBUTED.read_text().split("\n", 1)[1].strip()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
