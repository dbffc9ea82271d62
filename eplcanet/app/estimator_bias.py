"""The bias of the EP estimators against the exact gradient, and their cost per minibatch.

    python -m eplcanet.app.estimator_bias [--figure images/estimator_bias.png] [--repeats 5]
                                      [--threads 1]

prints two markdown tables (docs/estimators.md): the per-tensor relative error of one-sided,
symmetric and holomorphic EP (N = 4, 8) at each |beta| on a 64-32-10 sigmoid MLP and eight
digits images, in float64 (and two of them in float32), against the gradient of the loss at the free equilibrium by implicit
differentiation (``implicit_grads``); and the time of one minibatch of each estimator on a digits
MLP and CNN (median of --repeats, on --threads threads). --figure also draws the errors against
|beta|.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from ..energy.dynamics import relax_autograd
from ..energy.holomorphic import hep_grads
from ..energy.learning import Phases, _params, ep_grads
from ..energy.networks import P_CNN, P_MLP, EnergyNet

RADII = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
# (label, points): None for the two-phase EP estimates
ESTIMATORS = (("one-sided EP", None), ("symmetric EP", None), ("hEP N=4", 4), ("hEP N=8", 8))


def implicit_grads(net: EnergyNet, x: torch.Tensor, y: torch.Tensor,
                   steps: int) -> list[torch.Tensor]:
    """dLoss/dtheta at the free equilibrium (mean loss over the batch) by implicit
    differentiation, independently of the estimators' closed forms: the fixed point
    s* = F(s*) = sigma(dPhi/ds(s*)) reached by `steps` reference steps (autograd of Phi), the
    Jacobian J = dF/ds at s* by autograd, and

        dL/dtheta = dL/dtheta|_s* + lambda^T dF/dtheta,   (I - J)^T lambda = dL/ds*.

    J is dense (batch x units squared): for small networks. One tensor per trainable parameter;
    raises ValueError if `steps` did not reach the fixed point to 1e-12."""
    with torch.no_grad():
        free = relax_autograd(net, x, net.init_states(x.shape[0]), steps)
    shapes, sizes = [s.shape for s in free], [s.numel() for s in free]

    def unflat(z):
        return [c.view(shape) for c, shape in zip(torch.split(z, sizes), shapes)]

    def fixed_point_map(z):
        states = unflat(z)
        grads = torch.autograd.grad(net.phi(x, states).sum(), states, create_graph=True)
        return torch.cat([net.act(g).flatten() for g in grads])

    z = torch.cat([s.flatten() for s in free]).detach().requires_grad_(True)
    residual = float((fixed_point_map(z) - z).detach().abs().max())
    if residual > 1e-12:
        raise ValueError(f"{steps} steps leave the free phase {residual:.1e} from its fixed point")
    jac = torch.autograd.functional.jacobian(fixed_point_map, z)
    params = _params(net)
    loss = net.loss_per_sample(unflat(z), y).mean()
    dl = torch.autograd.grad(loss, [z, *params], allow_unused=True)
    eye = torch.eye(z.numel(), dtype=z.dtype, device=z.device)
    lam = torch.linalg.solve((eye - jac).T, dl[0])
    df = torch.autograd.grad(fixed_point_map(z), params, grad_outputs=lam, allow_unused=True)
    return [sum(g for g in (a, b) if g is not None) + torch.zeros_like(p)
            for a, b, p in zip(dl[1:], df, params)]


def estimate(net: EnergyNet, x, y, label: str, points: int | None, phases: Phases):
    """The gradient estimate of one of ESTIMATORS, per parameter (it also stays in .grad)."""
    if points is None:
        ep_grads(net, x, y, Phases(phases.T1, phases.T2, phases.betas,
                                   thirdphase=label.startswith("symmetric")))
    else:
        hep_grads(net, x, y, phases, points)
    return [p.grad.clone() for p in _params(net)]


def relative_errors(est, ref) -> list[float]:
    """Per tensor: ||est - ref|| / ||ref||."""
    return [float((e - r).norm() / r.norm()) for e, r in zip(est, ref)]


def digits_batch(n: int = 8):
    """The first n digits images (pixels in [0, 1], flattened) and labels, in float64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:n] / 16.0, dtype=torch.float64)
    return x, torch.tensor(data.target[:n])


