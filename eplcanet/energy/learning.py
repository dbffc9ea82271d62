"""Gradient estimators: Equilibrium Propagation (one-sided, random sign, symmetric), BPTT, and
the GDU check that compares them step by step.

Every estimator leaves an estimate of dLoss/dtheta in the parameters' ``.grad``, so any torch
optimizer performs the update, and returns an ``Estimate``: the free equilibrium and the steps
its phases took (fewer than T1 / T2 when the network's ``Relaxation.tol`` stops them early).
Continual EP (``cep_grads``) is the exception: it updates the weights itself at every nudged
step, through the update it is given, and says so in ``Estimate.applied``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from .dynamics import relax, settle
from .networks import EnergyNet, VF_CNN



@dataclass(frozen=True)
class Phases:
    """Relaxation schedule: T1 free steps at betas[0], T2 nudged steps at betas[1]."""

    T1: int
    T2: int
    betas: tuple[float, float]
    random_sign: bool = False
    thirdphase: bool = False
    # Run the +beta and -beta phases as one batch of twice the size: the same arithmetic in
    # half the kernel launches, at twice the state memory.
    batch_phases: bool = True
    # Holomorphic EP (--alg hEP): the number of betas on its circle of radius |betas[1]|.
    hep_points: int = 4

    def __post_init__(self) -> None:
        if self.T1 < 1 or self.T2 < 1:
            raise ValueError(f"T1 and T2 must be >= 1, got T1={self.T1}, T2={self.T2}")
        if self.hep_points < 2:
            raise ValueError(f"hep_points must be >= 2, got {self.hep_points}")
        if self.betas[1] == self.betas[0]:
            raise ValueError(f"the two betas must differ, got {self.betas}")


@dataclass(frozen=True)
class Estimate:
    """What an estimator returns besides the gradients: the free equilibrium (one (batch, ...)
    tensor per layer) and the steps its free phase and its longest nudged phase took."""

    states: list[torch.Tensor]
    free_steps: int
    nudged_steps: int
    # The estimator has already updated the weights (CEP): the caller must not step again.
    applied: bool = False


def _params(net: EnergyNet) -> list[torch.nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def _write_grads(net: EnergyNet, grads) -> None:
    for p, g in zip(_params(net), grads):
        p.grad = torch.zeros_like(p) if g is None else g.detach()
    if isinstance(net, VF_CNN) and net.same_update:
        for i in range(1, len(net.feedback)):
            net.feedback[i].weight.grad = net.synapses[i].weight.grad.clone()


Grads = tuple[torch.Tensor | None, ...]


def phi_param_grads(net: EnergyNet, x: torch.Tensor, y: torch.Tensor, states_a: list[torch.Tensor],
                    beta_a: float, states_b: list[torch.Tensor], beta_b: float,
                    over: float | None = None) -> Grads:
    """EP estimate of dLoss/dtheta from two equilibria at betas a and b (batch mean):

        -(dPhi/dtheta(s_b; beta_b) - dPhi/dtheta(s_a; beta_a)) / (beta_b - beta_a),

    one entry per trainable parameter (None where Phi does not depend on it). The difference is
    taken in closed form, state differences first (``EnergyNet.phi_param_grad_diff``).
    `over` replaces beta_b - beta_a as the divisor (CEP's steps between two states at the same
    beta divide by the phase's beta2 - beta1).
    """
    # In fp32 even under bf16 autocast: the estimate is a difference divided by a small beta,
    # which bf16 rounding would swamp. It costs about one forward and backward pass per
    # minibatch, against T1 + 2 T2 relaxation steps.
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        diff = net.phi_param_grad_diff(x, y, [s.detach() for s in states_a], beta_a,
                                       [s.detach() for s in states_b], beta_b)
    scale = -1.0 / (beta_b - beta_a if over is None else over)
    return tuple(diff[p] * scale if p in diff else None for p in _params(net))


def phi_param_grads_autograd(net: EnergyNet, x: torch.Tensor, y: torch.Tensor,
                             states_a: list[torch.Tensor], beta_a: float,
                             states_b: list[torch.Tensor], beta_b: float) -> Grads:
    """The same estimate by autograd of Phi at each equilibrium, then the difference: the plain
    formulation of reference EP code, kept as the reference for tests and benchmarks (in float32
    it loses the lower layers' digits, see ``EnergyNet.phi_param_grad_diff``)."""
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        sa = [s.detach() for s in states_a]
        sb = [s.detach() for s in states_b]
        diff = net.phi(x, sa, beta_a, y).mean() - net.phi(x, sb, beta_b, y).mean()
        return torch.autograd.grad(diff / (beta_b - beta_a), _params(net), allow_unused=True)


def free_phase(net: EnergyNet, x: torch.Tensor, steps: int, beta: float = 0.0, y=None,
               init: list[torch.Tensor] | None = None):
    """(drive, states, steps used) after at most `steps` free steps from `init` (default: zero
    states), fewer when the network's tol finds them settled; without an autograd graph."""
    with torch.no_grad():
        drive = net.input_drive(x)
        start = net.init_states(x.shape[0]) if init is None else init
        states, used = settle(net, drive, start, steps, beta, y)
    return drive, states, used


class StateBank:
    """Every training sample's last free equilibrium, by dataset index (--warm-start).

    Kept in float16 on `device`: the states only start a relaxation, for which half precision's
    three digits are plenty, and the bank holds one set of states per training sample (60k
    numbers per image for the CIFAR-size CNN; ``nbytes`` says how much in all).
    """

    def __init__(self, net: EnergyNet, n_samples: int, device, dtype=torch.float16) -> None:
        self.layers = [torch.zeros(n_samples, *shape, dtype=dtype, device=device)
                       for shape in net.state_shapes]
        self.known = torch.zeros(n_samples, dtype=torch.bool, device=device)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.layers)

    def lookup(self, idx: torch.Tensor, device, dtype: torch.dtype) -> list[torch.Tensor] | None:
        """The stored states of samples idx, on `device` in `dtype` (conv layers channels-last,
        as ``EnergyNet.init_states`` lays them out); None unless every one of them has been
        stored (one host sync per minibatch)."""
        idx = idx.to(self.known.device)
        if not bool(self.known[idx].all()):
            return None
        out = []
        for bank in self.layers:
            s = bank[idx].to(device=device, dtype=dtype)
            out.append(s.contiguous(memory_format=torch.channels_last) if s.dim() == 4 else s)
        return out

    def store(self, idx: torch.Tensor, states: list[torch.Tensor]) -> None:
        idx = idx.to(self.known.device)
        for bank, s in zip(self.layers, states):
            bank[idx] = s.detach().to(device=bank.device, dtype=bank.dtype)
        self.known[idx] = True


def _settle_both_signs(net: EnergyNet, drive, states, steps: int, beta: float, y):
    """The +beta and -beta relaxations from the same states, as one batch (settling together);
    returns (plus, minus, steps used)."""
    n = drive.shape[0]
    signs = torch.cat([drive.new_full((n,), beta), drive.new_full((n,), -beta)])
    both, used = settle(net, torch.cat([drive, drive]), [torch.cat([s, s]) for s in states],
                        steps, signs, torch.cat([y, y]))
    return [s[:n] for s in both], [s[n:] for s in both], used


def _second_beta(phases: Phases, generator: torch.Generator | None) -> float:
    """beta2, its sign drawn at random (one draw per minibatch) with ``random_sign``."""
    b1, b2 = phases.betas
    if phases.random_sign and b1 == 0.0:
        sign = 1.0 if torch.randint(0, 2, (1,), generator=generator).item() else -1.0
        b2 = sign * b2
    return b2


def ep_grads(
    net: EnergyNet,
    x: torch.Tensor,
    y: torch.Tensor,
    phases: Phases,
    generator: torch.Generator | None = None,
    init: list[torch.Tensor] | None = None,
) -> Estimate:
    """Run the EP phases on a minibatch, write the estimate to ``.grad``; return the free states
    and the steps taken.

    The free phase runs T1 steps from `init` (default: zero states), the nudged ones T2; with
    the network's ``Relaxation.tol`` these are caps and each phase stops once settled (the
    batched +beta / -beta phases together).

    One-sided: free equilibrium at beta1 vs nudged at beta2 (its sign drawn at random per minibatch
    with ``random_sign``). Symmetric (``thirdphase``): nudged at +beta2 vs nudged at -beta2, both
    started from the free equilibrium; this cancels the first-order bias of the estimate.
    """
    b1 = phases.betas[0]
    drive, free, free_steps = free_phase(net, x, phases.T1, b1, y, init)
    b2 = _second_beta(phases, generator)
    # The nudged phases run outside autocast: under bf16 each step's fields carry rounding noise
    # of ~2^-9 of their size, different in the +beta and -beta phases, which swamps the small
    # state differences of the lowest layers (per-tensor cosine 0.07 on the CIFAR-size net with
    # bf16 nudged phases; docs/performance.md). The drive is widened, not recomputed (LCA_CNN's
    # drive is a whole LCA solve); its rounding is common to both phases.
    drive = drive.float() if drive.dtype in (torch.bfloat16, torch.float16) else drive
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        if phases.thirdphase and phases.batch_phases:
            plus, minus, nudged_steps = _settle_both_signs(net, drive, free, phases.T2, b2, y)
        else:
            plus, nudged_steps = settle(net, drive, free, phases.T2, b2, y)
            if phases.thirdphase:
                minus, minus_steps = settle(net, drive, free, phases.T2, -b2, y)
                nudged_steps = max(nudged_steps, minus_steps)
    net.on_nudged(x, plus, b2)  # e.g. LCA_CNN's dictionary learns from the nudged copy layer
    if phases.thirdphase:
        grads = phi_param_grads(net, x, y, minus, -b2, plus, b2)
    else:
        grads = phi_param_grads(net, x, y, free, b1, plus, b2)
    _write_grads(net, grads)
    return Estimate(free, free_steps, nudged_steps)


def cep_grads(net: EnergyNet, x: torch.Tensor, y: torch.Tensor, phases: Phases,
              update: Callable[[], None], generator: torch.Generator | None = None,
              record: dict | None = None) -> Estimate:
    """Continual EP on a minibatch: T1 free steps, then T2 nudged steps at beta2 (its sign drawn
    per minibatch with ``random_sign``), updating the weights after every one of them.

    After nudged step t (s_t from s_{t-1} with the current weights, s_0 the free equilibrium)
    the per-step estimate

        g_t = -(dPhi/dtheta(s_t; beta2) - dPhi/dtheta(s_{t-1}; beta_{t-1})) / (beta2 - beta1)

    (beta_0 = beta1, then beta2) goes to ``.grad`` and ``update()`` applies it (train_epoch: SGD
    with the layer-wise --lrs, theta <- theta - lr g_t), so the next step relaxes with the moved
    weights and the moved input drive. With fixed weights the g_t telescope to the one-sided EP
    estimate, and each is the increment of ``gdu_traces``' "ep_onesided" trace (the GDU check
    of CEP compares these increments with BPTT's). The one-sided estimate only: no third phase.

    Leaves the sum of the applied g_t in ``.grad`` (the divergence watch reads it); returns the
    free states with ``applied=True``. `record` (a dict) receives "beta" (the signed beta2) and
    "steps" (the g_t, a list of per-parameter tuples), for --cep-debug and the tests.
    """
    if phases.thirdphase:
        raise ValueError("CEP is one-sided: its steps move the weights, so there is no second "
                         "nudged phase from the same weights (use Phases(thirdphase=False))")
    b1 = phases.betas[0]
    _, prev, free_steps = free_phase(net, x, phases.T1, b1, y)
    free = prev
    b2 = _second_beta(phases, generator)
    params = _params(net)
    total = [torch.zeros_like(p) for p in params]
    steps = []
    beta_prev = b1
    for _ in range(phases.T2):
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            drive = net.input_drive(x)  # W_0 moved at the last update
            new = relax(net, drive, prev, 1, b2, y)
        _write_grads(net, phi_param_grads(net, x, y, prev, beta_prev, new, b2, over=b2 - b1))
        update()
        with torch.no_grad():
            step_grads = tuple(p.grad.clone() for p in params)
            for acc, g in zip(total, step_grads):
                acc += g
        if record is not None:
            steps.append(step_grads)
        prev, beta_prev = new, b2
    for p, g in zip(params, total):
        p.grad = g
    if record is not None:
        record.update(beta=b2, steps=steps)
    return Estimate(free, free_steps, phases.T2, applied=True)


def cep_vs_ep(net_before: EnergyNet, x: torch.Tensor, y: torch.Tensor, phases: Phases,
              record: dict) -> dict[str, dict[str, float]]:
    """--cep-debug: per parameter, the summed per-step updates of a CEP minibatch (`record`
    from ``cep_grads``) against the one-shot one-sided EP estimate of the same minibatch, at the
    same signed beta2, from the weights before it (`net_before`, a copy that is consumed): their
    norms, cosine and relative difference |sum - EP| / |EP|. Equal (up to the update's effect
    on the later steps) when the learning rates are small."""
    b2 = record["beta"]
    one_shot = Phases(phases.T1, phases.T2, (phases.betas[0], b2), thirdphase=False)
    ep_grads(net_before, x, y, one_shot)
    out = {}
    names = [n for n, p in net_before.named_parameters() if p.requires_grad]
    for k, (name, p) in enumerate(zip(names, _params(net_before))):
        cep = sum(step[k] for step in record["steps"]).flatten()
        ep = p.grad.flatten()
        tiny = torch.finfo(ep.dtype).tiny
        out[name] = {"cep_norm": float(cep.norm()), "ep_norm": float(ep.norm()),
                     "cosine": float(cep @ ep / (cep.norm() * ep.norm()).clamp_min(tiny)),
                     "rel_diff": float((cep - ep).norm() / ep.norm().clamp_min(tiny))}
    return out


def cep_step_traces(traces: dict[str, dict[str, torch.Tensor]]
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """The GDU traces of ``gdu_traces`` as per-step increments, for CEP: "cep", the k-th
    increment of the one-sided EP trace (CEP's update at nudged step k as lr -> 0), and "bptt",
    the k-th increment of the BPTT trace (what backpropagating through one more step adds)."""
    def increments(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:1], t[1:] - t[:-1]])

    return {n: {"bptt": increments(tr["bptt"]), "cep": increments(tr["ep_onesided"])}
            for n, tr in traces.items()}


