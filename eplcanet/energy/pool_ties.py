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

def _same_fields(p: torch.Tensor, a: tuple[int, int], b: tuple[int, int], k: int, s: int):
    """(N, 1, h, w) bool: True at (y, x) where the k x k receptive field of output position
    (y, x) + a equals that of (y, x) + b in every channel (offsets in output positions, stride s,
    over the padded input p)."""
    (ay, ax), (by, bx) = (a[0] * s, a[1] * s), (b[0] * s, b[1] * s)
    h = p.shape[-2] - max(ay, by)
    w = p.shape[-1] - max(ax, bx)
    differs = (p[..., ay:ay + h, ax:ax + w] != p[..., by:by + h, bx:bx + w]).any(1, keepdim=True)
    # A field is identical when no input pixel under it differs: a max over the field is zero.
    return F.max_pool2d(differs.to(torch.float32), k, s) == 0


def canonical_positions(inp: torch.Tensor, conv: nn.Conv2d, out_hw) -> torch.Tensor:
    """(N, 4, H2, W2) int64: for each 2x2 window of conv(inp) (of spatial size out_hw) and each
    of its positions (0 top left, 1 top right, 2 bottom left, 3 bottom right: F.max_pool2d's
    scan order), the first position whose receptive field is identical to it."""
    k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or \
            conv.padding[0] != conv.padding[1] or conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError(f"tie rule needs a square, undilated, ungrouped convolution, got {conv}")
    p = F.pad(inp, (pad, pad, pad, pad)) if pad else inp
    h2, w2 = out_hw[0] // 2, out_hw[1] // 2

    def tied(a, b, row=0, col=0):
        """The pair's test for every window, (a, b) taken from the window's position (row, col)."""
        m = _same_fields(p, a, b, k, s)
        return m[..., row:row + 2 * h2:2, col:col + 2 * w2:2]

    eq01, eq02, eq03 = tied((0, 0), (0, 1)), tied((0, 0), (1, 0)), tied((0, 0), (1, 1))
    eq12 = tied((0, 1), (1, 0))
    eq13 = tied((0, 0), (1, 0), col=1)
    eq23 = tied((0, 0), (0, 1), row=1)
    zero = torch.zeros_like(eq01, dtype=torch.long)
    p1 = torch.where(eq01, 0, 1)
    p2 = torch.where(eq02, 0, torch.where(eq12, 1, 2))
    p3 = torch.where(eq03, 0, torch.where(eq13, 1, torch.where(eq23, 2, 3)))
    return torch.cat([zero, p1.long(), p2.long(), p3.long()], 1)


def first_identical(idx: torch.Tensor, inp: torch.Tensor, conv: nn.Conv2d,
                    out_hw) -> torch.Tensor:
    """The max-pool indices idx (N, C, H2, W2, flat in conv(inp)'s out_hw plane, as
    ``F.max_pool2d(..., 2, 2, return_indices=True)`` gives them) with every pick moved to the
    first window position whose receptive field is identical to the picked one's."""
    canon = canonical_positions(inp, conv, out_hw)
    if inp.device.type == "cpu" and bool((canon == torch.arange(4).view(1, 4, 1, 1)).all()):
        return idx  # no identical fields anywhere (the common case once states move)
    w = out_hw[1]
    row, col = idx // w, idx % w
    pos = (row % 2) * 2 + col % 2
    new = canon.gather(1, pos)
    return idx + (new // 2 - pos // 2) * w + (new % 2 - pos % 2)
