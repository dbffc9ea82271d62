"""The one contract every sparse coder in eplcanet honours.

LCA layers (``eplcanet.sparse.lca``) and matching pursuit (``eplcanet.sparse.pursuit``)
implement it, so a model or script can take either through a flag
(see ``eplcanet.sparse.make_sparse_coder``).

Symbols: x is the input (s in Rozell et al.), a the sparse code, Phi the dictionary and
D(a) the reconstruction built from a and Phi.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class SparseCoder(nn.Module, ABC):
    """A module that maps inputs to sparse codes over a dictionary and back.

    Shapes: for a linear coder, x is (batch, in_features) and codes are (batch, n_atoms); for a
    convolutional coder, x is (batch, in_channels, *spatial) and codes are
    (batch, n_atoms, *code_spatial).
    """

    @abstractmethod
    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse code a of the input x."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction D(a), of the input's shape."""

    @property
    @abstractmethod
    def dictionary(self) -> torch.Tensor:
        """The atoms Phi, one per leading index (n_atoms, ...)."""

    @abstractmethod
    def update_dictionary(self, codes: torch.Tensor, residual: torch.Tensor) -> None:
        """One Hebbian dictionary step from codes a and residual x - D(a); keeps atoms unit-norm."""

    def residual(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """x - D(a)."""
        return x - self.decode(codes)