def step_cosines(steps: dict[str, dict[str, torch.Tensor]], key: str = "cep") -> dict[str, list]:
    """Per parameter, the cosine of trace `key` with BPTT at every step k (per tensor): for the
    per-step traces of ``cep_step_traces``, whose last increments are near zero once the nudged
    phase has settled, the final-step cosine of ``gdu_metrics`` alone says little. None where
    both are zero (a step that has not reached a layer yet)."""
    out = {}
    for name, tr in steps.items():
        e, g = tr[key].flatten(1), tr["bptt"].flatten(1)
        norms = e.norm(dim=1) * g.norm(dim=1)
        cos = (e * g).sum(1) / norms.clamp_min(torch.finfo(e.dtype).tiny)
        out[name] = [None if n == 0 else float(c) for c, n in zip(cos, norms)]
    return out


def settling_steps(net: EnergyNet, x: torch.Tensor, y: torch.Tensor,
                   phases: Phases) -> dict[str, int]:
    """The steps the free and (longest) nudged phase of an EP minibatch on (x, y) take under
    the network's tol (T1 and T2 without one). On a copy of the network, whose gradients and
    dictionary step are dropped."""
    est = ep_grads(copy.deepcopy(net), x, y, phases)
    return {"free_steps": est.free_steps, "nudged_steps": est.nudged_steps}


