"""Locally Competitive Algorithm (LCA) sparse-coding layers: LCALinear, LCAConv1D/2D/3D.

The problem. For an input x and a dictionary Phi of unit-norm atoms, the layers find the code

    a* = argmin_a  E(a) = 1/2 ||x - D(a)||^2 + sum_f lambda_f ||a_f||_1      (a >= 0 if nonneg)

    D(a) = crop(conv_transpose(a, Phi, stride)):  every code coefficient a[f, j] places atom
           Phi_f at offset j * stride - pad of the input; the parts of atoms that fall outside the
           input are cropped away (pad = kernel_size // 2 for 'same', 0 for 'valid').

With 'same' padding the reconstruction is compared with the input only inside the input: atoms
near the border may hang over it at no cost. Its adjoint is D^T(r) = conv(r, Phi, stride,
padding=pad), the input drive of the residual, which is exactly what ``torch.nn.functional.conv*d``
with ``padding=pad`` computes. For the linear layer D(a) = a @ Phi.

The dynamics (solver='lca', Rozell et al. 2008). With drive b = D^T(x), states u and
acts a = T_lambda(u), each Euler step is

    u <- u + (b - u - a*G) / tau,      a*G = D^T(D(a)) - a,

and the layers evaluate it in residual form, u <- u + (D^T(x - D(a)) + a - u) / tau: one
transposed convolution (reconstruct) and one convolution (correlate), both thin (in_neurons
channels on one side), instead of one convolution with the F x F Gram kernel G = Phi*Phi - I.
Because conv(., padding=pad) is the exact adjoint of the cropped transposed convolution,
D^T(x - D(a)) = -grad of 1/2||x - D(a)||^2 exactly, also at the borders: the fixed points of the
dynamics (u - a = D^T(x - D(a)), a = T_lambda(u)) are exactly the KKT points of E, which with
the soft threshold is the LASSO optimum. The Euler iteration is stable for tau > ||D||^2 / 2;
a diverged run raises FloatingPointError. (LCA-PyTorch convolves with an uncropped Gram kernel, which minimises the
energy of the zero-padded input instead; ``pad='valid'`` on ``F.pad(x, kernel_size // 2)``
reproduces that objective.)

The accelerated solver (solver='fista'): FISTA (Beck & Teboulle 2009) with the step
1/L, L an upper bound on ||D||^2 from the Fourier symbol of the atoms (see ``lipschitz``,
cached per dictionary version), and per-sample gradient restart of the momentum (O'Donoghue &
Candes 2015), which in practice converges linearly once the support has settled. It reaches
the same optimum in far fewer iterations.
Its states are reported as the LCA potentials u = a + (v - a) / step, v the gradient point
before the threshold, so that acts = T_lambda(states) holds for both solvers.

The two solvers are two small classes with one interface, ``run(layer, problem) -> (states,
acts, iterations)``: ``LCADynamics`` and ``FISTA``. What they share is written once, in the
``_Problem`` of a solve: the work layout and the operators D and D^T, the energy checks of
``tol`` every ``check_every`` iterations, the tracked metrics and the history of
return_all_ts; the layer then checks for divergence, records ``last_iters`` and assembles the
requested variables the same way for both. ``solver=`` picks the class once, when the layer is
built (``layer.solver`` is read-only); FISTA refuses transfer functions other than the soft
threshold, then or later.

Both solvers run the convolutions on a space-to-depth layout: the input is padded, then every
stride x stride block is folded into channels, which turns the strided convolutions into
stride-1 ones (fast kernels, channels-last on 2D/3D), and the crop of D becomes a 0/1 mask.

Symbols and code names (those of LCA-PyTorch):

    ========== ================ ===============================================
    symbol     code name        meaning
    ========== ================ ===============================================
    s, x       inputs           input (after the optional standardisation)
    b(t)       input_drives     drive from the input, D^T(x)
    u(t)       states           membrane potentials
    a(t)       acts             code, T_lambda(u)
    lambda     lambda_          threshold of T (float or one per feature)
    Phi        weights          dictionary, (out_neurons, in_neurons, *kernel_size)
    s_hat      recons           reconstruction D(a)
    s - s_hat  recon_errors     residual
    G          conns            lateral connectivity Phi*Phi - I (only on request)
    tau        tau              LCA time constant
    ========== ================ ===============================================

Shapes: LCALinear x (batch, in_neurons), codes (batch, out_neurons); LCAConvND x (batch,
in_neurons, *spatial), codes (batch, out_neurons, *code_spatial) with code_spatial =
ceil(spatial / stride) for 'same' and (spatial - kernel_size) // stride + 1 for 'valid'.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.winograd import (KERNELS, TILE, WinogradPlan, runs_on, transform_weight,
                                transpose_weight)
from .base import SparseCoder
from .metrics import times_active_by_feature
from .preproc import make_unit_var, make_zero_mean
from .transfer import TRANSFER_FUNCS, get_transfer, soft_threshold

Tensor = torch.Tensor

RETURN_VARS = ("inputs", "input_drives", "states", "acts", "recons", "recon_errors", "conns")
SOLVERS = ("lca", "fista")
PADS = ("same", "valid")

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV_WGRAD = {
    1: torch.nn.grad.conv1d_weight,
    2: torch.nn.grad.conv2d_weight,
    3: torch.nn.grad.conv3d_weight,
}
_MEMORY_FORMAT = {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d}

# Margin of the FISTA step over the computed ||D||^2 (grid sampling of the Fourier symbol).
_LIPSCHITZ_MARGIN = 1.02


def _space_to_depth(x: Tensor, block: Sequence[int]) -> Tensor:
    """(N, C, L1*s1, ..., Ln*sn) -> (N, C*s1*...*sn, L1, ..., Ln); channel index c*S + offset."""
    if all(s == 1 for s in block):
        return x
    n, c, nd = x.shape[0], x.shape[1], len(block)
    small = [size // s for size, s in zip(x.shape[2:], block)]
    x = x.reshape([n, c] + [v for size, s in zip(small, block) for v in (size, s)])
    x = x.permute([0, 1] + [3 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)])
    return x.reshape([n, c * math.prod(block)] + small)


def _depth_to_space(x: Tensor, block: Sequence[int]) -> Tensor:
    """Inverse of :func:`_space_to_depth`."""
    if all(s == 1 for s in block):
        return x
    n, nd = x.shape[0], len(block)
    c = x.shape[1] // math.prod(block)
    small = list(x.shape[2:])
    x = x.reshape([n, c] + list(block) + small)
    x = x.permute([0, 1] + [v for i in range(nd) for v in (2 + nd + i, 2 + i)])
    return x.reshape([n, c] + [size * s for size, s in zip(small, block)])


class _Plan:
    """How one input size maps onto the stride-1 work layout of the solver loop.

    Per dimension: the input (length L) is zero-padded by ``pad`` on the left and to
    s * (L_out + K - 1) in all, with K = ceil(kernel / s), then folded by space-to-depth. The
    kernel is zero-padded to K * s and folded the same way, so conv(x, Phi, stride s, padding
    pad) == conv(work(x), work(Phi)) with stride 1 and no padding. ``mask`` marks the work
    positions that are real input (the crop of D); None when every work position is.
    """

    def __init__(
        self,
        spatial: Sequence[int],
        kernel: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        channels: int,
        like: Tensor,
    ) -> None:
        self.nd = len(spatial)
        self.spatial = tuple(spatial)
        self.stride = tuple(stride)
        self.kernel = tuple(kernel)
        self.code_spatial = tuple(
            (size + 2 * p - k) // s + 1 for size, k, s, p in zip(spatial, kernel, stride, padding)
        )
        self.taps = tuple(-(-k // s) for k, s in zip(kernel, stride))
        work = [s * (lo + kk - 1) for lo, kk, s in zip(self.code_spatial, self.taps, stride)]
        self.pads = [(p, w - size - p) for p, w, size in zip(padding, work, spatial)]
        # Input positions beyond the last window (possible with 'valid') are cropped off the work
        # layout; no atom reaches them, so they only add a constant to the energy.
        self.crops = any(right < 0 for _, right in self.pads)
        self.memory_format = _MEMORY_FORMAT[self.nd]
        self.mask: Tensor | None = None
        if any(left > 0 or right > 0 for left, right in self.pads):
            ones = torch.ones((1, channels) + self.spatial, dtype=like.dtype, device=like.device)
            self.mask = self.to_work(ones)

    @staticmethod
    def _torch_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
        # F.pad lists (left, right) pairs from the last dimension backwards.
        return [v for pair in reversed(pads) for v in pair]

    def to_work(self, x: Tensor) -> Tensor:
        """(N, C, *spatial) -> (N, C * prod(stride), *work_spatial) in the loop's memory format."""
        x = F.pad(x, self._torch_pad(self.pads))
        return _space_to_depth(x, self.stride).contiguous(memory_format=self.memory_format)

    def to_input(self, xw: Tensor) -> Tensor:
        """Inverse of :meth:`to_work`: (N, C * prod(stride), *work_spatial) -> (N, C, *spatial)."""
        x = _depth_to_space(xw, self.stride)
        back = [(-left, -right) for left, right in self.pads]
        return F.pad(x, self._torch_pad(back)).contiguous()

    def weight(self, w: Tensor) -> Tensor:
        """Work-layout kernel: (F, C, *kernel) -> (F, C * prod(stride), *taps)."""
        grow = [(0, kk * s - k) for k, kk, s in zip(self.kernel, self.taps, self.stride)]
        w = F.pad(w, self._torch_pad(grow))
        return _space_to_depth(w, self.stride).contiguous(memory_format=self.memory_format)

    def recon(self, acts: Tensor, w: Tensor) -> Tensor:
        """Work-layout D(a) before the crop."""
        return _CONV_T[self.nd](acts, w)

    def corr(self, residual: Tensor, w: Tensor) -> Tensor:
        """D^T applied to a work-layout residual: the code-space drive."""
        return _CONV[self.nd](residual, w)

    def operators(self, w: Tensor, batch: int, fast: bool):
        """(acts -> recon(acts, w), residual -> corr(residual, w)) for `batch` samples, as the
        solver loop calls them. With `fast` (a loop run without autograd) they go through the
        fused Winograd kernel (``eplcanet.kernels.winograd``) for 2D layers on CPU in fp32/fp64
        outside autocast whose work-layout kernel is 3x3 or 5x5 with at least 32 features
        (``runs_on``): for the LCA-RCNN frontend's 12 <-> 64 channels, 1.3x oneDNN's convolution
        and 1.35x its transposed convolution. Otherwise, the direct ones."""
        taps = self.taps[0] if self.nd == 2 and self.taps[0] == self.taps[-1] else 0
        if not (fast and taps in KERNELS and w.shape[0] >= 32 and runs_on(w)):
            return (lambda acts: self.recon(acts, w)), (lambda residual: self.corr(residual, w))
        work_hw = [lo + taps - 1 for lo in self.code_spatial]  # after space-to-depth
        plan = WinogradPlan(TILE, taps, batch, w.shape[1], w.shape[0], work_hw, 0, w.dtype,
                            w.device)
        u = transform_weight(w.detach(), TILE)
        u_t = transpose_weight(u)
        return (lambda acts: plan.adjoint(acts, u_t)), (lambda residual: plan.forward(residual, u))


