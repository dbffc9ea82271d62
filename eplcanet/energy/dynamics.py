"""Relaxation of an EnergyNet: the minimiser, separate from the gradient estimators.

How a network relaxes is fixed when it is built, by the ``Relaxation`` settings it is given.
By default every layer is updated synchronously, s_i <- sigma(dPhi/ds_i(s)), from the states of
the previous step. With ``Relaxation(update_order='alternate')`` a step first updates the even
layers, then the odd layers from the new even ones (each layer's gradient depends only on its
neighbours, so this is an exact block Gauss-Seidel sweep): it reaches the same fixed points in
about half the steps, each about as dear as a synchronous one (see ``relax``). It changes the
dynamics (and so what BPTT differentiates and the GDU comparison), hence it is off by default.

``relax`` uses the network's closed-form dPhi/ds and the input drive computed once;
``relax_autograd`` is the plain reference formulation (autograd of Phi at every step) kept for
tests and benchmarks.

With ``Relaxation(tol=...)`` a phase run by ``settle`` stops as soon as it has settled: when the
largest per-layer relative state change of one step, ||s_i(t) - s_i(t-1)|| / ||s_i(t)|| per
sample, falls below tol for every layer and every sample of the batch; the step count given is
then a cap. The change is that of the update the step has just computed (no extra convolution),
tested every ``check_every`` steps: each test is one host synchronisation, which on a GPU
drains the queue of asynchronous kernel launches, so it is not paid at every step; the price is
at most check_every - 1 steps past the settling point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import math

import torch

from ..kernels import native

if TYPE_CHECKING:
    from .networks import EnergyNet

UPDATE_ORDERS = ("sync", "alternate")
CONV_ALGOS = ("auto", "direct", "winograd")


def _one_of(value: str, accepted: tuple[str, ...], what: str) -> str:
    if value not in accepted:
        raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")
    return value


@dataclass(frozen=True)
class Relaxation:
    """How a network relaxes: the minimiser's settings, given to the network at construction
    (``EnergyNet(..., relaxation=Relaxation(...))``) and never changed on it afterwards; the
    estimators' schedule (steps, betas) is ``learning.Phases``.

    Args:
        update_order: 'sync' (every layer from the previous states) or 'alternate' (even
            layers, then odd layers from the new even ones).
        conv_algo: how the relaxation steps and the update convolve. 'auto': Winograd
            F(4x4, r x r) (``eplcanet.kernels.winograd``) where it was measured to pay (stride-1
            synapses, 3x3 with 128+ channels or 5x5 with 32+, on CPU in fp32 or fp64, when its C
            kernels could be built), the direct convolution of oneDNN / cuDNN elsewhere;
            'winograd': Winograd for every stride-1 3x3 and 5x5 synapse it can run (refused
            when the C kernels cannot be built); 'direct': never. Exact max-pool ties go to
            the first window position on every path (``pool_ties``), so in float64 all three
            give the direct convolution's trajectories and estimates to ~1e-12 (tested per
            tensor from zero states at CIFAR depth); in float32 a genuine near-tie (a gap of
            an ulp) can still be ordered either way, as it can between two machines;
            ``EnergyNet.phi`` (differentiated by autograd) always convolves directly.
        tol: stop a phase run by ``settle`` once the largest per-layer relative state change
            of a step is below tol for every sample (None: always the full step count). In
            float32 the change never falls much below 1e-7 (rounding): a smaller tol runs to
            the cap.
        check_every: k, the steps between two settling tests (one host synchronisation each);
            the default 5 costs at most 4 steps past the settling point.
    """

    update_order: str = "sync"
    conv_algo: str = "auto"
    tol: float | None = None
    check_every: int = 5

    def __post_init__(self) -> None:
        _one_of(self.update_order, UPDATE_ORDERS, "update order")
        _one_of(self.conv_algo, CONV_ALGOS, "conv algorithm")
        reason = native.why_unavailable() if self.conv_algo == "winograd" else None
        if reason is not None:
            raise ValueError(f"conv algorithm 'winograd' needs the compiled tile kernels: "
                             f"{reason}; use 'auto' or 'direct'")
        tol = self.tol
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                                or not math.isfinite(tol) or tol <= 0):
            raise ValueError(f"tol must be a finite number > 0 (or None: fixed step counts), "
                             f"got {tol!r}")
        k = self.check_every
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"check_every must be an int >= 1, got {k!r}")


def update_sweeps(net: EnergyNet, n_layers: int) -> list[range]:
    """The layer sets one step updates in turn, each from the states the previous set left: all
    layers at once ('sync'), or the even layers then the odd ones ('alternate')."""
    if net.relaxation.update_order == "alternate":
        return [range(0, n_layers, 2), range(1, n_layers, 2)]
    return [range(n_layers)]


def step(
    net: EnergyNet,
    drive: torch.Tensor,
    states: list[torch.Tensor],
    beta: float = 0.0,
    y: torch.Tensor | None = None,
    memo: dict | None = None,
) -> list[torch.Tensor]:
    """One update of all layers (closed form), in the sweeps of the network's update order.

    New states keep the dtype of the old ones: under bf16 autocast the convolutions run in bf16
    while the states stay in fp32, so rounding errors do not accumulate over the relaxation.
    `memo` (see ``relax``) carries pooled convolutions over from earlier steps.
    """
    new = list(states)
    memo = {} if memo is None else memo  # later sweeps find the layers they leave unchanged
    for layers in update_sweeps(net, len(states)):
        grads = net.phi_grad_states(drive, new, beta, y, set(layers), memo)
        for i in layers:
            new[i] = net.act(grads[i]).to(states[i].dtype)
    return new


def relax(
    net: EnergyNet,
    drive: torch.Tensor,
    states: list[torch.Tensor],
    steps: int,
    beta: float | torch.Tensor = 0.0,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Exactly `steps` updates from `states` (see ``step``), whatever the network's tol (the
    stepwise uses: BPTT, the GDU trajectories, attacks); `drive` = ``net.input_drive(x)``.

    Runs under the caller's grad mode: call it inside ``torch.no_grad()`` for EP phases (no graph
    is kept, so memory does not grow with `steps`) and with grad enabled for BPTT.

    In the alternating order a synapse is needed in both sweeps, once for each of its layers,
    and its input layer changes in only one of them: a memo kept across the steps lets the
    other sweep reuse the pooled convolution, so an alternating step convolves as much as a
    synchronous one. (The synchronous order changes every layer at every step: nothing to reuse.)
    """
    return _run(net, drive, states, steps, beta, y, None)[0]


