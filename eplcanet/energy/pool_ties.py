"""A rounding-independent tie rule for the max-pool indices of a relaxation.

From the default zero initial states, and wherever a layer saturates (hard sigmoids clip to
exactly 0 or 1), many positions of a convolution see identical inputs: their outputs are
mathematically equal, and a 2x2 max-pooling window over them is an exact tie. The direct
convolution computes identical receptive fields to identical bits, so ``F.max_pool2d`` picks the
first position of the window (row-major), the rule of the reference EP code. A fast convolution
(Winograd, or whatever algorithm cuDNN picks) rounds each position of a tile differently and
breaks the same tie at random. The index decides where the top-down feedback and the weight
update go, so the relaxation then settles elsewhere: the estimate changed by 20-30% on the seed's
CIFAR network (docs/performance.md#fast-paths-and-max-pool-ties).

``first_identical`` restores the reference rule without trusting the convolution's rounding:
ties are read off the input, not off the output. Two positions of a window are tied exactly when
their receptive fields hold the same values in every channel; the chosen index moves to the
first position of the window whose receptive field equals that of the position the pooling
picked. Where the convolution is exact (the direct one on CPU) this changes nothing; the test
suite checks that it does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import native
from ..kernels.winograd import nhwc


def _same_fields(q: torch.Tensor, a: tuple[int, int], b: tuple[int, int], k: int, s: int):
    """(N, h, w) bool: True at (y, x) where the k x k receptive field of output position
    (y, x) + a equals that of (y, x) + b in every channel (offsets in output positions, stride s).
    q: the padded input as (N, H, W, C), channels innermost, so that the channel test reads
    contiguous memory for channels-last states."""
    (ay, ax), (by, bx) = (a[0] * s, a[1] * s), (b[0] * s, b[1] * s)
    h = q.shape[1] - max(ay, by)
    w = q.shape[2] - max(ax, bx)
    differs = (q[:, ay:ay + h, ax:ax + w] != q[:, by:by + h, bx:bx + w]).any(-1)
    # Fields are identical where no input pixel under them differs: count the differing pixels
    # of every k x k field from the integral image (exact integer sums, one pass).
    c = F.pad(differs.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0))
    box = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
    return box[:, ::s, ::s] == 0


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or \
            conv.padding[0] != conv.padding[1] or conv.dilation != (1, 1) or conv.groups != 1 \
            or conv.padding_mode != "zeros":
        raise ValueError(f"tie rule needs a square, undilated, ungrouped, zero-padded "
                         f"convolution, got {conv}")


def canonical_positions(inp: torch.Tensor, conv: nn.Conv2d, out_hw) -> torch.Tensor:
    """(N, 4, H2, W2) int64: for each 2x2 window of conv(inp) (of spatial size out_hw) and each
    of its positions (0 top left, 1 top right, 2 bottom left, 3 bottom right: F.max_pool2d's
    scan order), the first position whose receptive field is identical to it."""
    _check_conv(conv)
    k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    q = (F.pad(inp, (pad, pad, pad, pad)) if pad else inp).permute(0, 2, 3, 1)
    h2, w2 = out_hw[0] // 2, out_hw[1] // 2
    horizontal = _same_fields(q, (0, 0), (0, 1), k, s)
    vertical = _same_fields(q, (0, 0), (1, 0), k, s)

    def at(mask, row=0, col=0):  # the mask at every window's position (row, col), (N, 1, H2, W2)
        return mask[:, row:row + 2 * h2:2, col:col + 2 * w2:2].unsqueeze(1)

    eq01, eq23 = at(horizontal), at(horizontal, row=1)
    eq02, eq13 = at(vertical), at(vertical, col=1)
    eq03 = at(_same_fields(q, (0, 0), (1, 1), k, s))
    eq12 = at(_same_fields(q, (0, 1), (1, 0), k, s))
    zero = torch.zeros_like(eq01, dtype=torch.long)
    p1 = torch.where(eq01, 0, 1)
    p2 = torch.where(eq02, 0, torch.where(eq12, 1, 2))
    p3 = torch.where(eq03, 0, torch.where(eq13, 1, torch.where(eq23, 2, 3)))
    return torch.cat([zero, p1.long(), p2.long(), p3.long()], 1)


def first_identical(idx: torch.Tensor, inp: torch.Tensor, conv: nn.Conv2d,
                    out_hw) -> torch.Tensor:
    """The max-pool indices idx (N, C, H2, W2, flat in conv(inp)'s out_hw plane, as
    ``F.max_pool2d(..., 2, 2, return_indices=True)`` gives them) with every pick moved to the
    first window position whose receptive field is identical to the picked one's.

    On CPU in fp32 / fp64 with the C kernels built, one pass of ``_ties.c`` does it in place
    (it stops comparing two fields at their first difference): idx itself is then changed, so
    pass a clone to keep the original picks. Elsewhere ``canonical_positions`` and a gather
    (tensor operations, any device) make a new tensor."""
    if inp.dtype in (torch.float32, torch.float64) and inp.device.type == "cpu" \
            and native.kernels() is not None:
        return _first_identical_native(idx, inp, conv, out_hw)
    canon = canonical_positions(inp, conv, out_hw)
    w = out_hw[1]
    pos = (idx // w % 2) * 2 + idx % w % 2
    new = canon.gather(1, pos)
    return idx + (new // 2 - pos // 2) * w + (new % 2 - pos % 2)


def _first_identical_native(idx, inp, conv, out_hw) -> torch.Tensor:
    _check_conv(conv)
    if idx.dtype != torch.int64 or idx.dim() != 4 or idx.shape[0] != inp.shape[0] or \
            idx.shape[-2:] != (out_hw[0] // 2, out_hw[1] // 2):
        raise ValueError(f"max-pool indices {tuple(idx.shape)} {idx.dtype} do not fit a "
                         f"{tuple(out_hw)} output of a batch of {inp.shape[0]}")
    # The kernel writes through idx's own strides: hand it the memory in whichever of the two
    # dense layouts max_pool2d produced (channels-last for channels-last states).
    if idx.is_contiguous():
        buf = idx
    else:
        idx = idx.contiguous(memory_format=torch.channels_last)
        buf = idx.permute(0, 2, 3, 1)
    k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    _, c, h, w = inp.shape
    native.call("pool_ties", nhwc(inp), inp.shape[0], h, w, c, k, s, pad, out_hw[0], out_hw[1],
                buf, idx.shape[1], *idx.stride())
    return idx
