"""Relaxation of an EnergyNet: the minimiser, separate from the gradient estimators.

By default every layer is updated synchronously, s_i <- sigma(dPhi/ds_i(s)), from the states of
the previous step. With ``net.update_order = 'alternate'`` a step first updates the even layers,
then the odd layers from the new even ones (each layer's gradient depends only on its
neighbours, so this is an exact block Gauss-Seidel sweep): it reaches the same fixed points in
about half the steps, each about as dear as a synchronous one (see ``relax``). It changes the
dynamics (and so what BPTT differentiates and the GDU comparison), hence it is off by default.

``relax`` uses the network's closed-form dPhi/ds and the input drive computed once;
``relax_autograd`` is the plain reference formulation (autograd of Phi at every step) kept for
tests and benchmarks.
"""

from __future__ import annotations

import torch

from .networks import EnergyNet


def update_sweeps(net: EnergyNet, n_layers: int) -> list[range]:
    """The layer sets one step updates in turn, each from the states the previous set left: all
    layers at once ('sync'), or the even layers then the odd ones ('alternate')."""
    if net.update_order == "alternate":
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
    """One update of all layers (closed form), in the sweeps of ``net.update_order``.

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
