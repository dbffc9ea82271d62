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
import platform
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_rows, gemm_peak_gflops

SUITES = ("bench_lca", "bench_mp", "bench_ep")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {torch.get_num_threads()} torch threads; {dev}; torch {torch.__version__}; "
            f"python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller repeats (minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = gemm_peak_gflops()
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        f"Machine: {_machine()}. Measured fp32 GEMM peak: {peak:.1f} GFLOP/s.",
        "",
        "ratio = reference time / our time (> 1: ours is faster), both measured in the same run.",
    ]
    for name in args.only:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", flush=True)
        rows = module.collect(quick=args.quick)
        doc = (module.__doc__ or "").strip().split("\n\n")
        lines += ["", f"## {doc[0].strip()}", "", *(p.strip() + "\n" for p in doc[1:-1]),
                  format_rows(rows, peak)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
