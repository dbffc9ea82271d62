"""LCA sparse coding: our residual-form layer against the explicit-Gram formulation.

The reference is LCA as LCA-PyTorch computes it: the lateral term a*G is one convolution of the
codes with the F x F Gram kernel G = Phi*Phi - I (built once per forward pass, as there), then
u <- u + (b - u - a*G) / tau. Ours evaluates the same update in residual form (one transposed
convolution to reconstruct, one convolution to correlate, on a space-to-depth layout; on CPU
both run as fused Winograd F(4x4, 5x5) kernels). The reference gets every advantage we take
that applies to it: channels-last memory, in-place updates, no per-iteration allocation.

Two objectives: the reference's Gram kernel uncrops the atoms, so it minimises the energy of the
zero-padded input; our layer's 'same' padding crops them (the exact objective on the input). The
benchmark therefore checks, before timing, that our layer with pad='valid' on the zero-padded
input gives the reference's codes, and times both our variants.

Time to energy: iterations and seconds to come within 0.1% of the optimal energy (found by a long
FISTA run) for solver='lca' with tau=100 (LCA-PyTorch's default) and for solver='fista'.

    python -m benchmarks.bench_lca [--quick] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, bench_main, time_pair
from eplcanet.data import natural_image_patches
from eplcanet.sparse import LCAConv2D, make_unit_var, make_zero_mean

# The configuration of the issue: LCA-RCNN's frontend on CIFAR-sized colour images.
BATCH, CHANNELS, SIZE, FEATURES, KERNEL, STRIDE, LAMBDA = 32, 3, 32, 64, 9, 2, 0.25


class GramLCA:
    """Reference LCA on the explicit Gram kernel; same Euler update, lcapt's 'same' padding."""

    def __init__(self, weights: torch.Tensor, stride: int, lambda_: float, tau: float) -> None:
        self.w, self.stride, self.lambda_, self.tau = weights, stride, lambda_, tau
        k = weights.shape[-1]
        self.pad = k // 2
        self.reach = (k - 1) // stride

    def gram(self) -> torch.Tensor:
        w = self.w
        g = F.conv2d(w, w, stride=self.stride, padding=self.reach * self.stride)
        idx = torch.arange(w.shape[0], device=w.device)
        g[idx, idx, self.reach, self.reach] -= 1.0
        return g.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, iters: int) -> torch.Tensor:
        g = self.gram()
        drive = F.conv2d(x, self.w, stride=self.stride, padding=self.pad)
        drive = drive.contiguous(memory_format=torch.channels_last)
        u = torch.zeros_like(drive)
        a = torch.zeros_like(drive)
        rate = 1.0 / self.tau
        for _ in range(iters):
            lateral = F.conv2d(a, g, padding=self.reach)
            # u <- u + (b - u - a*G) / tau, in place: lateral <- b - a*G, then a lerp
            torch.sub(drive, lateral, out=lateral)
            torch.lerp(u, lateral, rate, out=u)
            torch.sub(u, self.lambda_, out=a).clamp_(min=0.0)
        return a.contiguous()


