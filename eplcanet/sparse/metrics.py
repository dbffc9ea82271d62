"""Metrics of a sparse code: the two terms of the LCA energy, sparsity counts and R^2.

Conventions (those of LCA-PyTorch, so that numbers are comparable): per-sample sums over every
non-batch dimension, then a mean over the batch. Every function returns a tensor (0-d unless
stated) and never calls ``.item()``, so it can run inside a loop without a host synchronisation.

Shapes: ``inputs`` and ``recons`` are (batch, ...input dims); ``acts`` is (batch, F, ...code
dims) for convolutional codes or (batch, F) for linear ones; a per-feature ``lambda_`` is a tensor
of shape (F,).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _per_sample_sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def _feature_view(lambda_: float | Tensor, acts: Tensor) -> float | Tensor:
    """lambda_ shaped to broadcast along the feature axis (dim 1) of ``acts``."""
    if isinstance(lambda_, Tensor) and lambda_.dim() > 0:
        return lambda_.reshape((1, -1) + (1,) * (acts.dim() - 2))
    return lambda_


def l1_sparsity(acts: Tensor, lambda_: float | Tensor) -> Tensor:
    """lambda * ||a||_1 per sample, averaged over the batch (the sparsity term of the energy)."""
    return _per_sample_sum(acts.abs() * _feature_view(lambda_, acts)).mean()


def l2_error(inputs: Tensor, recons: Tensor) -> Tensor:
    """1/2 ||x - D(a)||^2 per sample, averaged over the batch (the fidelity term of the energy)."""
    return 0.5 * _per_sample_sum((inputs - recons).square()).mean()


def total_energy(inputs: Tensor, recons: Tensor, acts: Tensor, lambda_: float | Tensor) -> Tensor:
    """E = 1/2 ||x - D(a)||^2 + lambda ||a||_1 per sample, averaged over the batch."""
    return l2_error(inputs, recons) + l1_sparsity(acts, lambda_)


def energy_per_sample(
    inputs: Tensor, recons: Tensor, acts: Tensor, lambda_: float | Tensor
) -> Tensor:
    """E for each sample: a tensor of shape (batch,)."""
    fidelity = 0.5 * _per_sample_sum((inputs - recons).square())
    return fidelity + _per_sample_sum(acts.abs() * _feature_view(lambda_, acts))


def frac_active(acts: Tensor) -> Tensor:
    """Fraction of nonzero code coefficients (0-d tensor in [0, 1])."""
    return (acts != 0).to(acts.dtype if acts.is_floating_point() else torch.float32).mean()


def times_active_by_feature(acts: Tensor) -> Tensor:
    """How many code coefficients of each feature are nonzero, over batch and positions: (F,)."""
    dims = [d for d in range(acts.dim()) if d != 1]
    return (acts != 0).sum(dim=dims)


def r_squared(inputs: Tensor, recons: Tensor) -> Tensor:
    """Coefficient of determination of the reconstruction, with per-feature centring.

    Every input dimension (channel and position) is centred on its mean over the batch:
    R^2 = 1 - sum ||x - D(a)||^2 / sum ||x - mean_batch(x)||^2, which is scikit-learn's
    ``r2_score(x, x_hat, multioutput='variance_weighted')`` on the flattened samples.
    Needs a batch of at least two samples.
    """
    x = inputs.flatten(1)
    residual = (x - recons.flatten(1)).square().sum()
    spread = (x - x.mean(0, keepdim=True)).square().sum()
    return 1.0 - residual / spread
