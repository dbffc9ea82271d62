"""Run every benchmark in one process and write BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--threads N] [--out BENCHMARKS.md] [--only SUITE ...]
                             [--devices cpu cuda]

On a machine with a CUDA GPU the suites also run there, in a GPU section naming the device.
The sections of a device that is not run are kept from the existing file: the CPU tables of a
2-core machine and the GPU section of a GPU node (`--devices cuda`) can live in one BENCHMARKS.md.

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
    describe_peaks,
    format_rows,
    gpu_name,
    machine_line,
    measured_around,
    peak_problem,
    positive_int,
)
from eplcanet.app.entry import DEVICE_HELP, resolve_device
from eplcanet.app.train import set_matmul_precision

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

    set_matmul_precision("fp32", device)  # true fp32 on CUDA too: no TF32 in ours or the references
    return measured_around(run_suites, device)


def peaks_text(device: str, peaks: dict[str, float]) -> list[str]:
    n, batch = peak_problem(device)
    return [
        "ratio = reference time / our time (> 1: ours is faster), both measured in the same run.",
        "% of peak = the row's GFLOP/s over the highest throughput measured in the same run at its",
        f"precision (a {n}^3 matmul and a batch of {batch} CIFAR-size 3x3 convolutions, before and",
        f"after the rows). Measured peaks on {device}: {describe_peaks(peaks)}.",
    ]


GPU_HEADING = "## GPU: "
DATA_PARALLEL_HEADING = "## Data-parallel throughput"


def suite_lines(device: str, doc: list[str], rows, peaks: dict[str, float]) -> list[str]:
    """Markdown of one suite: on the CPU its heading, full description and table; on the GPU a
    sub-heading and the table (the CPU section describes the same rows and references)."""
    if device == "cuda":
        return ["", f"### {doc[0].strip()}", "", format_rows(rows, peaks)]
    return ["", f"## {doc[0].strip()}", "", *(p.strip() + "\n" for p in doc[1:-1]),
            format_rows(rows, peaks)]


def device_sections(device: str, sections, peaks: dict[str, float]) -> list[str]:
    """Markdown for one device: the peaks measured around the run, then each suite."""
    lines: list[str] = []
    if device == "cuda":
        lines += ["", "The same references and checks as the CPU sections above, on the GPU. "
                  "fp32 rows run in true fp32 (TF32 off for ours, the references and the peak).",
                  "", *peaks_text(device, peaks)]
    else:
        lines += ["", *peaks_text(device, peaks)]
    for doc, rows in sections:
        lines += suite_lines(device, doc, rows, peaks)
    return lines


def suite_heading(name: str) -> str:
    """The CPU heading of a suite's section (its docstring's first line), without running it."""
    doc = importlib.import_module(f"benchmarks.{name}").__doc__ or ""
    return f"## {doc.strip().split(chr(10) * 2)[0].strip()}"


KEPT = "(Kept from the file's previous version:"


def kept_sections(cpu: list[str], suites: list[str]) -> list[str]:
    """The sections of `suites` in an existing CPU part (their heading to the next one), each
    under a line saying which earlier run measured it: `--only` rewrites the suites it runs and
    keeps the others."""
    written = next((line for line in cpu if line.startswith("Written by")), "an earlier run")
    peaks = next((line.split("Measured peaks on cpu: ", 1)[1] for line in cpu
                  if "Measured peaks on cpu: " in line), "not recorded")
    lines: list[str] = []
    for name in suites:
        heading = suite_heading(name)
        start = next((i for i, line in enumerate(cpu) if line.strip() == heading), None)
        if start is None:
            continue
        end = next((j for j in range(start + 1, len(cpu)) if cpu[j].startswith("## ")),
                   len(cpu))
        body = cpu[start + 1:end]
        if not any(line.startswith(KEPT) for line in body):  # kept before: its note stands
            body = ["", f"{KEPT} {written.rstrip('.')}; its peaks: {peaks.rstrip('.')}.)", *body]
        lines += ["", cpu[start], *body]
    return lines


def split_gpu_section(text: str) -> tuple[list[str], list[str]]:
    """(the lines outside the GPU section, the GPU section's lines) of a BENCHMARKS.md."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(GPU_HEADING)), None)
    if start is None:
        return lines, []
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
               len(lines))
    return lines[:start] + lines[end:], lines[start:end]


def merge_sections(cpu: list[str], gpu: list[str]) -> str:
    """The document: the CPU part with the GPU section before the data-parallel one (or last)."""
    at = next((i for i, line in enumerate(cpu) if line.startswith(DATA_PARALLEL_HEADING)),
              len(cpu))
    gpu = gpu + [""] if gpu and at < len(cpu) else gpu
    return "\n".join(cpu[:at] + gpu + cpu[at:]).strip() + "\n"


def resolve_devices(specs: list[str] | None) -> dict[str, torch.device]:
    """{'cpu' / 'cuda': device} of --devices, through the application's resolver (a GPU asked
    for and missing is its error, before any timing). BENCHMARKS.md has one CPU section and one
    GPU section, so two devices of one kind are refused rather than one overwriting the other."""
    if specs is None:
        return {"cpu": torch.device("cpu"),
                **({"cuda": torch.device("cuda")} if torch.cuda.is_available() else {})}
    devices: dict[str, torch.device] = {}
    for spec in specs:
        device = resolve_device(spec)
        if device.type in devices:
            raise SystemExit(f"error: --devices {' '.join(specs)} names two {device.type} devices; "
                             f"accepted: one CPU and one GPU at most (BENCHMARKS.md has a section "
                             f"of each)")
        devices[device.type] = device
    return devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller repeats (minutes)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--devices", nargs="+", default=None,
                        help="where to run the suites (default: cpu, and cuda if available), "
                             f"one CPU and one GPU at most, each {DEVICE_HELP}; the sections of a "
                             "device not run are kept from --out")
    args = parser.parse_args()
    devices = resolve_devices(args.devices)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {kind: run_device(str(device), args.only, args.quick)
               for kind, device in devices.items()}
    flags = "".join([" --quick" if args.quick else "",
                     f" --threads {args.threads}" if args.threads else "",
                     f" --devices {' '.join(args.devices)}" if args.devices else "",
                     f" --only {' '.join(args.only)}" if args.only != list(SUITES) else ""])
    written = f"Written by `python -m benchmarks.run{flags}` on {datetime.date.today().isoformat()}"
    out = Path(args.out)
    cpu, gpu = split_gpu_section(out.read_text()) if out.is_file() else (["# Benchmarks"], [])
    if "cpu" in results:
        kept = kept_sections(cpu, [name for name in SUITES if name not in args.only])
        cpu = ["# Benchmarks", "", f"{written}.", "", f"Machine: {machine_line()}.",
               *device_sections("cpu", *results["cpu"]), *kept]
        # The data-parallel table needs several processes and minutes; its own script writes it.
        if DISTRIBUTED.is_file():
            cpu += ["", f"{DATA_PARALLEL_HEADING} (1 vs 2 processes)", "",
                    f"Copied from [{DISTRIBUTED}]({DISTRIBUTED}), which "
                    "`python benchmarks/bench_distributed.py` writes (its own date and command):",
                    "", DISTRIBUTED.read_text().split("\n", 1)[1].strip()]
    if "cuda" in results:
        gpu = [f"{GPU_HEADING}{gpu_name(devices['cuda'])}", "",
               f"{written}, machine: {machine_line()}.",
               *device_sections("cuda", *results["cuda"])]
    out.write_text(merge_sections(cpu, gpu))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