def bptt_grads(net: EnergyNet, x: torch.Tensor, y: torch.Tensor, phases: Phases) -> Estimate:
    """Backprop through the last T2 of T1 free steps (truncated BPTT); write grads; return the
    states (T1 free steps, no nudged phase)."""
    if net.relaxation.tol is not None:
        raise ValueError("BPTT differentiates a fixed number of steps and cannot stop when "
                         "settled: build the network without tol (tol applies to EP)")
    with torch.no_grad():
        drive = net.input_drive(x)
        states = relax(net, drive, net.init_states(x.shape[0]), phases.T1 - phases.T2)
    with torch.enable_grad():
        drive = net.input_drive(x)
        states = relax(net, drive, states, phases.T2)
        loss = net.loss_per_sample(states, y).mean()
        grads = torch.autograd.grad(loss, _params(net), allow_unused=True)
    _write_grads(net, grads)
    return Estimate([s.detach() for s in states], phases.T1, 0)


# --------------------------------------------------------------------------------- GDU check
def gdu_traces(
    net: EnergyNet, x: torch.Tensor, y: torch.Tensor, T1: int, T2: int, beta: float
) -> dict[str, dict[str, torch.Tensor]]:
    """Cumulative EP estimates and truncated-BPTT gradients for k = 1 .. T2 steps.

    Starting from the free equilibrium s* (T1 steps), the GDU theorem states that the EP estimate
    after k nudged steps, -(dPhi/dtheta(s_k^beta) - dPhi/dtheta(s*))/beta, approaches the BPTT
    gradient of the loss backpropagated through the last k steps of the free phase as beta -> 0.
    Returns, per parameter name, tensors (T2, *param.shape) for "bptt", "ep_onesided" and
    "ep_symmetric" (the latter from the +beta and -beta trajectories). With the network's tol,
    s* is the free phase settled (at most T1 steps); the k-step trajectories are stepwise.
    """
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = _params(net)
    drive, s_star, _ = free_phase(net, x, T1)
    out = {n: {"bptt": [], "ep_onesided": [], "ep_symmetric": []} for n in names}
    plus, minus = s_star, s_star
    for k in range(1, T2 + 1):
        with torch.enable_grad():
            d = net.input_drive(x)
            s = relax(net, d, [t.detach() for t in s_star], k)
            loss = net.loss_per_sample(s, y).mean()
            g_bptt = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            plus = relax(net, drive, plus, 1, beta, y)
            minus = relax(net, drive, minus, 1, -beta, y)
        g_one = phi_param_grads(net, x, y, s_star, 0.0, plus, beta)
        g_sym = phi_param_grads(net, x, y, minus, -beta, plus, beta)
        for n, p, a, b, c in zip(names, params, g_bptt, g_one, g_sym):
            for key, g in (("bptt", a), ("ep_onesided", b), ("ep_symmetric", c)):
                out[n][key].append(torch.zeros_like(p) if g is None else g.detach())
    return {n: {k: torch.stack(v) for k, v in d.items()} for n, d in out.items()}


def gdu_metrics(traces: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, dict]]:
    """Per parameter and EP variant: relative RMSE over the trajectory, sign agreement and cosine
    similarity of the final (k = T2) estimate with BPTT."""
    result = {}
    for name, tr in traces.items():
        g = tr["bptt"]
        result[name] = {}
        for key in [k for k in tr if k != "bptt"]:  # the EP variants (CEP: "cep")
            e = tr[key]
            scale = torch.maximum(e.norm(), g.norm()).clamp_min(1e-30)
            fe, fg = e[-1].flatten(), g[-1].flatten()
            cos = (fe @ fg) / (fe.norm() * fg.norm()).clamp_min(1e-30)
            nz = (fe != 0) | (fg != 0)
            agree = ((torch.sign(fe) == torch.sign(fg)) & nz).sum() / nz.sum().clamp_min(1)
            result[name][key] = {
                "rel_rmse": float((e - g).norm() / scale),
                "sign_agreement": float(agree),
                "cosine": float(cos),
            }
    return result
