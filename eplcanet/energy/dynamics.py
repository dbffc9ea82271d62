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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
            when the C kernels cannot be built); 'direct': never. They agree to float rounding;
            ``EnergyNet.phi`` (differentiated by autograd) always convolves directly.
    """

    update_order: str = "sync"
    conv_algo: str = "auto"

    def __post_init__(self) -> None:
        _one_of(self.update_order, UPDATE_ORDERS, "update order")
        _one_of(self.conv_algo, CONV_ALGOS, "conv algorithm")
        reason = native.why_unavailable() if self.conv_algo == "winograd" else None
        if reason is not None:
            raise ValueError(f"conv algorithm 'winograd' needs the compiled tile kernels: "
                             f"{reason}; use 'auto' or 'direct'")


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
    beta: float = 0.0,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """`steps` updates from `states` (see ``step``); `drive` = ``net.input_drive(x)``.

    Runs under the caller's grad mode: call it inside ``torch.no_grad()`` for EP phases (no graph
    is kept, so memory does not grow with `steps`) and with grad enabled for BPTT.

    In the alternating order a synapse is needed in both sweeps, once for each of its layers,
    and its input layer changes in only one of them: a memo kept across the steps lets the
    other sweep reuse the pooled convolution, so an alternating step convolves as much as a
    synchronous one. (The synchronous order changes every layer at every step: nothing to reuse.)
    """
    memo = {} if len(update_sweeps(net, len(states))) > 1 else None
    for _ in range(steps):
        states = step(net, drive, states, beta, y, memo)
    return states


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
