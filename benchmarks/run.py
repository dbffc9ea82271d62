"""Run every benchmark in one process and write BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--threads N] [--out BENCHMARKS.md] [--only SUITE ...]
                             [--devices cpu cuda]

On a machine with a CUDA GPU the suites also run there, in a GPU section naming the device.

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

from benchmarks.common import (
    DEVICES,
    check_devices,
    describe_peaks,
    exact_fp32,
    format_rows,
    gpu_name,
    machine_line,
    measured_around,
    peak_problem,
)

SUITES = ("bench_lca", "bench_mp", "bench_ep")
DISTRIBUTED = Path("docs/distributed-benchmark.md")


def run_device(device: str, suites, quick: bool) -> tuple[list, dict[str, float]]:
    """[(module docstring paragraphs, rows)] of every suite on `device`, and the device's peaks
    measured before and after them."""

    def run_suites():
        sections = []
        for name in suites:
            module = importlib.import_module(f"benchmarks.{name}")
            print(f"running {name} on {device} ...", flush=True)
            rows = module.collect(quick=quick, device=device)
            sections.append(((module.__doc__ or "").strip().split("\n\n"), rows))
        return sections

    with exact_fp32(device):
        return measured_around(run_suites, device)


def peaks_text(device: str, peaks: dict[str, float]) -> list[str]:
    n, batch = peak_problem(device)
    return [
        "ratio = reference time / our time (> 1: ours is faster), both measured in the same run.",
        "% of peak = the row's GFLOP/s over the highest throughput measured in the same run at its",
        f"precision (a {n}^3 matmul and a batch of {batch} CIFAR-size 3x3 convolutions, before and",
        f"after the rows). Measured peaks on {device}: {describe_peaks(peaks)}.",
    ]


def device_sections(device: str, sections, peaks: dict[str, float]) -> list[str]:
    """Markdown for one device: the CPU's sections carry each suite's full description, the
    GPU's a heading naming the device and one table per suite (same rows and references)."""
    lines: list[str] = []
    if device == "cuda":
        lines += ["", f"## GPU: {gpu_name()}", "",
                  "The same references and checks as the CPU sections above, on the GPU. "
                  "fp32 rows run in true fp32 (TF32 off for ours, the references and the peak).",
                  "", *peaks_text(device, peaks)]
    for doc, rows in sections:
        if device == "cuda":
            lines += ["", f"### {doc[0].strip()}", "", format_rows(rows, peaks)]
        else:
            lines += ["", f"## {doc[0].strip()}", "", *(p.strip() + "\n" for p in doc[1:-1]),
                      format_rows(rows, peaks)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller repeats (minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--devices", nargs="+", choices=DEVICES, default=None,
                        help="where to run the suites (default: cpu, and cuda if available)")
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    check_devices(devices)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {device: run_device(device, args.only, args.quick) for device in devices}
    flags = "".join([" --quick" if args.quick else "",
                     f" --threads {args.threads}" if args.threads else "",
                     f" --devices {' '.join(args.devices)}" if args.devices else "",
                     f" --only {' '.join(args.only)}" if args.only != list(SUITES) else ""])
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks.run{flags}` on {datetime.date.today().isoformat()}.",
        "",
        f"Machine: {machine_line()}.",
    ]
    for device, (sections, peaks) in results.items():
        if device == "cpu":
            lines += ["", *peaks_text(device, peaks)]
        lines += device_sections(device, sections, peaks)
    # The data-parallel table needs several processes and minutes; its own script writes it.
    if DISTRIBUTED.is_file() and "cpu" in devices:
        lines += ["", "## Data-parallel throughput (1 vs 2 processes)", "",
                  f"Copied from [{DISTRIBUTED}]({DISTRIBUTED}), which "
                  "`python benchmarks/bench_distributed.py` writes (its own date and command):", "",
                  DISTRIBUTED.read_text().split("\n", 1)[1].strip()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
