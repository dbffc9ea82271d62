"""Matching pursuit encode: our gathered pursuit against a one-hot formulation.

The reference is the usual way to write MP in an autograd framework: each step expands the
chosen atom to a one-hot (batch, n_atoms) row, accumulates codes with it and subtracts
``onehot @ Phi``. Ours gathers the chosen atom rows and, with the dictionary as encoder,
differentiates through a backward that keeps O(k * batch) numbers. Both compute the same codes,
residuals and gradients (checked before timing).

Memory is what the autograd graph holds between forward and backward: the bytes of the distinct
storages saved for backward, found with ``torch.autograd.graph.saved_tensors_hooks`` (inputs and
parameters excluded, since they exist anyway). On CUDA the peak allocation during forward+backward
is reported too.

    python -m benchmarks.bench_mp [--quick] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, bench_main, sync, time_pair
from eplcanet.sparse.pursuit import matching_pursuit

MIB = 2**20


def onehot_pursuit(
    x: torch.Tensor, dictionary: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: MP with 'relu' selection written with one-hot rows (batch, n_atoms) per step.

    Same arithmetic as ours for the scores and coefficients, so it picks the same atoms.
    """
    n_atoms = dictionary.shape[0]
    norm2 = dictionary.square().sum(1)
    norms = norm2.sqrt()
    unit = dictionary / norms[:, None]
    residual, codes = x, torch.zeros(x.shape[0], n_atoms, dtype=x.dtype, device=x.device)
    for _ in range(k):
        scores = residual @ unit.T
        best, idx = scores.max(dim=1)
        onehot = F.one_hot(idx, n_atoms).to(x.dtype)
        raw = (scores * onehot).sum(1) * (onehot * norms).sum(1)
        coef = torch.where(best > 0, raw.clamp_min(0) / (onehot * norm2).sum(1), 0)
        to_add = onehot * coef[:, None]
        codes = codes + to_add
        residual = residual - to_add @ dictionary
    return residual, codes


def _loss(residual: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    # uses both outputs, so backward runs through both
    return residual.square().mean() + 1e-3 * codes.abs().mean()


def saved_bytes(fn, exclude: list[torch.Tensor]) -> tuple[float, object]:
    """Bytes of the distinct storages autograd saves while running fn (excluding `exclude`)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return float(sum(seen.values())), out


def cuda_peak_bytes(fn) -> float | None:
    """Peak bytes allocated on CUDA above the starting level while fn runs (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)


def _problem(batch: int, dim: int, n_atoms: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g).to(device)
    d = torch.randn(n_atoms, dim, generator=g)
    d = (d / d.norm(dim=1, keepdim=True)).to(device).requires_grad_()
    return x, d


def check_same(x: torch.Tensor, d: torch.Tensor, k: int) -> dict:
    """Codes, residuals and dictionary gradients of ours and the reference, compared."""
    outs, grads = [], []
    for fn in (matching_pursuit, onehot_pursuit):
        res, codes = fn(x, d, k)
        grads.append(torch.autograd.grad(_loss(res, codes), d)[0])
        outs.append((res.detach(), codes.detach()))
    (r0, c0), (r1, c1) = outs
    same_support = ((c0 != 0) == (c1 != 0)).all(1).float().mean().item()
    code_err = max((c0 - c1).abs().max().item(), (r0 - r1).abs().max().item())
    grad_err = ((grads[0] - grads[1]).norm() / grads[1].norm()).item()
    if same_support < 0.99 or code_err > 1e-3 or grad_err > 1e-3:
        raise AssertionError(
            f"ours and one-hot disagree: same support {same_support:.3f}, "
            f"max code/residual diff {code_err:.2e}, grad rel diff {grad_err:.2e}"
        )
    return {"same_support": f"{same_support:.3f}", "grad_rel_diff": f"{grad_err:.1e}"}


def collect(quick: bool = False, device: str = "cpu") -> list[Row]:
    """Rows: MP forward+backward and forward-only, ours vs one-hot, with graph memory."""
    if quick:
        batch, dim, n_atoms, k, repeat = 128, 256, 1024, 8, 3
    else:
        batch, dim, n_atoms, k, repeat = 512, 512, 4096, 16, 5
    x, d = _problem(batch, dim, n_atoms, device)
    shape = f"batch={batch}, in={dim}, atoms={n_atoms}, k={k}"
    agreement = check_same(x, d, k)

    def fwd_bwd(fn):
        def run():
            res, codes = fn(x, d, k)
            torch.autograd.grad(_loss(res, codes), d)

        return run

    ours, ref = fwd_bwd(matching_pursuit), fwd_bwd(onehot_pursuit)
    t_ours, t_ref = time_pair(ours, ref, repeat=repeat, warmup=1, device=device)

    mem_ours, _ = saved_bytes(lambda: matching_pursuit(x, d, k), [x, d])
    mem_ref, _ = saved_bytes(lambda: onehot_pursuit(x, d, k), [x, d])
    extra = {
        "graph_MiB_ours": f"{mem_ours / MIB:.2f}",
        "graph_MiB_ref": f"{mem_ref / MIB:.1f}",
        "memory_ratio": f"{mem_ref / max(mem_ours, 1):.0f}x",
        **agreement,
        "device": device,
    }
    peak_ours, peak_ref = cuda_peak_bytes(ours), cuda_peak_bytes(ref)
    if peak_ours is not None:
        extra["cuda_peak_MiB_ours"] = f"{peak_ours / MIB:.1f}"
        extra["cuda_peak_MiB_ref"] = f"{peak_ref / MIB:.1f}"
    # forward arithmetic of ours: one (batch x dim x atoms) correlation per step
    flops = 2.0 * batch * dim * n_atoms * k
    rows = [Row(f"MP encode fwd+bwd ({shape})", "batch", t_ours, t_ref, "one-hot", flops, extra)]

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn(x, d, k)

        return run

    t_ours, t_ref = time_pair(
        no_grad(matching_pursuit), no_grad(onehot_pursuit), repeat=repeat, device=device
    )
    rows.append(
        Row(f"MP encode forward, no grad ({shape})", "batch", t_ours, t_ref, "one-hot", flops)
    )
    sync(device)
    return rows


if __name__ == "__main__":
    bench_main(__doc__, collect)
