"""Matching pursuit sparse coders: a linear MpSAE and a convolutional ConvMP2D.

Matching pursuit (MP) runs k greedy steps. Each step picks, per sample, the atom most correlated
with the residual r (by the selection rule), adds the coefficient c = <r, w> / ||w||^2 to the
codes and subtracts c w from the residual. Every step is an exact projection, so
x_hat + residual == x and ||r|| never increases, whatever the atoms' norms.

Symbols as in ``eplcanet.sparse.base``: x the input, a (``codes``) the sparse code, Phi
(``weights``) the dictionary, D(a) the reconstruction.

Memory: the atom choice is piecewise constant, so its gradient is zero and the k correlation
matmuls need no autograd graph. The linear pursuit therefore keeps only the chosen indices and
coefficients for backward (O(k * batch)) and replays the residuals there; a one-hot formulation
keeps O(k * batch * nb_concepts). The convolutional pursuit keeps one atom-sized patch per
sample and step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .base import SparseCoder
from .metrics import times_active_by_feature

SELECTIONS = ("relu", "abs", "signed")
PADS = ("same", "valid")
_NORMALIZATIONS = ("l2", "none")


# --------------------------------------------------------------------------------------------
# argument checks and small shared pieces
# --------------------------------------------------------------------------------------------


def _check_pursuit_args(
    k: int, selection: str, dropout: float | None, residual_tol: float | None
) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int (the number of pursuit steps), got {k!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be None or a probability in [0, 1), got {dropout!r}")
    if residual_tol is not None and residual_tol < 0:
        raise ValueError(f"residual_tol must be None or >= 0, got {residual_tol!r}")


def _live_samples(residual: torch.Tensor, residual_tol: float | None) -> torch.Tensor | None:
    """Per-sample mask of residuals still above the early-stop threshold (None: no early stop)."""
    if residual_tol is None:
        return None
    return residual.detach().flatten(1).float().square().sum(1) > residual_tol**2


@torch.no_grad()
def _select(
    scores: torch.Tensor,
    selection: str,
    n_atoms: int,
    dropout: float,
    live: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one entry per sample among normalised correlations.

    scores: (batch, n_atoms * positions), <r, w> / ||w|| for each atom (and position), atoms
    major. Dropout removes each atom from this step's choice with probability `dropout`,
    independently per sample, at every position of that atom.
    Returns the chosen flat index (batch,) int64 and whether the step acts (batch,) bool: it does
    not when every atom was dropped, when 'relu' finds no positive correlation, or when the
    sample already met its residual threshold.
    """
    key = scores.abs() if selection == "abs" else scores
    if dropout > 0:
        drop = torch.rand(scores.shape[0], n_atoms, 1, device=scores.device) < dropout
        key = key.reshape(scores.shape[0], n_atoms, -1).masked_fill(drop, -math.inf).flatten(1)
    best, idx = key.max(dim=1)
    active = torch.isfinite(best)
    if selection == "relu":
        active &= best > 0
    if live is not None:
        active &= live
    return idx, active