class _LinearPlan:
    """The identity layout of LCALinear: x (N, in_neurons), codes (N, out_neurons)."""

    mask = None
    crops = False
    memory_format = torch.contiguous_format

    def __init__(self, like: Tensor) -> None:
        self.code_spatial: tuple[int, ...] = ()

    def to_work(self, x: Tensor) -> Tensor:
        return x

    def to_input(self, xw: Tensor) -> Tensor:
        return xw

    def weight(self, w: Tensor) -> Tensor:
        return w

    def recon(self, acts: Tensor, w: Tensor) -> Tensor:
        return acts @ w

    def corr(self, residual: Tensor, w: Tensor) -> Tensor:
        return residual @ w.T

    def operators(self, w: Tensor, batch: int, fast: bool):
        """(recon, corr) as functions of their one argument, as _Plan.operators."""
        return (lambda acts: self.recon(acts, w)), (lambda residual: self.corr(residual, w))


def _as_tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * nd
    if isinstance(value, Sequence) and len(value) == nd and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")


class _LCABase(SparseCoder):
    """Shared core of the LCA layers; see the module docstring for the objective and dynamics.

    ``_nd`` is 0 for the linear layer and the number of spatial dimensions for the conv layers.
    """

    _nd = 0

    def __init__(
        self,
        out_neurons: int,
        in_neurons: int,
        kernel_size: int | Sequence[int] = 7,
        stride: int | Sequence[int] = 1,
        lambda_: float | Tensor = 0.25,
        tau: float = 100.0,
        eta: float = 0.01,
        lca_iters: int = 1000,
        pad: str = "same",
        return_vars: str | Iterable[str] = ("acts",),
        return_all_ts: bool = False,
        nonneg: bool = True,
        track_metrics: bool = False,
        transfer_func: str | Callable[[Tensor, float | Tensor], Tensor] = "soft_threshold",
        input_zero_mean: bool = True,
        input_unit_var: bool = True,
        d_update_clip: float = math.inf,
        lr_schedule: Callable[[int], float] | None = None,
        req_grad: bool = False,
        weight_init: Callable[..., Any] | tuple[Callable[..., Any], dict] = (
            nn.init.trunc_normal_,
            {},
        ),
        solver: str = "lca",
        tol: float | None = None,
        check_every: int = 10,
    ) -> None:
        super().__init__()
        for name, value in (("out_neurons", out_neurons), ("in_neurons", in_neurons)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.out_neurons = out_neurons
        self.in_neurons = in_neurons
        nd = self._nd
        if nd:
            self.kernel_size = _as_tuple(kernel_size, nd, "kernel_size")
            self.stride = _as_tuple(stride, nd, "stride")
            self._check_geometry(pad)
        else:
            self.kernel_size, self.stride = (), ()
        self.pad = pad
        self.padding = tuple(k // 2 if pad == "same" else 0 for k in self.kernel_size)

        if tau < 1:
            raise ValueError(
                f"tau must be >= 1 (the Euler step 1/tau must not exceed 1), got {tau}"
            )
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not isinstance(lca_iters, int) or lca_iters < 1:
            raise ValueError(f"lca_iters must be a positive int, got {lca_iters!r}")
        if not d_update_clip > 0:
            raise ValueError(f"d_update_clip must be > 0, got {d_update_clip}")
        if lr_schedule is not None and not callable(lr_schedule):
            raise ValueError("lr_schedule must be None or a callable f(forward_pass) -> eta")
        if tol is not None and not tol > 0:
            raise ValueError(f"tol must be None or > 0, got {tol}")
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive int, got {check_every!r}")
        self.tau = float(tau)
        self.eta = float(eta)
        self.lca_iters = lca_iters
        self.d_update_clip = float(d_update_clip)
        self.lr_schedule = lr_schedule
        self.tol = tol
        self.check_every = check_every

        self.return_vars = return_vars
        self.return_all_ts = bool(return_all_ts)
        self.nonneg = bool(nonneg)
        self.track_metrics = bool(track_metrics)
        self.input_zero_mean = bool(input_zero_mean)
        self.input_unit_var = bool(input_unit_var)
        self.req_grad = bool(req_grad)
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; accepted: {SOLVERS}")
        # The solver is fixed here, before the transfer function it constrains is checked.
        self._solver_impl = _SOLVER_BY_NAME[solver]
        self.transfer_func = transfer_func

        init, init_kwargs = weight_init if isinstance(weight_init, tuple) else (weight_init, {})
        if not callable(init):
            raise TypeError("weight_init must be a callable or a (callable, kwargs) tuple")
        weights = torch.empty((out_neurons, in_neurons) + self.kernel_size)
        out = init(weights, **init_kwargs)
        weights = out if isinstance(out, Tensor) else weights
        self.weights = nn.Parameter(weights, requires_grad=self.req_grad)
        self.normalize_weights()
        self.register_buffer("_lambda_tensor", None, persistent=False)
        self.lambda_ = lambda_
        self.register_buffer("forward_pass", torch.tensor(1))
        self.metrics: dict[str, Tensor] = {}
        self.last_iters = 0
        self._lipschitz_cache: tuple[tuple, float] | None = None

    # ------------------------------------------------------------------ configuration checks
    def _check_geometry(self, pad: str) -> None:
        if pad not in PADS:
            raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
        for k, s in zip(self.kernel_size, self.stride):
            if k < 1 or s < 1:
                raise ValueError(
                    f"kernel_size and stride must be >= 1, got {self.kernel_size}, {self.stride}"
                )
            if s > k:
                raise ValueError(
                    f"stride {self.stride} larger than kernel_size {self.kernel_size} would leave "
                    "input positions that no atom covers; use stride <= kernel_size"
                )
            if pad == "same" and k % 2 == 0:
                raise ValueError(
                    f"pad='same' needs odd kernel sizes (centred atoms), got {self.kernel_size}; "
                    "use an odd kernel_size or pad='valid'"
                )

    @property
    def return_vars(self) -> tuple[str, ...]:
        """Names of the variables forward() returns, in order (validated on assignment)."""
        return self._return_vars

    @return_vars.setter
    def return_vars(self, value: str | Iterable[str]) -> None:
        names = (value,) if isinstance(value, str) else tuple(value)
        if not names:
            raise ValueError(f"return_vars must name at least one of {RETURN_VARS}")
        for name in names:
            if name not in RETURN_VARS:
                raise ValueError(f"unknown return var {name!r}; accepted: {RETURN_VARS}")
        self._return_vars = names

    @property
    def transfer_func(self) -> str | Callable[[Tensor, float | Tensor], Tensor]:
        """'soft_threshold', 'hard_threshold' or a callable f(states, lambda_) -> acts."""
        return self._transfer_func

    @transfer_func.setter
    def transfer_func(self, value: str | Callable[[Tensor, float | Tensor], Tensor]) -> None:
        self._transfer = None if callable(value) else get_transfer(value)
        self._solver_impl.check_transfer(value)
        self._transfer_func = value

    @property
    def solver(self) -> str:
        """'lca' (Euler dynamics) or 'fista' (accelerated, soft threshold only); fixed at
        construction (a layer with another solver is a new layer)."""
        return self._solver_impl.name

    @property
    def lambda_(self) -> float | Tensor:
        """The threshold: a float, or a tensor (out_neurons,) of per-feature thresholds.

        Assignable at any time (e.g. a warm-up schedule). A tensor is kept as a non-persistent
        buffer: it follows .to(device), and state dicts stay interchangeable between layers.
        """
        return self._lambda_tensor if self._lambda_tensor is not None else self._lambda_value

    @lambda_.setter
    def lambda_(self, value: float | Tensor) -> None:
        if isinstance(value, Tensor) and value.dim() > 0:
            if value.shape != (self.out_neurons,):
                raise ValueError(
                    f"a lambda_ tensor must have shape ({self.out_neurons},) (one per feature), "
                    f"got {tuple(value.shape)}"
                )
            if bool((value < 0).any()):
                raise ValueError("lambda_ must be >= 0")
            self._lambda_tensor = value.detach().clone().to(self.weights.dtype)
            return
        value = float(value)
        if not value >= 0:
            raise ValueError(f"lambda_ must be >= 0, got {value}")
        self._lambda_tensor = None
        self._lambda_value = value

    # ------------------------------------------------------------------ small helpers
    def _lambda_for(self, ref: Tensor) -> float | Tensor:
        """lambda_ broadcastable against codes like ``ref`` (per-feature values on dim 1)."""
        lam = self.lambda_
        if isinstance(lam, Tensor):
            lam = lam.to(dtype=ref.dtype, device=ref.device)
            if lam.dim() == 1:
                lam = lam.reshape((1, -1) + (1,) * self._nd)
        return lam

    def _plan(self, spatial: Sequence[int], like: Tensor) -> _Plan | _LinearPlan:
        if not self._nd:
            return _LinearPlan(like)
        return _Plan(spatial, self.kernel_size, self.stride, self.padding, self.in_neurons, like)

    def transfer(self, states: Tensor, out: Tensor | None = None) -> Tensor:
        """acts = T_lambda(states), same shape as ``states``."""
        lam = self._lambda_for(states)
        if self._transfer is None:
            return self.transfer_func(states, lam)
        return self._transfer(states, lam, self.nonneg, out=out)

    def extra_repr(self) -> str:
        geometry = f", kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad!r}"
        lam = self.lambda_ if isinstance(self.lambda_, float) else "per-feature"
        return (
            f"out_neurons={self.out_neurons}, in_neurons={self.in_neurons}"
            f"{geometry if self._nd else ''}, lambda_={lam}, solver={self.solver!r}, "
            f"tau={self.tau}, lca_iters={self.lca_iters}, nonneg={self.nonneg}"
        )

    # ------------------------------------------------------------------ input checks
    def _check_input(self, x: Tensor) -> None:
        rank = self._nd + 2
        if not isinstance(x, Tensor) or x.dim() != rank:
            shape = "(batch, in_neurons" + ", L" * self._nd + ")"
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects inputs of shape {shape}, got {got}")
        if x.shape[1] != self.in_neurons:
            raise ValueError(
                f"inputs have {x.shape[1]} channels/features, the layer expects "
                f"in_neurons={self.in_neurons}"
            )
        if x.dtype != self.weights.dtype:
            raise TypeError(
                f"inputs are {x.dtype} but the dictionary is {self.weights.dtype}; "
                "convert one of them (e.g. layer.double() or x.float())"
            )
        for size, k in zip(x.shape[2:], self.kernel_size):
            if self.pad == "valid" and size < k:
                raise ValueError(
                    f"input size {tuple(x.shape[2:])} is smaller than kernel_size "
                    f"{self.kernel_size}, which pad='valid' cannot fit"
                )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("inputs contain NaN or Inf")

    def _check_code_like(self, t: Tensor | None, shape: Sequence[int], name: str) -> None:
        if t is not None and tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} must have the codes' shape {tuple(shape)}, got {t.shape}")

    # ------------------------------------------------------------------ operators
    def code_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of the codes (batch, out_neurons, *code_spatial) for inputs of ``input_shape``."""
        spatial = input_shape[2:]
        code = tuple(
            (size + 2 * p - k) // s + 1
            for size, k, s, p in zip(spatial, self.kernel_size, self.stride, self.padding)
        )
        return (input_shape[0], self.out_neurons) + code

    def compute_input_drive(self, inputs: Tensor) -> Tensor:
        """b = D^T(x) = conv(x, Phi): (batch, out_neurons, *code_spatial)."""
        plan = self._plan(inputs.shape[2:], inputs)
        w = plan.weight(self.weights)
        return plan.corr(plan.to_work(inputs), w).contiguous()

    def compute_recon(self, acts: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """D(a): (batch, in_neurons, *output_size).

        ``output_size`` is the input's spatial size; by default code_spatial * stride for 'same'
        and (code_spatial - 1) * stride + kernel_size for 'valid' (inputs that fit exactly).
        """
        if self._nd and output_size is None:
            if self.pad == "same":
                output_size = [n * s for n, s in zip(acts.shape[2:], self.stride)]
            else:
                pairs = zip(acts.shape[2:], self.stride, self.kernel_size)
                output_size = [(n - 1) * s + k for n, s, k in pairs]
        plan = self._plan(output_size or (), acts)
        if tuple(acts.shape[2:]) != plan.code_spatial:
            raise ValueError(
                f"codes of spatial shape {tuple(acts.shape[2:])} do not match an input of size "
                f"{tuple(output_size)} (expected codes {plan.code_spatial})"
            )
        rec = plan.recon(
            acts.contiguous(memory_format=plan.memory_format), plan.weight(self.weights)
        )
        return plan.to_input(rec)

    @staticmethod
    def compute_recon_error(inputs: Tensor, recons: Tensor) -> Tensor:
        """x - D(a)."""
        return inputs - recons

    def compute_weight_update(self, acts: Tensor, error: Tensor) -> Tensor:
        """Correlation of codes with the residual, the Hebbian direction: (out_neurons, ...).

        It is -dE/dPhi for fixed codes: sum over batch and positions of a[f, j] times the residual
        window under atom f at position j (zero outside the input).
        """
        if not self._nd:
            return acts.T @ error
        return _CONV_WGRAD[self._nd](
            error, self.weights.shape, acts, stride=self.stride, padding=self.padding
        )

    def lateral_connectivity(self) -> Tensor:
        """G = Phi*Phi - I, the lateral weights LCA-PyTorch convolves with (for inspection only).

        Linear: (out_neurons, out_neurons). Conv: (out_neurons, out_neurons, *(2 m + 1)) with
        m = (kernel_size - 1) // stride; conv(a, G, padding=m) + a equals D^T(D(a)) away from
        the borders. The solvers never build it.
        """
        w = self.weights.detach()
        if not self._nd:
            return w @ w.T - torch.eye(self.out_neurons, dtype=w.dtype, device=w.device)
        reach = [(k - 1) // s for k, s in zip(self.kernel_size, self.stride)]
        gram = _CONV[self._nd](
            w, w, stride=self.stride, padding=[m * s for m, s in zip(reach, self.stride)]
        )
        centre = (torch.arange(self.out_neurons), torch.arange(self.out_neurons)) + tuple(reach)
        gram[centre] -= 1.0
        return gram

    # ------------------------------------------------------------------ dictionary
    @property
    def dictionary(self) -> Tensor:
        """The atoms Phi: (out_neurons, in_neurons, *kernel_size) (linear: (out, in))."""
        return self.weights

    def get_weights(self) -> Tensor:
        """A detached copy of the dictionary."""
        return self.weights.detach().clone()

    def normalize_weights(self, eps: float = 1e-12) -> None:
        """Rescale every atom to unit L2 norm (in place)."""
        with torch.no_grad():
            norms = self.weights.flatten(1).norm(dim=1)
            self.weights.div_((norms + eps).reshape((-1,) + (1,) * (self.weights.dim() - 1)))

    def assign_weight_values(self, tensor: Tensor, normalize: bool = True) -> None:
        """Copy ``tensor`` (same shape and dtype as ``weights``) into the dictionary."""
        if not isinstance(tensor, Tensor) or tensor.shape != self.weights.shape:
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"weights must have shape {tuple(self.weights.shape)}, got {got}")
        if tensor.dtype != self.weights.dtype:
            raise TypeError(f"weights must be {self.weights.dtype}, got {tensor.dtype}")
        with torch.no_grad():
            self.weights.copy_(tensor)
        if normalize:
            self.normalize_weights()

    def update_weights(self, acts: Tensor, recon_errors: Tensor, normalize: bool = True) -> Tensor:
        """One Hebbian step: Phi += clip(eta * corr(a, x - D(a)) / (times_active + 1)).

        times_active counts, per feature, the nonzero coefficients of ``acts`` (batch and
        positions); the division keeps often-used atoms from moving faster than rare ones. Then
        every atom is renormalised (unless ``normalize=False``) and, with ``lr_schedule``,
        eta is set to lr_schedule(forward_pass). Returns the update that was added.
        """
        with torch.no_grad():
            update = self.compute_weight_update(acts.detach(), recon_errors.detach())
            active = times_active_by_feature(acts).to(update.dtype) + 1
            update = update * (self.eta / active).reshape((-1,) + (1,) * (update.dim() - 1))
            update = update.clamp(-self.d_update_clip, self.d_update_clip)
            self.weights.add_(update)
        if normalize:
            self.normalize_weights()
        if self.lr_schedule is not None:
            self.eta = float(self.lr_schedule(int(self.forward_pass)))
        return update

    def update_dictionary(self, codes: Tensor, residual: Tensor) -> None:
        """SparseCoder contract: the Hebbian :meth:`update_weights`."""
        self.update_weights(codes, residual)

    # ------------------------------------------------------------------ coding
    def preprocess(self, inputs: Tensor) -> Tensor:
        """The optional per-sample zero-mean / unit-variance standardisation of forward()."""
        if self.input_zero_mean:
            inputs = make_zero_mean(inputs)
        if self.input_unit_var:
            inputs = make_unit_var(inputs)
        return inputs

    def forward(
        self,
        inputs: Tensor,
        drive_scaling: Tensor | None = None,
        initial_states: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        """Settle the code of ``inputs`` and return ``return_vars``.

        ``drive_scaling`` (codes' shape) is added to the drive b, a top-down bias on the neurons;
        ``initial_states`` (codes' shape) replaces the zero initial states (warm start).
        One name in return_vars gives a tensor, several a tuple in that order; with
        return_all_ts each is stacked over iterations along a new last dimension.
        """
        self._check_input(inputs)
        inputs = self.preprocess(inputs)
        out = self._solve(inputs, drive_scaling, initial_states, self.return_vars)
        self.forward_pass += 1
        values = tuple(out[name] for name in self.return_vars)
        return values[0] if len(values) == 1 else values

    def code(self, x: Tensor) -> Tensor:
        """SparseCoder contract: the settled acts of ``x`` (after the layer's preprocessing)."""
        self._check_input(x)
        return self._solve(self.preprocess(x), None, None, ("acts",), all_ts=False)["acts"]

    def decode(self, codes: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """SparseCoder contract: the reconstruction D(a); see :meth:`compute_recon`."""
        return self.compute_recon(codes, output_size)

    def energy(self, inputs: Tensor, acts: Tensor) -> Tensor:
        """E(a) for each sample of ``inputs`` (already preprocessed): shape (batch,)."""
        recons = self.compute_recon(acts, inputs.shape[2:])
        fidelity = 0.5 * (inputs - recons).square().flatten(1).sum(1)
        lam = self._lambda_for(acts)
        return fidelity + (acts.abs() * lam).flatten(1).sum(1)

    # ------------------------------------------------------------------ solvers
    def lipschitz(self) -> float:
        """An upper bound on ||D||^2 (the largest eigenvalue of D^T D), the inverse FISTA step.

        Linear: the squared spectral norm of Phi. Convolutional: the largest squared singular
        value of the space-to-depth kernel's Fourier symbol (a (C * prod(stride)) x F matrix per
        frequency), which bounds the operator on any input size because cropping only lowers the
        norm. Cached per dictionary version.
        """
        w = self.weights
        key = (w._version, w.data_ptr(), w.dtype, str(w.device))
        if self._lipschitz_cache is not None and self._lipschitz_cache[0] == key:
            return self._lipschitz_cache[1]
        with torch.no_grad():
            wd = w.detach().to(torch.float64)
            if not self._nd:
                value = float(torch.linalg.matrix_norm(wd, ord=2)) ** 2
            else:
                plan = _Plan(
                    self.kernel_size, self.kernel_size, self.stride, (0,) * self._nd, 1, wd
                )
                wk = plan.weight(wd).contiguous()
                # The symbol is a trigonometric polynomial of degree < taps: a grid 8x finer than
                # the taps pins its maximum to well under 1% (covered by the margin below).
                grid = [max(32, 8 * t) for t in plan.taps]
                dims = tuple(range(2, 2 + self._nd))
                symbol = torch.fft.fftn(wk, s=grid, dim=dims)
                symbol = symbol.permute(tuple(range(2, 2 + self._nd)) + (1, 0))
                value = float(torch.linalg.matrix_norm(symbol, ord=2).max()) ** 2
        value *= _LIPSCHITZ_MARGIN
        self._lipschitz_cache = (key, value)
        return value

    def _solve(
        self,
        x: Tensor,
        drive_scaling: Tensor | None,
        initial_states: Tensor | None,
        want: Sequence[str],
        all_ts: bool | None = None,
    ) -> dict[str, Tensor]:
        """Run the solver on preprocessed inputs; returns the requested variables by name."""
        all_ts = self.return_all_ts if all_ts is None else all_ts
        problem = _Problem(self, x, drive_scaling, initial_states, want, all_ts)
        solver = self._solver_impl
        states, acts, it = solver.run(self, problem)
        self.last_iters = it
        plan, w, drive_scaling = problem.plan, problem.w, problem.drive_scaling
        xw, track, tracks, history = problem.xw, problem.track, problem.tracks, problem.history

        if not bool(torch.isfinite(acts).all()):
            raise FloatingPointError(
                f"LCA diverged{solver.divergence_hint}: the codes contain NaN or Inf"
            )
        if track:
            names = ("L1", "L2", "TotalEnergy", "FractionActive")
            self.metrics = {n: tracks[: max(it, 0), i].detach().cpu() for i, n in enumerate(names)}

        out: dict[str, Tensor] = {}
        need_recon = any(n in want for n in ("recons", "recon_errors"))
        for name in want:
            if name == "inputs":
                value = x
            elif name == "input_drives":
                value = plan.corr(xw, w).contiguous()
                if drive_scaling is not None:
                    value = value + drive_scaling
            elif name == "states":
                value = states.contiguous()
            elif name == "acts":
                value = acts.contiguous()
            elif name == "conns":
                value = self.lateral_connectivity()
            else:
                continue
            out[name] = value
        if need_recon:
            out["recons"] = plan.to_input(plan.recon(acts, w))
            out["recon_errors"] = x - out["recons"]
        if all_ts:
            out = self._stack_history(out, history, x, it)
        return out

    @staticmethod
    def _stack_history(
        final: dict[str, Tensor], history: dict[str, list[Tensor]], x: Tensor, n: int
    ) -> dict[str, Tensor]:
        """Per-iteration values stacked on a new last dimension (constants repeated)."""
        stacked = {}
        for name, value in final.items():
            if name in ("states", "acts", "recons") and history[name]:
                series = history[name]
            elif name == "recon_errors" and history["recons"]:
                series = [x - r for r in history["recons"]]
            else:
                series = [value] * n
            stacked[name] = torch.stack(series, -1)
        return stacked


class _Problem:
    """The fixed parts of one solve, shared by the solvers: inputs in the work layout, the
    operators D and D^T, lambda_, whether buffers are written in place, and the per-iteration
    bookkeeping (energy checks for ``tol``, tracked metrics, the history of return_all_ts)."""

    def __init__(
        self,
        layer: _LCABase,
        x: Tensor,
        drive_scaling: Tensor | None,
        initial_states: Tensor | None,
        want: Sequence[str],
        all_ts: bool,
    ) -> None:
        plan = layer._plan(x.shape[2:], x)
        self.plan, self.x, self.all_ts = plan, x, all_ts
        self.code_shape = (x.shape[0], layer.out_neurons) + plan.code_spatial
        layer._check_code_like(drive_scaling, self.code_shape, "drive_scaling")
        layer._check_code_like(initial_states, self.code_shape, "initial_states")
        self.mf = mf = plan.memory_format
        self.w = plan.weight(layer.weights)
        self.xw = plan.to_work(x)
        self.mask = plan.mask
        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (self.w, self.xw, drive_scaling, initial_states)
        )
        # Without autograd every elementwise step writes into preallocated buffers (out=...).
        self.ip = not grad
        self.recon, self.corr = plan.operators(self.w, x.shape[0], fast=self.ip)
        if drive_scaling is not None:
            drive_scaling = drive_scaling.to(x.dtype).contiguous(memory_format=mf)
        self.drive_scaling = drive_scaling
        # Squared norm of input positions cropped off the work layout (a constant energy term).
        self.const = 0.5 * (x.square().sum() - self.xw.square().sum()) if plan.crops else 0.0
        self.lam = layer._lambda_for(x)
        self.batch = x.shape[0]
        self.iters, self.tol, self.check_every = layer.lca_iters, layer.tol, layer.check_every
        self.track = layer.track_metrics
        self.tracks = (
            torch.zeros((self.iters, 4), dtype=x.dtype, device=x.device) if self.track else None
        )
        self.history: dict[str, list[Tensor]] = {n: [] for n in ("states", "acts", "recons")}
        self.keep_recons = all_ts and ("recons" in want or "recon_errors" in want)
        self.init = None
        if initial_states is not None:
            self.init = initial_states.to(x.dtype).contiguous(memory_format=mf).clone()
        self._prev_energy: float | None = None

    def zeros(self) -> Tensor:
        """Zero codes of the problem's shape, dtype and device."""
        return torch.zeros(self.code_shape, dtype=self.x.dtype, device=self.x.device)

    def residual(self, acts: Tensor, out: Tensor | None) -> Tensor:
        """s - D(a) in the work layout (cropped positions masked out)."""
        rec = self.recon(acts)
        if self.mask is None:
            return torch.sub(self.xw, rec, out=out)
        return torch.addcmul(self.xw, self.mask, rec, value=-1.0, out=out)

    def energy_sum(self, res: Tensor, acts: Tensor) -> Tensor:
        """E(a) summed over the batch, from the residual of ``acts``."""
        return 0.5 * res.square().sum() + self.const + (acts.abs() * self.lam).sum()

    def record(self, i: int, res: Tensor, acts: Tensor) -> None:
        """Iteration i's per-sample L1, L2, TotalEnergy and FractionActive (track_metrics)."""
        l2 = (0.5 * res.square().sum() + self.const) / self.batch
        l1 = (acts.abs() * self.lam).sum() / self.batch
        tracks = self.tracks
        tracks[i, 0], tracks[i, 1], tracks[i, 3] = l1, l2, (acts != 0).to(self.x.dtype).mean()
        tracks[i, 2] = l1 + l2

    def keep(self, states: Tensor, acts: Tensor) -> None:
        """One iteration's values for return_all_ts."""
        if not self.all_ts:
            return
        self.history["states"].append(states.contiguous().clone())
        self.history["acts"].append(acts.contiguous().clone())
        if self.keep_recons:
            self.history["recons"].append(self.plan.to_input(self.plan.recon(acts, self.w)))

    def checks(self, it: int) -> bool:
        """Whether iteration ``it`` is one where ``tol`` compares energies (every check_every)."""
        return self.tol is not None and it > 0 and it % self.check_every == 0

    def converged(self, it: int, res: Tensor, acts: Tensor) -> bool:
        """With ``tol``: whether the energy changed by at most tol (relative) since the last
        check, every check_every iterations."""
        if not self.checks(it):
            return False
        e = float(self.energy_sum(res, acts))  # the only host sync, once per check_every
        done = self._prev_energy is not None and abs(self._prev_energy - e) <= self.tol * abs(e)
        self._prev_energy = e
        return done


class _Solver(abc.ABC):
    """The interface the layer calls: ``run(layer, problem) -> (states, acts, iterations)``.

    One instance per name, stateless (all per-solve state lives in the _Problem), picked once
    when the layer is built. What the layer must know about a solver beyond ``run`` is here too:
    which transfer functions it can minimise, and what to suggest when its codes diverge.
    """

    name = ""
    divergence_hint = ""

    def check_transfer(self, transfer: object) -> None:
        """Refuse a transfer function this solver cannot use (any is fine by default)."""

    @abc.abstractmethod
    def run(self, layer: _LCABase, p: _Problem) -> tuple[Tensor, Tensor, int]:
        """Solve ``p`` for ``layer``; returns (states, acts, iterations run)."""


class LCADynamics(_Solver):
    """The LCA's leaky integrators, Euler-stepped: u <- u + (1/tau) (b - u - a*G), a = T(u),
    with b - a*G computed as D^T(s - D(a)) + a (two thin convolutions) plus drive_scaling."""

    name = "lca"
    divergence_hint = " (tau is too small for this dictionary)"

    def run(self, layer: _LCABase, p: _Problem) -> tuple[Tensor, Tensor, int]:
        """Settle ``p``; returns (states u, acts a, iterations run)."""
        ip = p.ip
        u = (p.init if p.init is not None else p.zeros()).contiguous(memory_format=p.mf)
        a = layer.transfer(u)
        rate = 1.0 / layer.tau
        res = None
        done = 0
        for it in range(1, p.iters + 2):
            res = p.residual(a, res if ip else None)
            done = it - 1  # updates so far: res is the residual of their acts
            if p.track and done:
                p.record(done - 1, res, a)
            if done == p.iters or p.converged(done, res, a):
                break
            c = p.corr(res)
            c = torch.add(c, a, out=c if ip else None)
            if p.drive_scaling is not None:
                c = torch.add(c, p.drive_scaling, out=c if ip else None)
            u = torch.lerp(u, c, rate, out=u if ip else None)
            a = layer.transfer(u, out=a if ip else None)
            p.keep(u, a)
        return u, a, done


class FISTA(_Solver):
    """Proximal gradient descent on E(a) with Nesterov momentum and per-sample gradient
    restart; step 1/L with L >= ||D||^2 (:meth:`_LCABase.lipschitz`). Soft threshold only.
    The states reported are the pre-threshold values a + (v - a) / step, LCA's u."""

    name = "fista"

    def check_transfer(self, transfer: object) -> None:
        # The proximal step of the L1 term is the soft threshold; other transfers have no energy.
        if transfer != "soft_threshold":
            raise ValueError(
                "solver='fista' minimises the L1 energy and needs transfer_func='soft_threshold', "
                f"got {transfer!r}; use solver='lca' for other transfer functions"
            )

    @staticmethod
    def _states(a: Tensor, v: Tensor, step: float) -> Tensor:
        """The LCA potentials whose soft threshold is ``a``: a + (v - a) / step."""
        return a + (v - a) / step

    def run(self, layer: _LCABase, p: _Problem) -> tuple[Tensor, Tensor, int]:
        """Minimise ``p``'s energy; returns (states, acts, iterations run)."""
        ip, init = p.ip, p.init
        a = layer.transfer(init) if init is not None else p.zeros()
        a = a.contiguous(memory_format=p.mf)
        step = 1.0 / layer.lipschitz()
        lam_step = p.lam * step
        y = a.clone()
        t = torch.ones((p.batch,) + (1,) * (a.dim() - 1), dtype=a.dtype, device=a.device)
        v = init if init is not None else a.clone()
        res = a_new = diff = probe = None
        it = 0
        for it in range(1, p.iters + 1):
            res = p.residual(y, res if ip else None)
            c = p.corr(res)
            if p.drive_scaling is not None:
                c = torch.add(c, p.drive_scaling, out=c if ip else None)
            v = torch.add(y, c, alpha=step, out=v if ip else None)
            a_new = soft_threshold(v, lam_step, layer.nonneg, out=a_new if ip else None)
            diff = torch.sub(a_new, a, out=diff if ip else None)
            # Gradient restart: momentum that points uphill is dropped, per sample.
            probe = torch.sub(y, a_new, out=probe if ip else None)
            probe = torch.mul(probe, diff, out=probe if ip else None)
            uphill = probe.flatten(1).sum(1).reshape(t.shape) > 0
            t = torch.where(uphill, torch.ones_like(t), t)
            t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            y = torch.addcmul(a_new, (t - 1.0) / t_next, diff, out=y if ip else None)
            a, a_new, t = a_new, a, t_next
            # The energies of the iterate a (not of y) cost one more reconstruction: only on
            # the iterations that record or check them.
            if p.track or p.checks(it):
                res_a = p.residual(a, None)
                if p.track:
                    p.record(it - 1, res_a, a)
                if p.converged(it, res_a, a):
                    break
            if p.all_ts:
                p.keep(self._states(a, v, step), a)
        return self._states(a, v, step), a, it


# The solvers by the name ``solver=`` takes, in the order of SOLVERS.
_SOLVER_BY_NAME: dict[str, _Solver] = {s.name: s for s in (LCADynamics(), FISTA())}
assert tuple(_SOLVER_BY_NAME) == SOLVERS


class LCALinear(_LCABase):
    """LCA over a dense dictionary: x (batch, in_neurons) -> codes (batch, out_neurons).

    D(a) = a @ Phi with Phi = ``weights`` (out_neurons, in_neurons). Arguments and behaviour as
    :class:`LCAConv2D` without kernel_size, stride and pad.
    """

    _nd = 0

    def __init__(self, out_neurons: int, in_neurons: int, **kwargs: Any) -> None:
        for name in ("kernel_size", "stride", "pad"):
            if name in kwargs:
                raise TypeError(f"LCALinear takes no {name!r} argument")
        super().__init__(out_neurons, in_neurons, **kwargs)


class LCAConv1D(_LCABase):
    """Convolutional LCA on (batch, in_neurons, L) inputs; weights (out, in, kernel_size).

    See :class:`LCAConv2D` for the arguments.
    """

    _nd = 1


class LCAConv2D(_LCABase):
    """Convolutional LCA on images: x (batch, in_neurons, H, W) -> codes (batch, out_neurons,
    H_out, W_out); weights (out_neurons, in_neurons, kh, kw), each atom of unit L2 norm.

    Args (keywords as in LCA-PyTorch):
        out_neurons: number of features F. in_neurons: input channels C.
        kernel_size, stride: int or tuple per spatial dimension (stride <= kernel_size).
        lambda_: threshold (float >= 0, or a tensor of shape (F,) for one per feature).
        tau: LCA time constant (Euler step 1/tau; stable for tau > ||D||^2 / 2).
        eta: learning rate of the Hebbian :meth:`update_weights`.
        lca_iters: iterations per forward pass (the most, with ``tol``).
        pad: 'same' (odd kernels; code size ceil(H / stride)) or 'valid'.
        return_vars: one name or a sequence of names from RETURN_VARS.
        return_all_ts: stack every iteration's values on a new last dimension.
        nonneg: nonnegative codes.
        track_metrics: keep per-iteration L1, L2, TotalEnergy and FractionActive of the last
            forward pass in ``self.metrics`` (tensors; no file is written).
        transfer_func: 'soft_threshold', 'hard_threshold' or f(states, lambda_) -> acts.
        input_zero_mean, input_unit_var: per-sample standardisation in forward().
        d_update_clip: bound on each element of a Hebbian update.
        lr_schedule: f(forward_pass) -> eta, applied after each Hebbian update.
        req_grad: make the dictionary trainable by autograd (any torch optimizer); the solver
            loop is then differentiated through.
        weight_init: callable or (callable, kwargs) filling the initial weights (then
            normalised). Default: truncated normal.
        solver: 'lca' (Euler dynamics) or 'fista' (accelerated; soft threshold only); fixed
            for the layer's lifetime.
        tol: stop early when the energy changes by at most tol (relative) between checks.
        check_every: iterations between the energy checks of ``tol`` (one host sync each).
    """

    _nd = 2


class LCAConv3D(_LCABase):
    """Convolutional LCA on (batch, in_neurons, D, H, W) inputs; weights (out, in, kd, kh, kw).

    See :class:`LCAConv2D` for the arguments.
    """

    _nd = 3


__all__ = [
    "RETURN_VARS",
    "SOLVERS",
    "TRANSFER_FUNCS",
    "LCAConv1D",
    "LCAConv2D",
    "LCAConv3D",
    "LCALinear",
]