def settle(
    net: EnergyNet,
    drive: torch.Tensor,
    states: list[torch.Tensor],
    max_steps: int,
    beta: float | torch.Tensor = 0.0,
    y: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], int]:
    """(states, steps used): ``relax`` until settled under the network's ``Relaxation.tol``, at
    most `max_steps` steps (exactly that many without a tol). The states are those ``relax``
    gives after the returned number of steps, bit for bit.

    The whole batch stops together, when its least settled sample is below tol (not a norm
    over the batch, in which one unsettled sample would hide among the settled ones). Stopping
    each sample on its own would save nothing without shrinking the batch, and shrinking it
    (gathering the unsettled samples at every test) would give the convolutions new shapes
    and split the +beta / -beta halves that run as one batch; it would not change the
    estimate either, since a settled sample moves by less than tol per step.
    """
    return _run(net, drive, states, max_steps, beta, y, net.relaxation.tol)


def _run(net, drive, states, steps, beta, y, tol):
    memo = {} if len(update_sweeps(net, len(states))) > 1 else None
    k = net.relaxation.check_every
    for t in range(1, steps + 1):
        new = step(net, drive, states, beta, y, memo)
        done = tol is not None and t % k == 0 and t < steps and settled(states, new, tol)
        states = new
        if done:
            return states, t
    return states, steps


def settled(old: list[torch.Tensor], new: list[torch.Tensor], tol: float) -> bool:
    """Whether ||new_i - old_i|| / ||new_i|| < tol for every layer i and every sample (norms
    over each sample's units; a layer that is zero and stays zero has not moved). One host
    synchronisation."""
    worst = []
    for a, b in zip(old, new):
        dims = tuple(range(1, b.dim()))
        change = torch.linalg.vector_norm(b - a, dim=dims)
        size = torch.linalg.vector_norm(b, dim=dims)
        worst.append((change / size.clamp_min(torch.finfo(size.dtype).tiny)).max())
    return bool(torch.stack(worst).max() < tol)


def autograd_step(
    net: EnergyNet,
    x: torch.Tensor,
    states: list[torch.Tensor],
    beta: float = 0.0,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Reference update: sigma(dPhi/ds) with dPhi/ds from autograd of Phi, in the same sweeps as
    ``step``."""
    new = list(states)
    for layers in update_sweeps(net, len(states)):
        with torch.enable_grad():
            leaves = [s.detach().requires_grad_(True) for s in new]
            grads = torch.autograd.grad(net.phi(x, leaves, beta, y).sum(), leaves)
        for i in layers:
            new[i] = net.act(grads[i])
    return new


def relax_autograd(
    net: EnergyNet,
    x: torch.Tensor,
    states: list[torch.Tensor],
    steps: int,
    beta: float = 0.0,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """`steps` reference updates (autograd of Phi per step): slow, for tests and benchmarks."""
    for _ in range(steps):
        states = autograd_step(net, x, states, beta, y)
    return states
