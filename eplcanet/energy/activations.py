"""Neuron activation functions sigma(.) of the energy-based networks (the seed's --act names)."""

from __future__ import annotations

from typing import Callable

import torch

Activation = Callable[[torch.Tensor], torch.Tensor]


def complex_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """sigmoid of a complex tensor in real arithmetic (holomorphic EP's complex phases): torch's
    complex sigmoid and tanh are not vectorised (tens of times a real call on CPU) and give NaN
    where exp(-z) overflows. With w = exp(-s z), s = sign(Re z), so |w| <= 1 never overflows,
    and w = p - i s q: sigmoid(z) = 1 / (1 + w) for s = 1 and w / (1 + w) for s = -1, both
    (... + i q) / |1 + w|^2 written out without cancellation."""
    a, b = z.real, z.imag
    m = torch.exp(-a.abs())
    p, q = m * torch.cos(b), m * torch.sin(b)
    den = (1 + p) ** 2 + q ** 2
    re = torch.where(a >= 0, 1 + p, p * (1 + p) + q * q)
    return torch.complex(re / den, q / den)


def complex_tanh(z: torch.Tensor) -> torch.Tensor:
    """tanh of a complex tensor in real arithmetic (see complex_sigmoid): tanh(z) =
    s (1 - w) / (1 + w) with w = exp(-2 s z), s = sign(Re z), |w| <= 1; the real part of 1 - w
    is 1 - exp(-2|a|) cos 2b = -expm1(-2|a|) + 2 exp(-2|a|) sin^2 b, a sum of non-negative
    terms, so tanh keeps its relative precision near 0."""
    a, b = z.real, z.imag
    s = torch.where(a >= 0, 1.0, -1.0).to(a.dtype)
    m = torch.exp(-2 * a.abs())
    sin_b, cos_b = torch.sin(b), torch.cos(b)
    nr = -torch.expm1(-2 * a.abs()) + 2 * m * sin_b ** 2  # Re(1 - w)
    ni = 2 * m * sin_b * cos_b  # s Im(1 - w) = -s Im(1 + w), i.e. m sin 2b
    dr = 1 + m * (1 - 2 * sin_b ** 2)  # Re(1 + w)
    den = dr ** 2 + ni ** 2
    # (1 - w) conj(1 + w) = (nr dr - ni^2) + i s ni (dr + nr), and dr + nr = 2
    return torch.complex(s * (nr * dr - ni ** 2) / den, 2 * ni / den)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """torch.tanh, and its holomorphic extension for complex x."""
    return complex_tanh(x) if x.is_complex() else torch.tanh(x)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """torch.sigmoid, and its holomorphic extension for complex x."""
    return complex_sigmoid(x) if x.is_complex() else torch.sigmoid(x)


def mysig(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(4x - 2): a sigmoid whose [0, 1] transition spans roughly x in [0, 1]."""
    return sigmoid(4 * x - 2)


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
    "sigmoid": sigmoid,
    "tanh": tanh,
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
