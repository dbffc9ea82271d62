"""Winograd minimal-filtering convolutions for the relaxation steps on CPU.

A stride-1 convolution with an r x r kernel, computed on m x m output tiles F(m x m, r x r),
needs n^2 = (m + r - 1)^2 multiplies per tile and channel pair instead of m^2 r^2: F(4x4, 3x3)
does a quarter of the multiply-adds of the direct convolution, in one batched matrix product per
tile frequency (n^2 products of (tiles x C_in) by (C_in x C_out)). The tile transforms apply
the 1-D ones on both axes of a tile; they run in small C kernels (``_tiles.c``, compiled at
first use by ``eplcanet.kernels.native``) that gather the tiles straight from the channels-last
image, zero padding included, and scatter the results back, so the data crosses memory once per
transform. Layers up to FUSED_MAX_CHANNELS wide run as a single kernel that also does the
per-frequency products, a few images at a time in each core's cache (see WinogradPlan). Without
a C compiler the Winograd path is unavailable and every convolution is direct.

The transposed convolution (the top-down term of EP) is the exact adjoint of the same computation:
non-overlapping output tiles go through the transposed transforms and the transposed channel
matrices, and the n x n input tiles are added back where they overlap. So one transformed weight
serves both directions. The weight gradient (the EP update) multiplies, per frequency, the
transformed input tiles by the transformed output-gradient tiles and takes the sum back through
G, the adjoint of the weight transform.

In exact arithmetic the results equal the direct convolution; in float32 they differ by a few
units in the 6th digit (tests/test_winograd.py). The matrices come from the Toom-Cook
construction with interpolation points 0, 1, -1, 2, -2, 1/2, -1/2 and infinity: A^T and G
evaluate polynomials at the points, B^T is the inverse of the Vandermonde matrix they span.
"""

from __future__ import annotations

import functools
import math

import torch

from . import native

_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)


