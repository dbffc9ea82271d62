"""How well-posed a recipe's gradient is: settling of the phases, sensitivity of the estimate,
agreement between convolution algorithms and between EP and BPTT, all per tensor.

A researcher comparing a CPU run with a GPU run, or a fast path with the direct one, needs to
know whether two estimates that differ point to a defect or to the recipe itself (an estimate
that a 1e-12 change of the input already moves cannot be reproduced across machines). These
functions take a built network and a few samples and return plain rows (lists of dicts) that
``eplcanet.app.diagnose`` writes as CSV and plots; nothing here reads flags or writes files.

    settle_trace(net, x, y, phases)        relative state change per layer and step, per phase
    settle_steps(trace, tol)               the step at which each phase settles
    estimate(net, x, y, alg, phases)       the gradient estimate, by parameter name
    agreement(a, b)                        per-tensor cosine and relative error of two estimates
    pool_pick_report(net, x, steps)        where a fast convolution's max-pool picks differ from
                                           the direct one's, with and without the tie rule
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..kernels import native
from ..kernels.winograd import WinogradConvs, eligible
from .dynamics import step
from .lcacnn import LCA_CNN
from .estimators import estimate_grads
from .learning import Phases
from .networks import EnergyNet
from .pool_ties import first_identical


def relative_change(old: torch.Tensor, new: torch.Tensor) -> float:
    """||new - old|| / ||new|| over the whole batch (0 when both are zero)."""
    scale = float(new.norm())
    diff = float((new - old).norm())
    return diff / scale if scale > 0 else diff


def _nudged_phases(phases: Phases) -> list[tuple[str, float]]:
    b2 = phases.betas[1]
    return [("nudged +beta", b2), ("nudged -beta", -b2)] if phases.thirdphase else \
        [("nudged", b2)]


@torch.no_grad()
def settle_trace(net: EnergyNet, x: torch.Tensor, y: torch.Tensor,
                 phases: Phases) -> list[dict]:
    """Rows (phase, step, layer, rel_change): the free phase (T1 steps at beta1 from zero states)
    and each nudged phase (T2 steps from the free equilibrium), one row per layer and step."""
    rows: list[dict] = []

    def run(name, start, steps, beta):
        states = start
        for t in range(1, steps + 1):
            new = step(net, drive, states, beta, y)
            rows.extend({"phase": name, "step": t, "layer": i,
                         "rel_change": relative_change(s, n)}
                        for i, (s, n) in enumerate(zip(states, new)))
            states = new
        return states

    drive = net.input_drive(x)
    free = run("free", net.init_states(x.shape[0]), phases.T1, phases.betas[0])
    for name, beta in _nudged_phases(phases):
        run(name, free, phases.T2, beta)
    return rows


def settle_steps(trace: list[dict], tol: float = 1e-6) -> dict[str, int | None]:
    """Per phase, the first step after which the largest per-layer relative change is below
    tol (None: not within the phase's steps)."""
    worst: dict[str, dict[int, float]] = {}
    for r in trace:
        per_step = worst.setdefault(r["phase"], {})
        per_step[r["step"]] = max(per_step.get(r["step"], 0.0), r["rel_change"])
    return {phase: next((t for t in sorted(steps) if steps[t] < tol), None)
            for phase, steps in worst.items()}


def estimate(net: EnergyNet, x: torch.Tensor, y: torch.Tensor, alg: str,
             phases: Phases) -> dict[str, torch.Tensor]:
    """The gradient estimate of `alg` ('EP' or 'BPTT') on (x, y) from zero states, by parameter
    name, computed on a copy in eval mode (so nothing of `net`, e.g. an LCA dictionary, moves)."""
    work = copy.deepcopy(net).eval()
    for p in work.parameters():
        p.grad = None
    estimate_grads(work, x, y, alg, phases)
    return {n: p.grad.detach().clone() for n, p in work.named_parameters() if p.grad is not None}


def agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per tensor of b: cosine similarity and relative error ||a - b|| / ||b|| of a against b
    (cosine 1 and error 0 for two zero tensors)."""
    out = {}
    for name, tb in b.items():
        fa, fb = a[name].flatten().double(), tb.flatten().double()
        na, nb = float(fa.norm()), float(fb.norm())
        if na == 0 and nb == 0:
            out[name] = {"cosine": 1.0, "rel_err": 0.0}
            continue
        cos = float(fa @ fb) / (na * nb) if na > 0 and nb > 0 else 0.0
        out[name] = {"cosine": cos, "rel_err": float((fa - fb).norm()) / max(nb, 1e-300)}
    return out


@torch.no_grad()
def pool_pick_report(net: EnergyNet, x: torch.Tensor, steps: int) -> list[dict]:
    """Along the direct free trajectory from zero states, for every max-pooled conv synapse
    above the input that the Winograd path can take: per step, how many max-pool picks of the
    Winograd convolution differ from the direct convolution's on the same states, raw
    ('raw_diff') and after the tie rule of ``pool_ties`` ('rule_diff'), and the largest gap
    between the two picked direct values ('direct_gap': 0 for exact ties; a positive gap is a
    genuine near-tie that rounding can order either way). Empty when the kernels are missing."""
    if native.why_unavailable() is not None:
        return []
    direct = net.with_relaxation(conv_algo="direct")
    fast = WinogradConvs()
    # Synapse i convolves states[i - 1]; in LCA_CNN synapse 0 already convolves the copy layer
    # states[0] (every synapse i convolves states[i]), elsewhere synapse 0 convolves the input.
    offset = 1 if isinstance(direct, LCA_CNN) else 0
    layers = [i for i in range(1 - offset, direct.n_conv) if direct.pools[i] == "m"]
    rows: list[dict] = []
    drive = direct.input_drive(x)
    states = direct.init_states(x.shape[0])
    for t in range(1, steps + 1):
        for i in layers:
            conv, inp = direct.synapses[i], states[i - 1 + offset]
            if not eligible(conv, inp, everywhere=True):
                continue
            h = conv(inp)
            _, idx = F.max_pool2d(h, 2, 2, return_indices=True)
            _, raw = F.max_pool2d(fast.forward(conv, inp), 2, 2, return_indices=True)
            ruled = first_identical(raw.clone(), inp, conv, h.shape[-2:])
            flat = h.flatten(2)
            differ = idx != ruled
            gap = (flat.gather(2, idx.flatten(2)) - flat.gather(2, ruled.flatten(2))).abs()
            rows.append({"step": t, "synapse": i, "raw_diff": int((idx != raw).sum()),
                         "rule_diff": int(differ.sum()),
                         "direct_gap": float(gap.flatten()[differ.flatten()].max())
                         if bool(differ.any()) else 0.0})
        states = step(direct, drive, states)
    return rows
