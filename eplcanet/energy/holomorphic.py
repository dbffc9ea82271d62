"""Holomorphic Equilibrium Propagation (--alg hEP): the gradient from nudged phases at complex
betas on a circle around the free phase.

With an analytic activation and linear synapses (average or no pooling) every relaxation step is
a holomorphic function of the states and of beta, so the nudged equilibrium s*(beta) and

    g(beta) = dPhi/dtheta(x, s*(beta); beta)

are analytic in beta near 0. The EP theorem in this code's sign convention (``learning.
phi_param_grads``) reads dLoss/dtheta = -g'(0), and Cauchy's formula on the circle of radius r
gives g'(0) from N samples of it:

    g'(0) ~= 1 / (N r) * sum_k g(beta_k) exp(-2 pi i k / N),   beta_k = r exp(2 pi i k / N).

Its error is the aliasing of the higher Taylor terms, O(r^N) (N = 2 is the symmetric estimate,
betas +r and -r; its bias is O(r^2)), so a finite nudge of the size at which the network's
response is well above rounding still gives the gradient of the loss at the free equilibrium.
Each g(beta_k) is taken as a difference from the free equilibrium, in closed form
(``EnergyNet.phi_param_grad_diff``, run on complex states); the weights exp(-2 pi i k / N) sum
to zero, so subtracting g(0) changes nothing but the rounding.

The parameters, the input and the labels are real, so s*(conj beta) = conj s*(beta): the phase
at beta_{N-k} is the conjugate of the one at beta_k, and only k = 0 .. N // 2 are relaxed (the
others enter as twice the real part). k = 0 and, for even N, k = N / 2 lie on the real axis and
relax in real arithmetic; the others relax on complex states (complex128 for float64 states,
complex64 otherwise), whose convolutions and matmuls apply the real weights to the real and
imaginary parts (``networks._by_parts``). A minibatch then costs N real nudged phases' worth of
arithmetic, against 2 for symmetric EP: 4 for N = 4 (two real, one complex phase).
"""

from __future__ import annotations

import cmath

import torch

from .activations import ANALYTIC
from .dynamics import relax
from .learning import Estimate, Phases, _params, _write_grads, free_phase
from .networks import P_CNN, P_MLP, EnergyNet


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of holomorphic EP's states: complex128 for float64 states (the digits
    the tests compare), complex64 otherwise (fp32 states; bf16 autocast keeps states in fp32)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def check_holomorphic(net: EnergyNet) -> None:
    """Raise ValueError unless net's relaxation is holomorphic in its states: a P_MLP or P_CNN
    (a vector field's feedback weights or an LCA front end have no energy whose nudged
    equilibria the theorem is about), an analytic activation, no max pooling."""
    if type(net) not in (P_MLP, P_CNN):
        raise ValueError(f"holomorphic EP runs on P_MLP and P_CNN, not {type(net).__name__}")
    if net.act_name not in ANALYTIC:
        raise ValueError(f"holomorphic EP needs an analytic activation ({', '.join(ANALYTIC)}), "
                         f"got {net.act_name!r}")
    if "m" in net.pools:
        raise ValueError(f"max pooling is not holomorphic: pools {net.pools!r} has 'm'; "
                         "accepted: 'a' (average), 'i' (none)")


def circle_points(radius: float, points: int) -> list[tuple[complex, float | complex]]:
    """(beta_k, weight) for the relaxed half of the circle, k = 0 .. points // 2: weight is the
    Cauchy coefficient exp(-2 pi i k / N) of a point on the real axis (real beta), and twice it
    for the others, which stand for their conjugate partners too (only real parts are kept)."""
    out = []
    for k in range(points // 2 + 1):
        if 2 * k == points:  # beta = -r, exactly real
            out.append((-radius, -1.0))
        elif k == 0:
            out.append((radius, 1.0))
        else:
            w = cmath.exp(-2j * cmath.pi * k / points)
            out.append((radius / w, 2 * w))  # radius * exp(+2 pi i k / N)
    return out


def _relax_each(net: EnergyNet, drive, states, steps: int, betas: list, y, batched: bool):
    """The equilibria after `steps` nudged steps from `states`, one per beta: as one batch of
    len(betas) copies (per-sample betas) or one relaxation each."""
    if not batched or len(betas) == 1:
        return [relax(net, drive, states, steps, b, y) for b in betas]
    n, k = drive.shape[0], len(betas)
    per_sample = torch.cat([drive.new_full((n,), b) for b in betas])
    both = relax(net, torch.cat([drive] * k), [torch.cat([s] * k) for s in states], steps,
                 per_sample, torch.cat([y] * k))
    return [[s[j * n:(j + 1) * n] for s in both] for j in range(k)]


def hep_grads(net: EnergyNet, x: torch.Tensor, y: torch.Tensor, phases: Phases,
              points: int) -> Estimate:
    """Holomorphic EP on a minibatch: T1 free steps at beta 0, then T2 nudged steps from the
    free equilibrium at each of `points` betas r exp(2 pi i k / points), r = |betas[1]|
    (``circle_points``: the conjugate half is not relaxed); writes the estimate of dLoss/dtheta
    to ``.grad`` and returns the free states and the steps taken."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"holomorphic EP needs points >= 2 on the circle, got {points!r}")
    if phases.betas[0] != 0.0:
        raise ValueError(f"holomorphic EP's circle is centred on the free phase: betas[0] must "
                         f"be 0, got {phases.betas[0]}")
    if net.relaxation.tol is not None:
        raise ValueError("holomorphic EP relaxes its nudged phases for exactly T2 steps: build "
                         "the network without tol")
    check_holomorphic(net)
    radius = abs(phases.betas[1])
    drive, free, free_steps = free_phase(net, x, phases.T1)
    # The nudged phases and the estimate in fp32 even under bf16 autocast, as in ep_grads.
    drive = drive.float() if drive.dtype in (torch.bfloat16, torch.float16) else drive
    on_circle = circle_points(radius, points)
    real = [(b, w) for b, w in on_circle if isinstance(b, float)]
    cplx = [(b, w) for b, w in on_circle if not isinstance(b, float)]
    cdtype = complex_dtype(free[0].dtype)
    sums: dict[torch.nn.Parameter, torch.Tensor] = {}
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        groups = [(real, x, drive, free)]
        if cplx:
            groups.append((cplx, x.to(cdtype), drive.to(cdtype), [s.to(cdtype) for s in free]))
        for group, x_in, drive_in, free_in in groups:
            ends = _relax_each(net, drive_in, free_in, phases.T2, [b for b, _ in group], y,
                               phases.batch_phases)
            for (beta, weight), nudged in zip(group, ends):
                diff = net.phi_param_grad_diff(x_in, y, free_in, 0.0, nudged, beta)
                for p, g in diff.items():
                    term = (weight * g).real if g.is_complex() else weight * g
                    sums[p] = term if p not in sums else sums[p] + term
    scale = -1.0 / (points * radius)
    _write_grads(net, tuple(sums[p] * scale if p in sums else None for p in _params(net)))
    return Estimate(free, free_steps, phases.T2)