@functools.lru_cache(maxsize=None)
def winograd_matrices(m: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A^T (m x n), G (n x r), B^T (n x n)) in float64 for the 1-D correlation
    y_i = sum_k g_k d_{i+k}, i < m, as y = A^T [(G g) * (B^T d)], with n = m + r - 1."""
    n = m + r - 1
    if n - 1 > len(_POINTS):
        raise ValueError(f"F({m}, {r}) needs {n - 1} interpolation points; at most "
                         f"{len(_POINTS)} are available")
    pts = torch.tensor(_POINTS[: n - 1], dtype=torch.float64)

    def evaluation(rows: int) -> torch.Tensor:
        # Row j: point j's powers 0 .. rows-1; the last row is the point at infinity, which
        # picks the leading coefficient.
        v = pts[:, None] ** torch.arange(rows, dtype=torch.float64)
        inf = torch.zeros(1, rows, dtype=torch.float64)
        inf[0, -1] = 1.0
        return torch.cat([v, inf])

    at = evaluation(m).T.contiguous()
    g = evaluation(r)
    bt = torch.linalg.inv(evaluation(n).T)
    return at, g, bt


def _kron_g(m: int, r: int, like: torch.Tensor) -> torch.Tensor:
    """G (x) G, (n*n, r*r): the weight transform as one matrix (G's entries are exact binary
    fractions, so casting it loses nothing)."""
    g = winograd_matrices(m, r)[1]
    return torch.kron(g, g).to(dtype=like.dtype, device=like.device)


def transform_weight(weight: torch.Tensor, m: int, out: torch.Tensor | None = None):
    """The weight (C_out, C_in, r, r) in the tile frequency domain, G W G^T per channel pair:
    (n*n, C_in, C_out), written to `out` when given. One matrix product: it runs after every
    optimizer step."""
    c_out, c_in, r, _ = weight.shape
    taps = weight.detach().permute(2, 3, 1, 0).reshape(r * r, c_in * c_out)
    if out is None:
        return (_kron_g(m, r, weight) @ taps).view(-1, c_in, c_out)
    torch.mm(_kron_g(m, r, weight), taps, out=out.view(-1, c_in * c_out))
    return out


def transpose_weight(u: torch.Tensor) -> torch.Tensor:
    """The transformed weight for the adjoint: u (n*n, C_in, C_out) with its channel axes
    swapped, (n*n, C_out, C_in), its rows zero-padded to a multiple of GEMM_BLOCK columns: the
    fused kernel's products then run at fixed width for any C_in (an LCA reconstruction's 12
    channels ran 2.5x slower without the padding)."""
    cols = -(-u.shape[1] // GEMM_BLOCK) * GEMM_BLOCK
    u_t = u.new_zeros(u.shape[0], u.shape[2], cols)
    u_t[..., :u.shape[1]] = u.transpose(1, 2)
    return u_t


def untransform_weight_grad(grad_u: torch.Tensor, m: int, r: int) -> torch.Tensor:
    """The adjoint of transform_weight: a gradient (n*n, C_in, C_out) with respect to the
    transformed weight, as one with respect to the weight, (C_out, C_in, r, r)."""
    _, c_in, c_out = grad_u.shape
    taps = _kron_g(m, r, grad_u).T @ grad_u.reshape(grad_u.shape[0], -1)
    return taps.view(r, r, c_in, c_out).permute(3, 2, 0, 1).contiguous()


def tiling(in_hw, r: int, padding: int, m: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(output size, tiles per dimension) of a stride-1 r x r convolution with F(m x m, r x r)."""
    out = tuple(s + 2 * padding - r + 1 for s in in_hw)
    return out, tuple(-(-s // m) for s in out)


class Workspace:
    """Two flat tile buffers, grown on demand and shared by the plans of one network (they run
    one at a time; each holds at most a batch chunk's tiles, see WinogradConvs._chunks).
    Allocating them afresh at every step would cost page faults comparable to the arithmetic at
    these sizes."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, k: int, shape, dtype, device) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._bufs.get((k, dtype, device))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[(k, dtype, device)] = buf
        return buf[:numel].view(*shape)


def nhwc(t: torch.Tensor) -> torch.Tensor:
    """The (batch, H, W, C) view of a 4D tensor's channels-last memory (copied into that layout
    first if it is in another)."""
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


class WinogradPlan:
    """One stride-1 convolution shape: batch, channels, input size, padding, tile size m.

    ``forward(x, u)`` is ``F.conv2d(x, w, padding=p)`` and ``adjoint(g, u_t)`` is
    ``F.conv_transpose2d(g, w, padding=p)`` (of the input's size), where
    ``u = transform_weight(w, m)`` and ``u_t = transpose_weight(u)``; the results are
    channels-last. The tile transforms run in
    the C kernels of ``_tiles.c`` (``eplcanet.kernels.native``), fused with the gathering of the
    tiles from the image and their scattering back; tiles are laid out frequency-major,
    (n*n, tiles, C).

    Two strategies, by layer width (``fused``): for layers up to FUSED_MAX_CHANNELS wide the
    whole convolution is one kernel that takes a few images at a time through the transforms,
    its own per-frequency products and the transforms back, so that their tiles stay in the
    core's cache; wider layers transform all tiles, then run one batched matrix product (MKL),
    which their long channel products need.
    """

    def __init__(self, m: int, r: int, batch: int, c_in: int, c_out: int, in_hw, padding: int,
                 dtype: torch.dtype, device, workspace: Workspace | None = None) -> None:
        if m != TILE or r not in KERNELS:
            raise ValueError(f"F({m}x{m}, {r}x{r}) has no kernels; available: "
                             + ", ".join(f"F({TILE}x{TILE}, {k}x{k})" for k in KERNELS))
        reason = native.why_unavailable()
        if reason is not None:
            raise RuntimeError(f"the Winograd kernels are not available: {reason}")
        n = m + r - 1
        self.m, self.r, self.n, self.p = m, r, n, padding
        self.batch, self.c_in, self.c_out = batch, c_in, c_out
        self.in_hw = tuple(in_hw)
        self.out_hw, self.tiles = tiling(self.in_hw, r, padding, m)
        self.n_tiles = batch * self.tiles[0] * self.tiles[1]
        at, _, bt = winograd_matrices(m, r)
        kw = dict(dtype=dtype, device=device)
        # Input tiles go through B^T on both axes, output tiles through A^T; the adjoint uses
        # their transposes.
        self.bt, self.b = bt.to(**kw).contiguous(), bt.T.to(**kw).contiguous()
        self.at, self.a = at.to(**kw).contiguous(), at.T.to(**kw).contiguous()
        self.workspace = Workspace() if workspace is None else workspace
        self.fused = fused(c_in, c_out)

    def _buf(self, k: int, channels: int) -> torch.Tensor:
        return self.workspace.get(k, (self.n ** 2, self.n_tiles, channels), self.bt.dtype,
                                  self.bt.device)

    def _geometry(self) -> tuple[int, ...]:
        return (self.m, self.n, *self.tiles)

    def _input_tiles(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """B^T D B for every (zero-padded, overlapping) n x n input tile D of x, in buffer k."""
        self._check(x, self.c_in, self.in_hw, "inputs")
        v = self._buf(k, self.c_in)
        native.call("to_freqs", 0, nhwc(x), self.batch, *self.in_hw, self.c_in, self.p,
                    *self._geometry(), self.bt, v)
        return v

    def _check(self, t: torch.Tensor, channels: int, hw, what: str) -> None:
        """The C kernels trust the shapes they are given: check them here."""
        expected = (self.batch, channels, *hw)
        if tuple(t.shape) != expected or t.dtype != self.bt.dtype:
            raise ValueError(f"this plan takes {what} of shape {expected} in {self.bt.dtype}, "
                             f"got {tuple(t.shape)} in {t.dtype}")

    def _check_grad(self, g: torch.Tensor) -> None:
        if tuple(g.shape[-2:]) != self.out_hw:
            raise ValueError(f"this convolution gives {self.out_hw} maps, got gradients of "
                             f"{tuple(g.shape[-2:])}")
        self._check(g, self.c_out, self.out_hw, "output gradients")

    def _output_grad_tiles(self, g: torch.Tensor, k: int) -> torch.Tensor:
        """A Y A^T for every m x m tile Y of g (zero beyond its edge), in buffer k."""
        self._check_grad(g)
        z = self._buf(k, self.c_out)
        native.call("to_freqs", 1, nhwc(g), self.batch, *self.out_hw, self.c_out, 0,
                    *self._geometry(), self.a, z)
        return z

    def _fused(self, adjoint: bool, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> None:
        """The fused kernel, `FUSED_TILES` tiles' worth of images per chunk; each of PyTorch's
        threads gets its own part of a workspace buffer."""
        per = max(1, FUSED_TILES // (self.tiles[0] * self.tiles[1]))
        threads = torch.get_num_threads()
        slot = 2 * self.n ** 2 * per * self.tiles[0] * self.tiles[1] * max(self.c_in, self.c_out)
        work = self.workspace.get(2, (threads * slot,), self.bt.dtype, self.bt.device)
        l_in, l_out = (self.a, self.b) if adjoint else (self.bt, self.at)
        native.call("conv_fused", int(adjoint), nhwc(src), dst, self.batch, *self.in_hw,
                    self.c_in, self.c_out, self.p, *self._geometry(), l_in, weight, l_out, bias,
                    weight.shape[-1], per, work, threads)

    def forward(self, x: torch.Tensor, u: torch.Tensor, out: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """conv(x) (+ bias); out: a contiguous (batch, H_out, W_out, C_out) tensor to write to."""
        self._check(x, self.c_in, self.in_hw, "inputs")
        out = x.new_empty(self.batch, *self.out_hw, self.c_out) if out is None else out
        if self.fused:
            self._fused(False, x, out, u, bias)
        else:
            v = self._input_tiles(x, 0)
            prod = torch.bmm(v, u, out=self._buf(1, self.c_out))  # one product per frequency
            native.call("from_freqs", 0, prod, self.batch, *self.out_hw, self.c_out, 0,
                        *self._geometry(), self.at, bias, out)
        return out.permute(0, 3, 1, 2)  # NCHW view of channels-last memory

    def adjoint(self, g: torch.Tensor, u_t: torch.Tensor, out: torch.Tensor | None = None):
        """The transposed convolution of g; out: a contiguous (batch, H, W, C_in) tensor to
        write to. The n x n input tiles overlap: the kernels add them up per image."""
        self._check_grad(g)
        out = g.new_empty(self.batch, *self.in_hw, self.c_in) if out is None else out
        if self.fused:
            self._fused(True, g, out, u_t, None)
        else:
            z = self._output_grad_tiles(g, 0)
            v = torch.bmm(z, u_t[..., :self.c_in], out=self._buf(1, self.c_in))
            native.call("from_freqs", 1, v, self.batch, *self.in_hw, self.c_in, self.p,
                        *self._geometry(), self.b, None, out)
        return out.permute(0, 3, 1, 2)

    def weight_grad_into(self, x: torch.Tensor, g: torch.Tensor, acc: torch.Tensor,
                         first: bool) -> None:
        """Write (first) or add to acc (n*n, C_in, C_out) the weight gradient of conv(x) against
        output gradient g in the tile frequency domain: per frequency, (input tiles)^T (gradient
        tiles)."""
        v = self._input_tiles(x, 0)
        z = self._output_grad_tiles(g, 1)
        if first:
            torch.bmm(v.transpose(1, 2), z, out=acc)
        else:
            acc.baddbmm_(v.transpose(1, 2), z)


KERNELS = (3, 5)  # F(4x4, 3x3) and F(4x4, 5x5)
# For the default ('auto'), the layers where F(4x4, r x r) beat oneDNN's direct convolution in
# both directions on the 2-core AMD EPYC of docs/performance.md: 3x3 with at least 128 channels
# on each side (1.4-2.4x; 64->64 at 8x8: 0.8x, 32->64: 0.6x), 5x5 with at least 32 (32->64 at
# 12x12: 1.0-2.5x, 64->128 at 8x8: 1.3x; 8->16: 0.3-0.4x, 3->32: 0.1-0.6x).
AUTO_MIN_CHANNELS = {3: 128, 5: 32}
TILE = 4  # F(4x4, r x r): m = 4 output rows and columns per tile
GEMM_BLOCK = 32  # output columns of the fused kernel's product blocks (NB in _tiles.c)
CHUNK_BYTES = 4 << 20
# Layers at most this wide on both sides run as one fused kernel
# per chunk of FUSED_TILES tiles; wider ones use MKL's batched products over the whole batch
# slice (measured: 32->64 5x5 and 128->256 3x3 faster fused, 1.2-1.8x in slow streaks;
# 256->512 and 512->512 faster with MKL, whose products over 256-512 channels are better blocked).
FUSED_MAX_CHANNELS = 256
FUSED_TILES = 32
# The weight gradient has a fixed cost, in the size of the transformed weight (n*n C_in C_out),
# besides the per-tile one; below this many tiles in the batch oneDNN's was faster (measured:
# 512->512 at 4x4, 32 tiles: 0.66x; 256->512 at 8x8, 128 tiles: 1.45x).
AUTO_MIN_WEIGHT_GRAD_TILES = 128


def fused(c_in: int, c_out: int) -> bool:
    """Whether a layer of these widths runs as one fused kernel (see WinogradPlan)."""
    return max(c_in, c_out) <= FUSED_MAX_CHANNELS


def runs_on(t: torch.Tensor) -> bool:
    """Whether the kernels can take tensors like t here and now: on CPU, in float32 or float64,
    outside autocast (which asks for its own precision), with the kernels built."""
    return (
        t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and native.kernels() is not None
    )


def eligible(conv: torch.nn.Conv2d, x: torch.Tensor, everywhere: bool = False) -> bool:
    """Whether `conv` applied to x (and its adjoint) takes the Winograd path: on CPU, in float32
    or float64 outside autocast and autograd (the relaxation steps), stride 1, a square kernel
    in KERNELS; unless `everywhere` (--conv-algo winograd), only where AUTO_MIN_CHANNELS says
    it pays."""
    r = conv.kernel_size[0]
    wide = everywhere or min(conv.in_channels, conv.out_channels) >= AUTO_MIN_CHANNELS.get(r, 1e9)
    return (
        wide
        and runs_on(x)
        and not torch.is_grad_enabled()
        and conv.kernel_size == (r, r)
        and r in KERNELS
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.padding_mode == "zeros"
    )


def weight_grad_eligible(conv: torch.nn.Conv2d, x: torch.Tensor, everywhere: bool = False):
    """Whether the weight gradient of conv at x takes the Winograd path (see eligible)."""
    if not eligible(conv, x, everywhere):
        return False
    tiles = math.prod(tiling(x.shape[-2:], conv.kernel_size[0], conv.padding[0], TILE)[1])
    return everywhere or x.shape[0] * tiles >= AUTO_MIN_WEIGHT_GRAD_TILES


class WinogradConvs:
    """The plans (one per convolution and input shape) and transformed weights of a network.

    The transformed weight is kept with the weight's version counter, so an optimizer step (an
    in-place update) or loading a state dict makes it recompute on the next call.
    """

    def __init__(self) -> None:
        # Keyed by id() of the network's own conv modules, which live as long as it does.
        self._plans: dict[tuple, WinogradPlan] = {}
        self._workspace = Workspace()
        self._weights: dict[int, tuple[tuple, torch.Tensor]] = {}

    # A copied or unpickled network starts with empty caches: the entries are keyed by the
    # original's modules, and are rebuilt on demand anyway.
    def __deepcopy__(self, memo) -> WinogradConvs:
        return WinogradConvs()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _plan(self, conv: torch.nn.Conv2d, batch: int, in_hw, dtype, device) -> WinogradPlan:
        key = (id(conv), batch, tuple(in_hw), dtype, device)
        plan = self._plans.get(key)
        if plan is None:
            plan = WinogradPlan(TILE, conv.kernel_size[0], batch, conv.in_channels,
                                conv.out_channels, in_hw, conv.padding[0], dtype, device,
                                self._workspace)
            self._plans[key] = plan
        return plan

    def _weight(self, conv: torch.nn.Conv2d, transposed: bool = False) -> torch.Tensor:
        """The transformed weight u (n*n, C_in, C_out), or with transposed its
        ``transpose_weight`` copy for the adjoint, both recomputed when the weight changes."""
        w = conv.weight
        stamp = (w._version, w.data_ptr(), w.dtype, w.device)
        cached = self._weights.get(id(conv))
        if cached is None or cached[0][2:] != stamp[2:]:
            cached = (stamp, transform_weight(w, TILE), None)
        elif cached[0] != stamp:  # the weight changed in place: so does its transform
            cached = (stamp, transform_weight(w, TILE, out=cached[1]), cached[2])
            if cached[2] is not None:
                cached[2][..., :w.shape[1]] = cached[1].transpose(1, 2)
        if transposed and cached[2] is None:
            cached = (*cached[:2], transpose_weight(cached[1]))
        self._weights[id(conv)] = cached
        return cached[2] if transposed else cached[1]

    def _chunks(self, conv: torch.nn.Conv2d, batch: int, in_hw, u: torch.Tensor):
        """Batch slices small enough that a slice's tiles stay in cache: at most CHUNK_BYTES of
        tiles per buffer, or the transformed weight's size when that is larger (each slice
        reads the whole weight once, so smaller slices stop paying there). Fused layers take the
        whole batch: their kernel works through it a few images at a time."""
        if fused(conv.in_channels, conv.out_channels):
            return [slice(0, batch)]
        r = conv.kernel_size[0]
        tiles = math.prod(tiling(in_hw, r, conv.padding[0], TILE)[1])
        per_sample = tiles * (TILE + r - 1) ** 2 * max(conv.in_channels, conv.out_channels)
        size = max(1, max(CHUNK_BYTES, u.numel() * u.element_size())
                   // (per_sample * u.element_size()))
        return [slice(b, min(b + size, batch)) for b in range(0, batch, size)]

    def forward(self, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """conv(x), bias included."""
        u = self._weight(conv)
        b, hw = x.shape[0], tuple(x.shape[-2:])
        out_hw = tiling(hw, conv.kernel_size[0], conv.padding[0], TILE)[0]
        out = x.new_empty(b, *out_hw, conv.out_channels)
        bias = None if conv.bias is None else conv.bias.detach()
        for part in self._chunks(conv, b, hw, u):
            xs = x[part]
            self._plan(conv, xs.shape[0], hw, x.dtype, x.device).forward(xs, u, out[part], bias)
        return out.permute(0, 3, 1, 2)  # NCHW view of channels-last memory

    def weight_grad(self, conv: torch.nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The gradient of sum(conv(x) * g) with respect to conv's weight, (C_out, C_in, r, r):
        summed over the batch in the tile frequency domain, then taken back through G."""
        u = self._weight(conv)
        r = conv.kernel_size[0]
        n, hw = TILE + r - 1, tuple(x.shape[-2:])
        acc = x.new_empty(n * n, conv.in_channels, conv.out_channels)
        for k, part in enumerate(self._chunks(conv, x.shape[0], hw, u)):
            xs = x[part]
            plan = self._plan(conv, xs.shape[0], hw, x.dtype, x.device)
            plan.weight_grad_into(xs, g[part], acc, first=k == 0)
        return untransform_weight_grad(acc, TILE, r)

    def adjoint(self, conv: torch.nn.Conv2d, g: torch.Tensor, out_hw) -> torch.Tensor:
        """The transposed convolution of g with conv's weight (no bias): the input gradient of
        conv for an input of spatial size out_hw."""
        u_t = self._weight(conv, transposed=True)
        b = g.shape[0]
        out = g.new_empty(b, *out_hw, conv.in_channels)
        for part in self._chunks(conv, b, out_hw, u_t):
            gs = g[part]
            self._plan(conv, gs.shape[0], out_hw, g.dtype, g.device).adjoint(gs, u_t, out[part])
        return out.permute(0, 3, 1, 2)