def bias_rows(radii=RADII, steps: int = 100) -> dict[str, list[list[float]]]:
    """Per estimator label, per radius: the per-tensor relative errors on the 64-32-10 MLP, in
    float64, and for symmetric EP and hEP N=4 also in float32 (against the same float64
    gradient: bias plus float32 rounding)."""
    torch.manual_seed(0)
    net = P_MLP([64, 32, 10], act="sigmoid", softmax=True, loss="cel").double()
    x, y = digits_batch()
    ref = implicit_grads(net, x, y, 2 * steps)
    net32 = copy.deepcopy(net).float()
    runs = [(label, points, net, x) for label, points in ESTIMATORS]
    runs += [(f"{label}, float32", points, net32, x.float()) for label, points in
             (ESTIMATORS[1], ESTIMATORS[2])]
    rows: dict[str, list[list[float]]] = {label: [] for label, *_ in runs}
    for r in radii:
        phases = Phases(steps, steps, (0.0, r))
        for label, points, model, inputs in runs:
            est = estimate(model, inputs, y, label, points, phases)
            rows[label].append(relative_errors([e.double() for e in est], ref))
    return rows


def cost_rows(repeats: int = 5) -> dict[str, dict[str, float]]:
    """Seconds per minibatch (median of `repeats`, after one warm-up; the estimators take turns,
    so a load that comes and goes on a shared machine falls on all of them) of each estimator
    (and hEP N=2) on a 64-256-10 MLP and a 16-32 channel average-pooled CNN, digits-sized random
    inputs, batch 32, T1 = 20, T2 = 8, float32."""
    torch.manual_seed(0)
    nets = {"MLP 64-256-10": (P_MLP([64, 256, 10], act="sigmoid", softmax=True, loss="cel"),
                              torch.rand(32, 64)),
            "CNN 16-32 (aa)": (P_CNN((1, 8, 8), [16, 32], [3, 3], [1, 1], [1, 1], "aa", [10],
                                     act="sigmoid", softmax=True, loss="cel"),
                               torch.rand(32, 1, 8, 8))}
    y = torch.randint(0, 10, (32,))
    phases = Phases(20, 8, (0.0, 0.5))
    which = (ESTIMATORS[0], ESTIMATORS[1], ("hEP N=2", 2), *ESTIMATORS[2:])
    out: dict[str, dict[str, float]] = {}
    for name, (net, x) in nets.items():
        times: dict[str, list[float]] = {label: [] for label, _ in which}
        for _ in range(repeats + 1):
            for label, points in which:
                t = time.perf_counter()
                estimate(net, x, y, label, points, phases)
                times[label].append(time.perf_counter() - t)
        out[name] = {label: statistics.median(t[1:]) for label, t in times.items()}
    return out


def draw(rows, radii, path: Path) -> Path:
    """Max per-tensor relative error against |beta|, one line per estimator (log-log)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    for label, errors in rows.items():
        ax.loglog(radii, [max(e) for e in errors], marker="o", label=label,
                  linestyle="--" if "float32" in label else "-")
    ax.set_xlabel("|beta|")
    ax.set_ylabel("max per-tensor relative error")
    ax.set_title("EP estimators vs the exact gradient\n64-32-10 sigmoid MLP, 8 digits images",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eplcanet.app.estimator_bias", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figure", type=Path, default=None, help="also draw the errors here (PNG)")
    p.add_argument("--repeats", type=int, default=5, help="timed minibatches per estimator")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the timings (1: other jobs on a shared machine do "
                        "not stall a thread team)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = bias_rows()
    print("| estimator | " + " | ".join(f"r = {r:g}" for r in RADII) + " |")
    print("|---|" + "---|" * len(RADII))
    for label, errors in rows.items():
        cells = [f"{max(e):.1e} ({statistics.median(e):.1e})" for e in errors]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    costs = cost_rows(args.repeats)
    labels = list(next(iter(costs.values())))
    print("| network | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name, times in costs.items():
        base = times["symmetric EP"]
        print(f"| {name} | " + " | ".join(f"{1e3 * t:.1f} ms ({t / base:.2f}x)"
                                          for t in times.values()) + " |")
    if args.figure is not None:
        print(f"wrote {draw(rows, RADII, args.figure)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
