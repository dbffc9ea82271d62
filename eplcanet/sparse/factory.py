"""One constructor for the convolutional sparse coders, chosen by name (e.g. a --sparse-coder flag).

``make_sparse_coder('lca', out_neurons=64, in_neurons=3, kernel_size=9, stride=2, lambda_=0.25)``
builds an :class:`~eplcanet.sparse.lca.LCAConv2D`; ``'mp'`` builds a
:class:`~eplcanet.sparse.pursuit.ConvMP2D`. Both honour the :class:`SparseCoder` contract with the
same dictionary shape (out_neurons, in_neurons, kernel_size, kernel_size), code geometry and
dictionary file format, so one can replace the other behind a flag.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import SparseCoder
from .lca import LCAConv2D
from .pursuit import ConvMP2D

SPARSE_CODERS: dict[str, type[SparseCoder]] = {"lca": LCAConv2D, "mp": ConvMP2D}


def _accepted(cls: type) -> set[str]:
    """Keyword arguments of cls.__init__ (the solver core of LCAConv2D lives on its base)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def make_sparse_coder(kind: str, **kwargs: Any) -> SparseCoder:
    """The convolutional sparse coder called `kind` ('lca' or 'mp'), built with `kwargs`.

    Keyword arguments are those of the chosen class (seed names: out_neurons, in_neurons,
    kernel_size, stride, pad, eta; LCA: lambda_, tau, lca_iters, solver, ...; MP: k, selection,
    ...). An argument the chosen coder does not take raises a ValueError naming it and the
    accepted ones, rather than being dropped silently.

    Shapes: inputs (batch, in_neurons, H, W) -> codes (batch, out_neurons, H_code, W_code).
    """
    if kind not in SPARSE_CODERS:
        raise ValueError(f"unknown sparse coder {kind!r}; accepted: {', '.join(SPARSE_CODERS)}")
    cls = SPARSE_CODERS[kind]
    accepted = _accepted(cls)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"sparse coder {kind!r} ({cls.__name__}) takes no argument(s) {unknown}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    return cls(**kwargs)