def _coefficient(
    raw: torch.Tensor, norm2: torch.Tensor, selection: str, active: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step coefficient c = raw / ||w||^2 (clamped at 0 for 'relu'), zero where the step is idle.

    raw, norm2, active: (batch,). A chosen atom of zero norm (all-zero scores under 'abs') makes
    the step idle too. Returns the coefficients and the updated active mask.
    """
    active = active & (norm2.detach() > 0)
    if selection == "relu":
        raw = raw.clamp_min(0)
    # where() rather than a product: idle rows may hold 0/0, whose gradient would be NaN
    safe_norm2 = torch.where(active, norm2, torch.ones_like(norm2))
    return torch.where(active, raw / safe_norm2, 0), active


def _unit_norm(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Atoms (leading index) scaled to unit L2 norm."""
    norms = weights.flatten(1).norm(dim=1).clamp_min(eps)
    return weights / norms.view(-1, *([1] * (weights.dim() - 1)))


@torch.no_grad()
def _hebbian_step(weights: torch.Tensor, dw: torch.Tensor, codes: torch.Tensor, eta: float) -> None:
    """Phi <- normalize(Phi + eta * dW / (times_active + 1)), in place.

    dw has the weights' shape (codes correlated with the residual); codes have the atoms on
    dim 1. Dividing by how often an atom fired keeps frequently used atoms from running away.
    """
    times_active = times_active_by_feature(codes).to(weights.dtype)
    scale = eta / (times_active + 1)
    weights.add_(dw * scale.view(-1, *([1] * (weights.dim() - 1))))
    weights.copy_(_unit_norm(weights))


# --------------------------------------------------------------------------------------------
# linear matching pursuit
# --------------------------------------------------------------------------------------------


class _TiedPursuit(torch.autograd.Function):
    """Linear MP with the dictionary as analysis operator; backward replays the residuals."""

    @staticmethod
    def forward(ctx, x, dictionary, bias, k, selection, dropout, residual_tol):
        with torch.no_grad():
            norm2 = dictionary.square().sum(1)
            norms = norm2.sqrt()
            # correlating with unit atoms yields <r, w>/||w|| directly, the MP choice criterion
            unit = dictionary / norms.clamp_min(torch.finfo(norms.dtype).tiny)[:, None]
            unit_bias = None if bias is None else bias / norms
            residual = x.clone()
            idxs, coefs, actives = [], [], []
            for _ in range(k):
                live = _live_samples(residual, residual_tol)
                if live is not None and not bool(live.any()):
                    break
                if unit_bias is None:
                    scores = residual @ unit.T
                else:
                    scores = torch.addmm(unit_bias, residual, unit.T)
                idx, active = _select(scores, selection, dictionary.shape[0], dropout, live)
                raw = scores.gather(1, idx[:, None]).squeeze(1) * norms[idx]
                coef, active = _coefficient(raw, norm2[idx], selection, active)
                residual.addcmul_(coef[:, None], dictionary[idx], value=-1)
                idxs.append(idx)
                coefs.append(coef)
                actives.append(active)
            codes = x.new_zeros(x.shape[0], dictionary.shape[0])
            if idxs:
                codes.scatter_add_(1, torch.stack(idxs, 1), torch.stack(coefs, 1))
        steps = tuple(idxs) + tuple(coefs) + tuple(actives)
        ctx.n_steps = len(idxs)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, dictionary, bias if bias is not None else x.new_empty(0), *steps)
        return residual, codes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_residual, grad_codes):
        x, dictionary, bias, *steps = ctx.saved_tensors
        n = ctx.n_steps
        idxs, coefs, actives = steps[:n], steps[n : 2 * n], steps[2 * n :]
        norm2 = dictionary.square().sum(1)
        # replay the forward's subtractions in the same order: the same final residual
        residual = x.clone()
        for idx, coef in zip(idxs, coefs):
            residual.addcmul_(coef[:, None], dictionary[idx], value=-1)
        g = grad_residual.clone()  # dL/dr after the current step
        grad_dict = torch.zeros_like(dictionary) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if ctx.has_bias and ctx.needs_input_grad[2] else None
        for idx, coef, active in zip(reversed(idxs), reversed(coefs), reversed(actives)):
            atom = dictionary[idx]
            c = coef[:, None]
            before = residual.addcmul(c, atom)  # r_t = r_{t+1} + c w
            # c = (<r_t, w> + b) / ||w||^2 feeds both the codes and the next residual
            g_coef = grad_codes.gather(1, idx[:, None]).squeeze(1) - (g * atom).sum(1)
            g_raw = torch.where(active, g_coef / norm2[idx], 0)[:, None]
            if grad_dict is not None:
                grad_dict.index_add_(0, idx, g_raw * (before - 2 * c * atom) - c * g)
            if grad_bias is not None:
                grad_bias.index_add_(0, idx, g_raw.squeeze(1))
            g.addcmul_(g_raw, atom)
            residual = before
        grad_x = g if ctx.needs_input_grad[0] else None
        return grad_x, grad_dict, grad_bias, None, None, None, None


