"""Input preprocessing for sparse coding: per-sample standardisation and ZCA whitening.

Shapes: a batch is (batch, ...) with any number of trailing dimensions; statistics are taken per
sample over all non-batch dimensions (standardisation) or over the batch (whitening).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def make_zero_mean(batch: Tensor) -> Tensor:
    """Subtract each sample's mean (over all its non-batch dimensions)."""
    dims = tuple(range(1, batch.dim()))
    return batch - batch.mean(dim=dims, keepdim=True)


def make_unit_var(batch: Tensor, eps: float = 1e-12) -> Tensor:
    """Divide each sample by its standard deviation (over all its non-batch dimensions).

    ``eps`` keeps constant samples finite (they stay constant instead of becoming NaN).
    """
    dims = tuple(range(1, batch.dim()))
    return batch / (batch.std(dim=dims, keepdim=True) + eps)


class ZCAWhitener:
    """ZCA whitening fitted on a batch: x -> W (x - mean), W = U diag(1/sqrt(s + eps)) U^T.

    ZCA is the whitening transform closest to the identity, so whitened images still look like
    images (edges enhanced, low frequencies flattened), which is why it is the usual choice
    before learning convolutional dictionaries. ``eps`` regularises the small eigenvalues (noise).

    Usage: ``w = ZCAWhitener(eps=1e-2).fit(x)``; ``w.transform(x)``; ``w.inverse_transform(z)``.
    Works on samples of any shape; the fitted dimension is the product of the non-batch sizes
    (keep it below a few thousand: the covariance is D x D).
    """

    def __init__(self, eps: float = 1e-2) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps
        self.mean: Tensor | None = None
        self.matrix: Tensor | None = None
        self.inverse: Tensor | None = None

    def fit(self, batch: Tensor) -> ZCAWhitener:
        """Estimate mean and whitening matrix from ``batch`` (N, ...) with N >= 2."""
        if batch.shape[0] < 2:
            raise ValueError("ZCA whitening needs at least two samples to estimate a covariance")
        x = batch.flatten(1).to(torch.float64)
        self.mean = x.mean(0)
        xc = x - self.mean
        cov = xc.T @ xc / (x.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp(min=0.0)
        self.matrix = (evecs * (evals + self.eps).rsqrt()) @ evecs.T
        self.inverse = (evecs * (evals + self.eps).sqrt()) @ evecs.T
        return self

    def _check_fitted(self) -> None:
        if self.matrix is None:
            raise RuntimeError("ZCAWhitener.fit must be called before transform")

    def transform(self, batch: Tensor) -> Tensor:
        """Whitened copy of ``batch``, same shape and dtype."""
        self._check_fitted()
        x = batch.flatten(1).to(torch.float64)
        out = (x - self.mean) @ self.matrix
        return out.to(batch.dtype).reshape(batch.shape)

    def inverse_transform(self, batch: Tensor) -> Tensor:
        """Undo :meth:`transform` (exact up to rounding), same shape and dtype."""
        self._check_fitted()
        x = batch.flatten(1).to(torch.float64)
        out = x @ self.inverse + self.mean
        return out.to(batch.dtype).reshape(batch.shape)


def zca_whiten(batch: Tensor, eps: float = 1e-2) -> Tensor:
    """Whiten ``batch`` (N, ...) with ZCA fitted on itself; see :class:`ZCAWhitener`."""
    return ZCAWhitener(eps).fit(batch).transform(batch)
