"""Input preprocessing for sparse coding: per-sample standardisation and ZCA whitening.

Shapes: a batch is (batch, ...) with any number of trailing dimensions; statistics are taken per
sample over all non-batch dimensions (standardisation) or over the batch (whitening). The
convolutional whitening of images (``fit_conv_whitening``, ``conv_whiten``) is the ZCA of
k x k patches applied at every pixel, so it whitens images of any size with a (C, C, k, k) kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def standardise(batch: Tensor) -> Tensor:
    """Per-sample zero mean and unit variance: the input convention of the learned dictionaries."""
    return make_unit_var(make_zero_mean(batch))


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


def fit_conv_whitening(
    images: Tensor,
    size: int,
    eps: float = 0.1,
    max_patches: int | None = 50_000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """ZCA whitening of ``size`` x ``size`` patches of ``images`` (N, C, H, W), as a convolution.

    The images are standardised per sample, their patches (all of them, or ``max_patches`` drawn
    with ``generator``) whitened by :class:`ZCAWhitener` with ``eps`` (added to the eigenvalues;
    standardised pixels have unit variance, so eps is relative to the mean eigenvalue 1). Output
    channel c of the kernel is the row of the ZCA matrix that gives the centre pixel of channel c
    from the whole patch, so ``conv_whiten`` whitens each pixel from its neighbourhood.

    Returns (kernel (C, C, size, size), bias (C,)) in float32; the bias applies the patch mean.
    """
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"the whitening size must be an odd int >= 1, got {size!r}")
    if images.dim() != 4 or min(images.shape[-2:]) < size:
        raise ValueError(
            f"fit_conv_whitening needs images (N, C, H, W) of at least {size} x {size} pixels, "
            f"got shape {tuple(images.shape)}"
        )
    zca = ZCAWhitener(eps).fit(_patches(standardise(images.to(torch.float64)), size,
                                        max_patches, generator))
    channels = images.shape[1]
    centre = (size // 2) * size + size // 2
    rows = [c * size * size + centre for c in range(channels)]
    # transform(p) = (p - mean) @ M: output pixel j is column j of M (M is symmetric)
    kernel = zca.matrix[:, rows].T.reshape(channels, channels, size, size)
    bias = -(zca.mean @ zca.matrix[:, rows])
    return kernel.float().contiguous(), bias.float().contiguous()


def _patches(images: Tensor, size: int, limit: int | None,
             generator: torch.Generator | None) -> Tensor:
    """Every size x size patch of images (N, C, H, W), or `limit` of them drawn uniformly, as
    rows (patches, C * size * size) in (channel, row, column) order. Only the drawn patches are
    gathered: all of CIFAR's would take gigabytes."""
    n, channels, height, width = images.shape
    rows, cols = height - size + 1, width - size + 1
    total = n * rows * cols
    if limit is None or total <= limit:
        return F.unfold(images, size).transpose(1, 2).reshape(total, channels * size * size)
    pick = torch.randperm(total, generator=generator)[:limit]
    image, place = pick // (rows * cols), pick % (rows * cols)
    top, left = place // cols, place % cols
    offsets = torch.arange(size)
    r = (top[:, None] + offsets)[:, :, None]  # (P, size, 1)
    c = (left[:, None] + offsets)[:, None, :]  # (P, 1, size)
    patches = images.permute(0, 2, 3, 1)[image[:, None, None], r, c]  # (P, size, size, C)
    return patches.permute(0, 3, 1, 2).reshape(limit, channels * size * size)


def check_whitening(kernel: Tensor, bias: Tensor, channels: int) -> None:
    """Raise ValueError unless (kernel, bias) is a ``fit_conv_whitening`` whitening of
    ``channels``-channel images: kernel (C, C, k, k) with k odd (centred, size-keeping), bias
    (C,), both finite. The one check behind every way a whitening comes in."""
    c = channels
    size = kernel.shape[-1] if kernel.dim() == 4 else 0
    if (tuple(kernel.shape) != (c, c, size, size) or size % 2 == 0
            or tuple(bias.shape) != (c,)):
        raise ValueError(
            f"the whitening of {c}-channel images needs a kernel ({c}, {c}, k, k) with k odd and "
            f"a bias ({c},), got {tuple(kernel.shape)} and {tuple(bias.shape)}"
        )
    if not (bool(torch.isfinite(kernel).all()) and bool(torch.isfinite(bias).all())):
        raise ValueError("the whitening kernel or bias contains NaN or Inf")


def conv_whiten(batch: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
    """Whitened and again standardised images: standardise(kernel * standardise(batch) + bias)
    for images (N, C, H, W) and a ``fit_conv_whitening`` kernel (C, C, k, k); zero padding keeps
    the size (standardised images are zero on average, so the border sees their mean)."""
    check_whitening(kernel, bias, batch.shape[1])
    out = F.conv2d(standardise(batch), kernel.to(batch), bias.to(batch),
                   padding=kernel.shape[-1] // 2)
    return standardise(out)