def _pursuit_autograd(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    k: int,
    analysis: Callable[[torch.Tensor], torch.Tensor],
    selection: str,
    dropout: float,
    residual_tol: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear MP whose correlations come from any differentiable `analysis` (untied encoders).

    Differentiated by autograd; the chosen atoms are gathered, never expanded to one-hot rows.
    """
    norm2 = dictionary.square().sum(1)
    norms = norm2.detach().sqrt()
    residual = x
    idxs, coefs = [], []
    for _ in range(k):
        live = _live_samples(residual, residual_tol)
        if live is not None and not bool(live.any()):
            break
        scores = analysis(residual)
        idx, active = _select(scores.detach() / norms, selection, norms.shape[0], dropout, live)
        raw = scores.gather(1, idx[:, None]).squeeze(1)
        coef, _ = _coefficient(raw, norm2[idx], selection, active)
        residual = residual - coef[:, None] * dictionary[idx]
        idxs.append(idx)
        coefs.append(coef)
    codes = x.new_zeros(x.shape[0], dictionary.shape[0])
    if idxs:
        codes = codes.scatter_add(1, torch.stack(idxs, 1), torch.stack(coefs, 1))
    return residual, codes


def matching_pursuit(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    k: int,
    selection: str = "relu",
    bias: torch.Tensor | None = None,
    dropout: float | None = None,
    residual_tol: float | None = None,
    analysis: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k steps of matching pursuit of x over the rows of `dictionary`.

    Args:
        x: inputs (batch, in_features).
        dictionary: atoms Phi (n_atoms, in_features), any norms (each step divides by ||w||^2).
        k: number of pursuit steps.
        selection: 'relu' picks the largest positive correlation (codes >= 0; a sample with none
            idles), 'abs' the largest |correlation| (classic MP, signed codes), 'signed' the
            largest signed correlation without clamping its coefficient.
        bias: optional (n_atoms,) added to the correlations <r, w>.
        dropout: probability of removing each atom from a step's choice, drawn per step and per
            sample. Each coefficient is the projection onto the chosen atom, so it is the same
            for any rescaling of the kept atoms and needs no 1/(1-p) factor.
        residual_tol: a sample stops once ||r||_2 <= residual_tol (its later steps are idle).
        analysis: correlations (batch, n_atoms) of a residual, replacing r @ Phi^T (+ bias), for
            untied encoders. Default: the dictionary itself, with the O(k * batch) backward
            (first derivatives only; the `analysis` path supports higher ones).

    Returns:
        residual x - D(a) (batch, in_features) and codes a (batch, n_atoms), with
        a @ Phi + residual == x up to rounding.
    """
    _check_pursuit_args(k, selection, dropout, residual_tol)
    if x.dim() != 2 or dictionary.dim() != 2 or x.shape[1] != dictionary.shape[1]:
        raise ValueError(
            f"x must be (batch, in_features) and dictionary (n_atoms, in_features), got "
            f"{tuple(x.shape)} and {tuple(dictionary.shape)}"
        )
    p = dropout or 0.0
    if analysis is None:
        return _TiedPursuit.apply(x, dictionary, bias, k, selection, p, residual_tol)
    if bias is not None:
        raise ValueError("bias applies to the tied pursuit only; put it in `analysis` instead")
    return _pursuit_autograd(x, dictionary, k, analysis, selection, p, residual_tol)


class MpSAE(SparseCoder):
    """Matching pursuit sparse autoencoder with overcomplete's MpSAE interface.

    ``residual, codes = sae.encode(x)`` runs k pursuit steps; ``forward`` returns
    ``(z_pre, z, x_hat)`` like every overcomplete SAE (MP has no pre-activation, so z_pre is the
    codes). The encoder only computes the correlations that choose atoms and set coefficients:
    'identity' (default) or None ties it to the dictionary (r @ Phi^T, fastest backward),
    'linear' unties it (an nn.Linear copied from the dictionary), and any nn.Module mapping
    (batch, in_features) to (batch, nb_concepts) is used as given. ``tied()`` / ``untied()``
    switch between these after construction.

    Args:
        input_shape: in_features (int or a 1-tuple); inputs are (batch, in_features).
        nb_concepts: number of atoms.
        k: pursuit steps per sample.
        dropout: per-step, per-sample probability of removing an atom from the choice, in training
            mode only (see ``matching_pursuit``).
        encoder_module: 'identity' | None | 'linear' | nn.Module, see above.
        dictionary_params: {'normalization': 'l2' (atoms used at unit norm, default) | 'none',
            'initializer': tensor (nb_concepts, in_features) or None (random unit atoms)}.
        device: device of the parameters.
        selection: 'relu' (codes >= 0, default) | 'abs' | 'signed', see ``matching_pursuit``.
        residual_tol: per-sample early stop once ||residual|| <= residual_tol.
        eta: step size of ``update_dictionary``.
        dtype: dtype of the parameters (float32 by default; float64 and bfloat16 work).
    """

    def __init__(
        self,
        input_shape: int | tuple[int, ...],
        nb_concepts: int,
        k: int = 1,
        dropout: float | None = None,
        encoder_module: str | nn.Module | None = "identity",
        dictionary_params: dict | None = None,
        device: str | torch.device = "cpu",
        *,
        selection: str = "relu",
        residual_tol: float | None = None,
        eta: float = 1e-2,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        if len(tuple(input_shape)) != 1 or int(input_shape[0]) < 1:
            raise ValueError(
                f"input_shape must be a positive int or a 1-tuple (in_features), got {input_shape!r}"
            )
        if not isinstance(nb_concepts, int) or nb_concepts < 1:
            raise ValueError(f"nb_concepts must be a positive int, got {nb_concepts!r}")
        _check_pursuit_args(k, selection, dropout, residual_tol)
        params = dict(dictionary_params or {})
        unknown = set(params) - {"normalization", "initializer"}
        if unknown:
            raise ValueError(
                f"dictionary_params accepts 'normalization' and 'initializer', got {sorted(unknown)}"
            )
        normalization = params.get("normalization", "l2")
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"dictionary_params['normalization'] must be one of {_NORMALIZATIONS}, "
                f"got {normalization!r}"
            )
        self.input_shape = tuple(int(s) for s in input_shape)
        self.in_features = self.input_shape[0]
        self.nb_concepts = nb_concepts
        self.k = k
        self.dropout = dropout
        self.selection = selection
        self.residual_tol = residual_tol
        self.eta = eta
        self.normalization = normalization

        init = params.get("initializer")
        if init is None:
            init = _unit_norm(torch.randn(nb_concepts, self.in_features, dtype=torch.float64))
        elif tuple(init.shape) != (nb_concepts, self.in_features):
            raise ValueError(
                f"dictionary_params['initializer'] must have shape "
                f"{(nb_concepts, self.in_features)}, got {tuple(init.shape)}"
            )
        self.weights = nn.Parameter(
            init.detach().to(device=device, dtype=dtype or torch.get_default_dtype()).clone()
        )
        self.encoder: nn.Module | None = None
        self.encoder_bias: nn.Parameter | None = None
        if encoder_module is None or encoder_module == "identity":
            self.tied()
        elif encoder_module == "linear":
            self.untied()
        elif isinstance(encoder_module, nn.Module):
            self.encoder = encoder_module.to(device)
        else:
            raise ValueError(
                "encoder_module must be 'identity', None, 'linear' or an nn.Module, "
                f"got {encoder_module!r}"
            )

    # ---- dictionary -----------------------------------------------------------------------

    def get_dictionary(self) -> torch.Tensor:
        """The atoms Phi (nb_concepts, in_features) used for pursuit and decoding."""
        if self.normalization == "l2":
            return _unit_norm(self.weights)
        return self.weights

    @property
    def dictionary(self) -> torch.Tensor:
        """Same as ``get_dictionary()`` (the ``SparseCoder`` contract)."""
        return self.get_dictionary()

    def update_dictionary(self, codes: torch.Tensor, residual: torch.Tensor) -> None:
        """Hebbian step Phi += eta * a^T r / (times_active + 1), then unit-norm atoms.

        codes (batch, nb_concepts), residual (batch, in_features), e.g. from ``encode``.
        """
        dw = codes.detach().T.to(self.weights.dtype) @ residual.detach().to(self.weights.dtype)
        _hebbian_step(self.weights.data, dw, codes.detach(), self.eta)

    # ---- encoder switching ----------------------------------------------------------------

    def tied(self, bias: bool = False) -> MpSAE:
        """Use Phi^T (plus an optional learned bias per atom) as the encoder; returns self."""
        self.encoder = None
        self.encoder_bias = nn.Parameter(self.weights.new_zeros(self.nb_concepts)) if bias else None
        return self

    def untied(self, bias: bool = False, copy_from_dictionary: bool = True) -> MpSAE:
        """Use a separate nn.Linear encoder, initialised from the dictionary or at random.

        Its correlations choose the atoms and set the coefficients (divided by the dictionary
        atom's ||w||^2), so it receives gradients; returns self.
        """
        linear = nn.Linear(
            self.in_features,
            self.nb_concepts,
            bias=bias,
            device=self.weights.device,
            dtype=self.weights.dtype,
        )
        with torch.no_grad():
            if copy_from_dictionary:
                linear.weight.copy_(self.get_dictionary())
            if bias:
                linear.bias.zero_()
        self.encoder = linear
        self.encoder_bias = None
        return self

    def train(self, mode: bool = True) -> MpSAE:
        """Switch training mode. Dropout acts only in training; the configured rate is kept."""
        return super().train(mode)

    # ---- coding ---------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must be (batch, {self.in_features}), got shape {tuple(x.shape)}")
        return x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k pursuit steps on x (batch, in_features).

        Returns the residual (batch, in_features) and codes (batch, nb_concepts).
        """
        self._check_input(x)
        dropout = self.dropout if self.training else None
        return matching_pursuit(
            x,
            self.get_dictionary(),
            self.k,
            selection=self.selection,
            bias=self.encoder_bias if self.encoder is None else None,
            dropout=dropout,
            residual_tol=self.residual_tol,
            analysis=self.encoder,
        )

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Codes a (batch, nb_concepts) of x (batch, in_features)."""
        return self.encode(x)[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction D(z) = z @ Phi (batch, in_features) of codes z (batch, nb_concepts)."""
        return z @ self.get_dictionary()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_pre, z, x_hat) for x (batch, in_features); x_hat = x - residual = D(z)."""
        residual, codes = self.encode(x)
        # x - residual equals codes @ Phi but costs no (batch x nb_concepts) matmul
        return codes, codes, x - residual

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, nb_concepts={self.nb_concepts}, k={self.k}, "
            f"selection={self.selection!r}, dropout={self.dropout}, "
            f"encoder={'tied' if self.encoder is None else 'untied'}"
        )


def mp_revive_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    residual: torch.Tensor,
    codes: torch.Tensor,
    dictionary: torch.Tensor,
    threshold: float = 1e-2,
    min_dead: int = 10,
    weight: float = 1e-2,
    detach_residual: bool = True,
) -> torch.Tensor:
    """Reconstruction MSE minus a term that pulls dead atoms towards the residual.

    MP only sends gradients to the atoms it chose, so an atom that is never chosen never
    changes. An atom is dead when its largest code in the batch is below `threshold`; when more
    than `min_dead` are dead, the loss subtracts weight * mean over batch and dead atoms of
    <residual, w / ||w||>, which turns them towards what the live atoms fail to explain.

    Args:
        x, x_hat, residual: (batch, in_features).
        codes: (batch, n_atoms).
        dictionary: (n_atoms, in_features).
        detach_residual: True (default) moves only the dead atoms; False also lets the term push
            the encoder to leave residual along dead atoms, as the seed documentation's loss does.

    Returns:
        scalar loss.
    """
    loss = (x - x_hat).square().mean()
    dead = (codes.detach().amax(dim=0) < threshold).nonzero().squeeze(1)
    if dead.numel() > min_dead:
        # unit atoms: the term rewards direction; raw atoms would simply grow without bound
        atoms = _unit_norm(dictionary[dead])
        r = residual.detach() if detach_residual else residual
        loss = loss - weight * (r @ atoms.T).mean()
    return loss


