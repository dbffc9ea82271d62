"""Helpers shared by the LCA test modules (this module holds no tests)."""

from __future__ import annotations

import pytest
import torch

from eplcanet.data import natural_image_patches
from eplcanet.sparse import make_unit_var, make_zero_mean

# Inputs that skip the layers' own standardisation, so that the references see the same data.
RAW = {"input_zero_mean": False, "input_unit_var": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread


def standardised_patches(size: int, n: int, seed: int, gray: bool) -> torch.Tensor:
    """Real photograph patches (n, C, size, size), each centred and scaled to unit variance,
    in float64."""
    x = natural_image_patches(size, n, seed=seed, gray=gray).double()
    return make_unit_var(make_zero_mean(x))
