"""Shared timing utilities for the benchmark scripts.

Every benchmark times our implementation and a reference formulation in the same process,
interleaved, and reports the ratio: absolute times on shared machines are noisy, ratios much less.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


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


def gemm_peak_gflops(device="cpu", n: int = 2048, dtype=torch.float32, repeat: int = 5) -> float:
    """Measured single-matmul throughput (GFLOP/s) of this device: the roofline's compute roof."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(lambda: a @ b, repeat=repeat, warmup=2, device=device)
    return 2 * n**3 / seconds / 1e9


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


def format_rows(rows: list[Row], peak_gflops: float | None = None) -> str:
    """A markdown table of rows (ratio = reference time / our time; > 1 means we are faster)."""
    head = "| benchmark | unit | ours | reference | ratio | GFLOP/s | % of GEMM peak | notes |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r.ref_s * 1e3:.2f} ms ({r.ref_name})" if r.ref_s is not None else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        gf = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        frac = f"{100 * r.gflops / peak_gflops:.0f}%" if r.gflops and peak_gflops else "-"
        notes = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        lines.append(
            f"| {r.name} | {r.unit} | {r.ours_s * 1e3:.2f} ms | {ref} | {ratio} | {gf} | {frac} | {notes} |"
        )
    return "\n".join(lines)