# --------------------------------------------------------------------------------------------
# convolutional matching pursuit
# --------------------------------------------------------------------------------------------


def conv_padding(kernel_size: int, pad: str) -> int:
    """Zero padding per side for pad='same' ((kernel_size - 1) // 2, odd kernels) or 'valid' (0)."""
    if pad not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
    if pad == "valid":
        return 0
    if kernel_size % 2 == 0:
        raise ValueError(f"pad='same' needs an odd kernel_size, got {kernel_size}")
    return (kernel_size - 1) // 2


def recon_output_padding(
    input_size: int, code_size: int, kernel_size: int, stride: int, padding: int
) -> int:
    """output_padding that makes conv_transpose of a code_size map exactly input_size long."""
    out = input_size - ((code_size - 1) * stride - 2 * padding + kernel_size)
    if not 0 <= out < max(stride, 1):
        raise ValueError(
            f"codes of size {code_size} cannot reconstruct an input of size {input_size} "
            f"(kernel_size={kernel_size}, stride={stride}, padding={padding})"
        )
    return out


class ConvMP2D(SparseCoder):
    """Convolutional matching pursuit over a conv dictionary, interchangeable with LCAConv2D.

    Same arguments, weight shape (out_neurons, in_neurons, kernel_size, kernel_size), code shape
    and reconstruction geometry as LCAConv2D: drive = conv2d(x, weights, stride, padding) and
    D(a) = conv_transpose2d(a, weights, stride, padding, output_padding) sized to the input.
    Each of the k steps picks, per sample, the (atom, position) whose normalised correlation with
    the residual is largest by the selection rule; the norm is that of the atom's part inside the
    image, so steps at the border are exact projections too.

    Args:
        out_neurons: number of atoms F.
        in_neurons: input channels C.
        kernel_size: atom height and width.
        stride: code stride.
        pad: 'same' ((kernel_size - 1) // 2 zero padding) or 'valid' (none).
        k: pursuit steps per sample (the number of nonzero codes per sample, at most).
        selection: 'relu' (codes >= 0, default) | 'abs' | 'signed', see ``matching_pursuit``.
        eta: step size of ``update_dictionary``.
        dropout: per-step, per-sample probability of removing an atom (at all positions) from the
            choice, in training mode only.
        residual_tol: per-sample early stop once ||residual|| <= residual_tol.
        device, dtype: of the weights.

    Shapes: x (batch, C, H, W); codes (batch, F, H_code, W_code).
    """

    def __init__(
        self,
        out_neurons: int,
        in_neurons: int,
        kernel_size: int,
        stride: int = 1,
        pad: str = "same",
        k: int = 32,
        selection: str = "relu",
        eta: float = 1e-2,
        dropout: float | None = None,
        residual_tol: float | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        for name, value in (
            ("out_neurons", out_neurons),
            ("in_neurons", in_neurons),
            ("kernel_size", kernel_size),
            ("stride", stride),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_pursuit_args(k, selection, dropout, residual_tol)
        self.out_neurons = out_neurons
        self.in_neurons = in_neurons
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.padding = conv_padding(kernel_size, pad)
        self.k = k
        self.selection = selection
        self.eta = eta
        self.dropout = dropout
        self.residual_tol = residual_tol
        w = torch.randn(out_neurons, in_neurons, kernel_size, kernel_size, dtype=torch.float64)
        self.weights = nn.Parameter(
            _unit_norm(w).to(device=device, dtype=dtype or torch.get_default_dtype())
        )

    @property
    def dictionary(self) -> torch.Tensor:
        """The atoms Phi (out_neurons, in_neurons, kernel_size, kernel_size)."""
        return self.weights

    def code_shape(self, height: int, width: int) -> tuple[int, int]:
        """(H_code, W_code) of the codes of an input of this height and width."""

        def size(n: int) -> int:
            return (n + 2 * self.padding - self.kernel_size) // self.stride + 1

        return size(height), size(width)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_neurons:
            raise ValueError(
                f"x must be (batch, {self.in_neurons}, H, W), got shape {tuple(x.shape)}"
            )
        if min(self.code_shape(x.shape[2], x.shape[3])) < 1:
            raise ValueError(
                f"input of size {tuple(x.shape[2:])} is smaller than kernel_size="
                f"{self.kernel_size} with pad={self.pad!r}"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k pursuit steps on x (batch, C, H, W): residual (batch, C, H, W), codes (batch, F, Hc, Wc)."""
        self._check_input(x)
        batch, chans, height, width = x.shape
        p, s, ks = self.padding, self.stride, self.kernel_size
        hp, wp = height + 2 * p, width + 2 * p
        hc, wc = self.code_shape(height, width)
        weights = self.weights
        atoms = weights.flatten(1)  # (F, C*ks*ks)
        dropout = (self.dropout or 0.0) if self.training else 0.0

        # The residual lives zero-padded and flattened: a correlation is then a padding-free
        # conv, and an atom at any position is a gather/scatter at base + fixed offsets.
        residual = F.pad(x, (p, p, p, p)).reshape(batch, -1)
        dev = x.device
        ar = torch.arange(ks, device=dev)
        offsets = (
            torch.arange(chans, device=dev).view(-1, 1, 1) * (hp * wp)
            + ar.view(1, -1, 1) * wp
            + ar.view(1, 1, -1)
        ).flatten()
        with torch.no_grad():
            # squared norm of each atom's part inside the image, per code position
            inside_norm2 = F.conv2d(
                x.new_ones(1, chans, height, width), weights.detach().square(), stride=s, padding=p
            ).flatten()
            inv_norm = torch.where(inside_norm2 > 0, inside_norm2.clamp_min(1e-30).rsqrt(), 0)

        idxs, coefs = [], []
        for _ in range(self.k):
            live = _live_samples(residual, self.residual_tol)
            if live is not None and not bool(live.any()):
                break
            with torch.no_grad():
                corr = F.conv2d(residual.view(batch, chans, hp, wp), weights.detach(), stride=s)
                scores = corr.flatten(1) * inv_norm
                idx, active = _select(scores, self.selection, self.out_neurons, dropout, live)
                atom_idx = idx // (hc * wc)
                row0 = (idx % (hc * wc)) // wc * s
                col0 = idx % wc * s
                rows = row0[:, None] + ar  # padded coordinates of the patch
                cols = col0[:, None] + ar
                inside = ((rows >= p) & (rows < p + height))[:, :, None] & (
                    (cols >= p) & (cols < p + width)
                )[:, None, :]
                inside = inside[:, None].expand(-1, chans, -1, -1).flatten(1)
                where = (row0 * wp + col0)[:, None] + offsets
            # only the in-image part of the atom, so the padding stays zero
            atom = atoms[atom_idx] * inside
            raw = (residual.gather(1, where) * atom).sum(1)
            coef, _ = _coefficient(raw, atom.square().sum(1), self.selection, active)
            residual = residual.scatter_add(1, where, -coef[:, None] * atom)
            idxs.append(idx)
            coefs.append(coef)

        codes = x.new_zeros(batch, self.out_neurons * hc * wc)
        if idxs:
            codes = codes.scatter_add(1, torch.stack(idxs, 1), torch.stack(coefs, 1))
        residual = residual.view(batch, chans, hp, wp)[:, :, p : p + height, p : p + width]
        return residual, codes.view(batch, self.out_neurons, hc, wc)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Codes a (batch, F, H_code, W_code) of x (batch, C, H, W)."""
        return self.encode(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of x, as LCAConv2D's forward returns its activations."""
        return self.code(x)

    def decode(
        self, codes: torch.Tensor, output_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """D(a) = conv_transpose2d(codes, weights, ...) of shape (batch, C, *output_size).

        output_size (H, W) is the input's size and picks the output_padding; by default
        H = H_code * stride for 'same' and (H_code - 1) * stride + kernel_size for 'valid'
        (strides > 1 leave it ambiguous). Same rule and argument as LCAConv2D.decode.
        """
        hc, wc = codes.shape[-2:]
        if output_size is None:
            if self.pad == "same":
                output_size = (hc * self.stride, wc * self.stride)
            else:
                output_size = tuple((n - 1) * self.stride + self.kernel_size for n in (hc, wc))
        op = tuple(
            recon_output_padding(n, c, self.kernel_size, self.stride, self.padding)
            for n, c in zip(output_size, (hc, wc))
        )
        return F.conv_transpose2d(
            codes, self.weights, stride=self.stride, padding=self.padding, output_padding=op
        )

    def residual(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """x - D(a), reconstructed at x's size."""
        return x - self.decode(codes, output_size=tuple(x.shape[-2:]))

    def update_dictionary(self, codes: torch.Tensor, residual: torch.Tensor) -> None:
        """Hebbian step Phi += eta * (codes correlated with residual) / (times_active + 1).

        codes (batch, F, H_code, W_code), residual (batch, C, H, W); atoms stay unit-norm.
        """
        dw = torch.nn.grad.conv2d_weight(
            residual.detach().to(self.weights.dtype),
            self.weights.shape,
            codes.detach().to(self.weights.dtype),
            stride=self.stride,
            padding=self.padding,
        )
        _hebbian_step(self.weights.data, dw, codes.detach(), self.eta)

    def extra_repr(self) -> str:
        return (
            f"out_neurons={self.out_neurons}, in_neurons={self.in_neurons}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad!r}, k={self.k}, "
            f"selection={self.selection!r}"
        )
