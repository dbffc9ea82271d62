"""Shared timing utilities for the benchmark scripts.

Every benchmark times our implementation and a reference formulation in the same process,
interleaved, and reports the ratio: absolute times on shared machines are noisy, ratios much less.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from eplcanet.app.entry import DEVICE_HELP, resolve_device
from eplcanet.app.train import set_matmul_precision


def positive_int(text: str) -> int:
    """argparse type for --threads: a count of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)  # that GPU's queue (--device cuda:1 is not the current one)


def time_fn(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, device="cpu") -> float:
    """Median wall-clock seconds of fn() over `repeat` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_pair(
    ours: Callable[[], object],
    ref: Callable[[], object],
    repeat: int = 5,
    warmup: int = 1,
    device="cpu",
) -> tuple[float, float]:
    """Median seconds of (ours, ref), runs interleaved so that load changes hit both alike."""
    for _ in range(warmup):
        ours()
        ref()
    sync(device)
    t_ours, t_ref = [], []
    for _ in range(repeat):
        for fn, acc in ((ours, t_ours), (ref, t_ref)):
            t0 = time.perf_counter()
            fn()
            sync(device)
            acc.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_ref)


def _gflops(fn: Callable[[], object], flops: float, device) -> float:
    return flops / time_fn(fn, repeat=5, warmup=2, device=device) / 1e9


def peak_problem(device) -> tuple[int, int]:
    """(n, batch) of the roof measurements: a n^3 matmul and a batch of CIFAR-size 3x3
    convolutions, larger on a GPU so that launch overheads do not count."""
    return (8192, 128) if torch.device(device).type == "cuda" else (2048, 16)


def measure_peaks(device="cpu") -> dict[str, float]:
    """Measured compute roofs (GFLOP/s) of this device, per precision: a square matmul (the BLAS
    GEMM) and a 3x3 convolution of CIFAR-size layer shape (oneDNN/cuDNN's direct kernels, which
    on some CPUs outrun the BLAS GEMM). Keys: 'fp32 GEMM', 'fp32 conv', 'bf16 GEMM', 'bf16 conv'."""
    n, batch = peak_problem(device)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        peaks[f"{name} GEMM"] = _gflops(lambda: a @ b, 2.0 * n**3, device)
        x = torch.randn(batch, 256, 16, 16, device=device, dtype=dtype)
        w = torch.randn(512, 256, 3, 3, device=device, dtype=dtype)
        x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
        conv_flops = 2.0 * batch * 512 * 256 * 9 * 16 * 16
        peaks[f"{name} conv"] = _gflops(lambda: F.conv2d(x, w, padding=1), conv_flops, device)
    return peaks


def measured_around(run: Callable[[], object], device="cpu") -> tuple[object, dict[str, float]]:
    """(run(), peaks): the roofs are measured before and after run, and the larger reading of
    each kept (on shared cores it is the closer one)."""
    before = measure_peaks(device)
    result = run()
    return result, {k: max(v, before[k]) for k, v in measure_peaks(device).items()}


def roof(peaks: dict[str, float], precision: str = "fp32") -> float:
    """The highest measured throughput at `precision`: what '% of peak' is relative to."""
    return max(v for k, v in peaks.items() if k.startswith(precision))


def describe_peaks(peaks: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()) + " GFLOP/s"


def cpu_model(default: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo, else `default` (else the platform's machine)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default or platform.processor() or platform.machine()


def gpu_name(device: torch.device | str = "cuda:0") -> str:
    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no GPU"


def machine_line() -> str:
    """CPU, threads, GPU, torch and python versions: the header of every benchmark output."""
    dev = gpu_name()
    return (f"{cpu_model()}, {torch.get_num_threads()} torch threads; {dev}; "
            f"torch {torch.__version__}; python {platform.python_version()}")


@dataclass
class Row:
    """One benchmark result: our time per unit against a reference measured in the same run."""

    name: str
    unit: str
    ours_s: float
    ref_s: float | None = None
    ref_name: str = ""
    flops: float | None = None  # arithmetic of one unit of our implementation
    extra: dict = field(default_factory=dict)
    precision: str = "fp32"  # which measured roof the row's GFLOP/s are compared with

    @property
    def ratio(self) -> float | None:
        return None if self.ref_s is None else self.ref_s / self.ours_s

    @property
    def gflops(self) -> float | None:
        return None if self.flops is None else self.flops / self.ours_s / 1e9

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["gflops"] = self.gflops
        return d


def format_rows(rows: list[Row], peaks: dict[str, float] | None = None) -> str:
    """A markdown table of rows (ratio = reference time / our time; > 1 means we are faster);
    '% of peak' compares a row's GFLOP/s with the measured roof at its precision."""
    head = "| benchmark | unit | ours | reference | ratio | GFLOP/s | % of peak | notes |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r.ref_s * 1e3:.2f} ms ({r.ref_name})" if r.ref_s is not None else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        gf = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        frac = f"{100 * r.gflops / roof(peaks, r.precision):.0f}%" if r.gflops and peaks else "-"
        notes = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        lines.append(
            f"| {r.name} | {r.unit} | {r.ours_s * 1e3:.2f} ms | {ref} | {ratio} | {gf} | {frac} | {notes} |"
        )
    return "\n".join(lines)


def bench_main(doc: str, collect: Callable[..., list[Row]]) -> None:
    """The command line shared by the benchmark scripts: --quick, --threads and --device."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and repeats (minutes)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = parser.parse_args()
    # the application's resolver: a GPU asked for and missing stops here, before any timing
    device = str(resolve_device(args.device))  # the suites take a name ("cpu", "cuda:1")
    if args.threads:
        torch.set_num_threads(args.threads)
    set_matmul_precision("fp32", device)  # true fp32 on CUDA too: no TF32 in ours or the references
    t0 = time.perf_counter()
    rows, peaks = measured_around(lambda: collect(quick=args.quick, device=device), device)
    print(f"{machine_line()}\npeaks ({device}): {describe_peaks(peaks)}\n")
    print(format_rows(rows, peaks))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
