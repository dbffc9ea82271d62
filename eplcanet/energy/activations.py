"""Neuron activation functions sigma(.) of the energy-based networks (the seed's --act names)."""

from __future__ import annotations

from typing import Callable

import torch

Activation = Callable[[torch.Tensor], torch.Tensor]


def mysig(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(4x - 2): a sigmoid whose [0, 1] transition spans roughly x in [0, 1]."""
    return torch.sigmoid(4 * x - 2)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """clamp(x, 0, 1)."""
    return x.clamp(0, 1)


def my_hard_sig(x: torch.Tensor) -> torch.Tensor:
    """clamp(x / 2, 0, 1): the hard sigmoid used by the seed's CIFAR-10 runs."""
    return (0.5 * x).clamp(0, 1)


def ctrd_hard_sig(x: torch.Tensor) -> torch.Tensor:
    """clamp(x, -0.5, 0.5): a hard sigmoid centred on zero."""
    return x.clamp(-0.5, 0.5)


ACTIVATIONS: dict[str, Activation] = {
    "mysig": mysig,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hard_sigmoid": hard_sigmoid,
    "my_hard_sig": my_hard_sig,
    "ctrd_hard_sig": ctrd_hard_sig,
}


# The activations that are analytic functions, whose closed forms torch evaluates on complex
# tensors as their holomorphic extensions (holomorphic EP needs it); the clamps are not analytic.
ANALYTIC = ("mysig", "sigmoid", "tanh")


def get_activation(name: str) -> Activation:
    """The activation called `name`; raises ValueError listing the accepted names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; accepted: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
