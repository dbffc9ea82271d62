"""Sparse coding: LCA layers and matching pursuit, usable on their own like any torch.nn layer."""

# This module only re-exports the public names of the submodules.
# ruff: noqa: F401

from .analysis import feature_grid, save_feature_grid
from .base import SparseCoder
from .factory import SPARSE_CODERS, make_sparse_coder
from .io import (
    DictionaryFileError,
    load_dictionary,
    preprocessing_note,
    save_dictionary,
    whitening_entry,
    whitening_from_config,
)
from .lca import RETURN_VARS, SOLVERS, LCAConv1D, LCAConv2D, LCAConv3D, LCALinear
from .metrics import (
    energy_per_sample,
    frac_active,
    l1_sparsity,
    l2_error,
    r_squared,
    times_active_by_feature,
    total_energy,
)
from .preproc import (
    ZCAWhitener,
    conv_whiten,
    fit_conv_whitening,
    make_unit_var,
    make_zero_mean,
    standardise,
    zca_whiten,
)
from .pursuit import ConvMP2D, MpSAE, matching_pursuit, mp_revive_loss
from .transfer import hard_threshold, soft_threshold
