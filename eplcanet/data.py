"""Datasets: the offline defaults (scikit-learn digits, scikit-image photographs) and torchvision."""

from __future__ import annotations

import numpy as np
import torch

# Bundled colour photographs of scikit-image (no download needed).
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def natural_image_patches(
    patch_size: int = 8, n_patches: int = 1000, seed: int = 0, gray: bool = False
) -> torch.Tensor:
    """Random square patches from scikit-image's bundled photographs.

    Returns a float32 tensor (n_patches, C, patch_size, patch_size) with values in [0, 1],
    C = 1 if gray else 3. Patches are drawn uniformly over photographs and positions.
    """
    from skimage import data as skdata

    if patch_size < 1 or n_patches < 1:
        raise ValueError(f"patch_size and n_patches must be >= 1, got {patch_size}, {n_patches}")
    rng = np.random.default_rng(seed)
    photos = [getattr(skdata, name)().astype(np.float32) / 255.0 for name in _SKIMAGE_PHOTOS]
    if gray:
        photos = [p @ np.array([0.299, 0.587, 0.114], np.float32) for p in photos]
        photos = [p[..., None] for p in photos]
    which = rng.integers(len(photos), size=n_patches)
    out = np.empty((n_patches, photos[0].shape[-1], patch_size, patch_size), np.float32)
    for i, w in enumerate(which):
        img = photos[w]
        r = rng.integers(img.shape[0] - patch_size + 1)
        c = rng.integers(img.shape[1] - patch_size + 1)
        out[i] = img[r : r + patch_size, c : c + patch_size].transpose(2, 0, 1)
    return torch.from_numpy(out)
