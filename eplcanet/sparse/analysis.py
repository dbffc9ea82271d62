"""Pictures of dictionaries: every atom rescaled and tiled into one image.

Each atom is shown on its own scale, 0.5 + 0.5 * w / max|w|, so that zero is mid-grey, the
atom's strongest weight is black or white (per colour channel), and colour-opponent atoms
(e.g. red-on / green-off) stay visible next to strong achromatic edges.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor


def _atoms_as_images(weights: Tensor, atom_shape: Sequence[int] | None) -> np.ndarray:
    """(F, ...) weights -> (F, C, h, w) float64 array with C in {1, 3}."""
    w = weights.detach().to("cpu", torch.float64)
    if atom_shape is not None:
        w = w.reshape((w.shape[0], *atom_shape))
    elif w.dim() == 2:
        n = w.shape[1]
        for channels in (1, 3):
            side = math.isqrt(n // channels)
            if side * side * channels == n:
                w = w.reshape(w.shape[0], channels, side, side)
                break
        else:
            raise ValueError(
                f"cannot infer the shape of linear atoms of size {n}; pass atom_shape=(C, h, w)"
            )
    if w.dim() == 3:  # (F, C, L): a 1-pixel-high strip per channel
        w = w.unsqueeze(2)
    elif w.dim() == 5:  # (F, C, D, h, w): the middle depth slice
        w = w[:, :, w.shape[2] // 2]
    if w.dim() != 4:
        raise ValueError(f"weights of shape {tuple(weights.shape)} are not atoms of 1 to 3 dims")
    if w.shape[1] not in (1, 3):  # other channel counts: channels side by side, in grey
        w = torch.cat(list(w.unbind(1)), dim=-1).unsqueeze(1)
    return w.numpy()


def feature_grid(
    weights: Tensor,
    ncols: int | None = None,
    pad: int = 1,
    atom_shape: Sequence[int] | None = None,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Tile the atoms of ``weights`` into one image for display.

    ``weights``: (F, C, h, w) conv2d atoms, (F, C, L) conv1d, (F, C, D, h, w) conv3d (middle slice
    shown) or (F, N) linear atoms (give ``atom_shape`` unless N is a square, or 3 x a square).
    ``ncols`` defaults to ceil(sqrt(F)). Returns float64 values in [0, 1]: (H, W, 3) for RGB
    atoms, (H, W) otherwise.
    """
    atoms = _atoms_as_images(weights, atom_shape)
    n, channels, h, w = atoms.shape
    peak = np.abs(atoms).reshape(n, -1).max(1).reshape(n, 1, 1, 1)
    atoms = 0.5 + 0.5 * atoms / np.where(peak > 0, peak, 1.0)
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full(
        (channels, pad + nrows * (h + pad), pad + ncols * (w + pad)), pad_value, dtype=np.float64
    )
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, top : top + h, left : left + w] = atoms[i]
    return grid.transpose(1, 2, 0) if channels == 3 else grid[0]


def save_feature_grid(
    weights: Tensor, path: str | os.PathLike, scale: int = 4, **kwargs: object
) -> Path:
    """Write :func:`feature_grid` of ``weights`` as a PNG, each pixel drawn ``scale`` x ``scale``.

    ``kwargs`` go to :func:`feature_grid`. Creates missing parent folders; returns the path.
    """
    import matplotlib.image

    grid = feature_grid(weights, **kwargs)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmap = "gray" if grid.ndim == 2 else None
    matplotlib.image.imsave(path, np.clip(grid, 0.0, 1.0), cmap=cmap, vmin=0.0, vmax=1.0)
    return path