def image_batch(batch: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """Real photograph crops (scikit-image), standardised per image like the layer's default."""
    x = natural_image_patches(SIZE, batch, seed=seed, gray=False)
    return make_unit_var(make_zero_mean(x)).to(device)


def make_layer(device="cpu", **kwargs) -> LCAConv2D:
    torch.manual_seed(0)
    settings = {
        "out_neurons": FEATURES,
        "in_neurons": CHANNELS,
        "kernel_size": KERNEL,
        "stride": STRIDE,
        "lambda_": LAMBDA,
        "tau": 100.0,
        "input_zero_mean": False,
        "input_unit_var": False,
    }
    return LCAConv2D(**{**settings, **kwargs}).to(device)


def conv_flops(batch: int, code: int) -> tuple[float, float]:
    """Arithmetic of one iteration: (ours, reference). Ours: two convolutions between F codes and
    C * s^2 channels with ceil(k / s)^2 taps; reference: one F x F convolution, (2m + 1)^2 taps."""
    taps = -(-KERNEL // STRIDE)
    ours = 2 * 2 * batch * FEATURES * CHANNELS * STRIDE**2 * taps**2 * code**2
    reach = 2 * ((KERNEL - 1) // STRIDE) + 1
    ref = 2 * batch * FEATURES * FEATURES * reach**2 * code**2
    return float(ours), float(ref)


def iteration_rows(iters: int, repeat: int, batch: int, device="cpu") -> list[Row]:
    x = image_batch(batch, device=device)
    pad = KERNEL // 2
    same = make_layer(device, lca_iters=iters, pad="same")
    valid = make_layer(device, lca_iters=iters, pad="valid")
    ref = GramLCA(same.weights.detach(), STRIDE, LAMBDA, 100.0)
    x_padded = F.pad(x, (pad,) * 4)

    with torch.no_grad():
        codes_ref = ref(x, iters)
        codes_valid = valid(x_padded)
        codes_same = same(x)
    # Same objective, same codes: our layer on the zero-padded input vs the Gram reference.
    scale = float(codes_ref.abs().max())
    err = float((codes_valid - codes_ref).abs().max())
    if not err <= 1e-4 * max(scale, 1.0):
        raise AssertionError(f"codes differ from the Gram reference: max |diff| {err:.2e}")
    del codes_same  # ran once so that both layers are warm; its objective differs at borders

    rows = []
    f_ours, f_ref = conv_flops(batch, SIZE // STRIDE)
    variants = (
        ("'same' (cropped objective)", same, x, "exact objective on the input"),
        ("'valid' on padded input", valid, x_padded, f"max |code - ref code| = {err:.1e}"),
    )
    for name, layer, inp, note in variants:
        with torch.no_grad():
            t_ours, t_ref = time_pair(
                partial(layer, inp), partial(ref, x, iters), repeat=repeat, warmup=0,
                device=device,
            )
        rows.append(
            Row(
                name=f"LCA iteration, LCAConv2D {name}",
                unit="iteration",
                ours_s=t_ours / iters,
                ref_s=t_ref / iters,
                ref_name="explicit Gram",
                flops=f_ours,
                extra={
                    "batch": batch,
                    "iters": iters,
                    "ref GFLOP/s": f"{f_ref / (t_ref / iters) / 1e9:.1f}",
                    "codes": note,
                },
            )
        )
    return rows


def first_within(trace: torch.Tensor, target: float) -> int:
    hits = torch.nonzero(trace <= target)
    return int(hits[0]) + 1 if len(hits) else -1


def time_to_energy_rows(batch: int, lca_budget: int, repeat: int, device="cpu") -> list[Row]:
    x = image_batch(batch, seed=1, device=device)
    with torch.no_grad():
        best = make_layer(device, solver="fista", lca_iters=3000, track_metrics=True)
        best(x)
        optimum = float(best.metrics["TotalEnergy"].min())
        target = optimum * (1 + 1e-3)
        traces = {}
        for solver, budget in (("lca", lca_budget), ("fista", 1000)):
            layer = make_layer(device, solver=solver, lca_iters=budget, track_metrics=True)
            layer(x)
            traces[solver] = layer.metrics["TotalEnergy"]
            optimum = min(optimum, float(traces[solver].min()))
    n_lca, n_fista = first_within(traces["lca"], target), first_within(traces["fista"], target)
    if n_lca < 0 or n_fista < 0:
        raise AssertionError(f"no solver reached 0.1% of the optimum: lca {n_lca}, fista {n_fista}")
    lca = make_layer(device, solver="lca", lca_iters=n_lca)
    fista = make_layer(device, solver="fista", lca_iters=n_fista)
    with torch.no_grad():
        t_fista, t_lca = time_pair(lambda: fista(x), lambda: lca(x), repeat=repeat, warmup=0,
                                   device=device)
    return [
        Row(
            name="time to 0.1% of the optimal energy: fista vs lca (tau=100)",
            unit="solve",
            ours_s=t_fista,
            ref_s=t_lca,
            ref_name="solver='lca', tau=100",
            extra={"batch": batch, "iters fista": n_fista, "iters lca": n_lca},
        )
    ]


def collect(quick: bool = False, device: str = "cpu") -> list[Row]:
    """Benchmark rows; quick mode (well under a minute) uses fewer images and iterations."""
    if quick:
        rows = iteration_rows(iters=20, repeat=2, batch=8, device=device)
        return rows + time_to_energy_rows(batch=2, lca_budget=4000, repeat=1, device=device)
    rows = iteration_rows(iters=600, repeat=3, batch=BATCH, device=device)
    return rows + time_to_energy_rows(batch=8, lca_budget=6000, repeat=3, device=device)


if __name__ == "__main__":
    bench_main(__doc__, collect)
