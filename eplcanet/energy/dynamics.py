"""Relaxation of an EnergyNet: the minimiser, separate from the gradient estimators.

Every layer is updated synchronously, s_i <- sigma(dPhi/ds_i(s)), from the states of the previous
step. ``relax`` uses the network's closed-form dPhi/ds and the input drive computed once;
``relax_autograd`` is the plain reference formulation (autograd of Phi at every step) kept for
tests and benchmarks.
"""

from __future__ import annotations

import torch

from .networks import EnergyNet


def step(
    net: EnergyNet,
    drive: torch.Tensor,
    states: list[torch.Tensor],
    beta: float = 0.0,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """One synchronous update of all layers (closed form).

    New states keep the dtype of the old ones: under bf16 autocast the convolutions run in bf16
    while the states stay in fp32, so rounding errors do not accumulate over the relaxation.
    """
    grads = net.phi_grad_states(drive, states, beta, y)
    return [net.act(g).to(s.dtype) for g, s in zip(grads, states)]


def relax(
    net: EnergyNet,
    drive: torch.Tensor,
    states: list[torch.Tensor],
    steps: int,
    beta: float = 0.0,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """`steps` synchronous updates from `states`; `drive` = ``net.input_drive(x)``.

    Runs under the caller's grad mode: call it inside ``torch.no_grad()`` for EP phases (no graph
    is kept, so memory does not grow with `steps`) and with grad enabled for BPTT.
    """
    for _ in range(steps):
        states = step(net, drive, states, beta, y)
    return states


def autograd_step(
    net: EnergyNet,
    x: torch.Tensor,
    states: list[torch.Tensor],
    beta: float = 0.0,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Reference update: sigma(dPhi/ds) with dPhi/ds from autograd of Phi at the current states."""
    with torch.enable_grad():
        leaves = [s.detach().requires_grad_(True) for s in states]
        grads = torch.autograd.grad(net.phi(x, leaves, beta, y).sum(), leaves)
    return [net.act(g) for g in grads]


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
