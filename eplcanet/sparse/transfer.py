"""Transfer functions T_lambda that map LCA membrane potentials u (states) to activations a (acts).

Each function takes the states, the threshold ``lambda_`` (a float, or a tensor broadcastable to the
states, e.g. one value per feature of shape (1, F, 1, ..., 1)) and ``nonneg``; ``out`` lets the
solver loop write into a preallocated buffer instead of allocating a tensor every iteration.

The soft threshold is the proximal operator of lambda * ||a||_1 (plus the indicator of a >= 0 when
``nonneg``), which is what makes LCA and FISTA solve the LASSO; the hard threshold gives the
l0-like variant of Rozell et al. (2008), which has no convex objective.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor
Threshold = float | Tensor


def soft_threshold(
    states: Tensor, lambda_: Threshold, nonneg: bool = True, out: Tensor | None = None
) -> Tensor:
    """Soft threshold: sign(u) * max(|u| - lambda_, 0), or max(u - lambda_, 0) when ``nonneg``.

    Shapes: any; ``lambda_`` broadcasts against ``states``. Returns a tensor of the states' shape.
    """
    if nonneg:
        out = torch.sub(states, lambda_, out=out) if out is not None else states - lambda_
        return out.clamp_(min=0.0)
    # u - clamp(u, -lambda, lambda) is the soft threshold and needs no temporary beyond `out`.
    if out is None:
        return states - torch.clamp(states, -lambda_, lambda_)
    torch.clamp(states, -lambda_, lambda_, out=out)
    return torch.sub(states, out, out=out)


def hard_threshold(
    states: Tensor, lambda_: Threshold, nonneg: bool = True, out: Tensor | None = None
) -> Tensor:
    """Hard threshold: u where u > lambda_ (or |u| > lambda_ when signed), else 0.

    Shapes: any; ``lambda_`` broadcasts against ``states``. Returns a tensor of the states' shape.
    """
    keep = states > lambda_ if nonneg else states.abs() > lambda_
    if out is None:
        return states * keep
    return torch.mul(states, keep, out=out)


TRANSFER_FUNCS: dict[str, Callable[..., Tensor]] = {
    "soft_threshold": soft_threshold,
    "hard_threshold": hard_threshold,
}


def get_transfer(name: str) -> Callable[..., Tensor]:
    """The built-in transfer function called ``name`` ('soft_threshold' or 'hard_threshold')."""
    try:
        return TRANSFER_FUNCS[name]
    except KeyError:
        raise ValueError(
            f"transfer_func must be one of {sorted(TRANSFER_FUNCS)} or a callable "
            f"f(states, lambda_) -> acts, got {name!r}"
        ) from None
