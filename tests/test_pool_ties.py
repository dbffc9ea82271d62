"""The max-pool tie rule (eplcanet.energy.pool_ties) against a naive loop, and against the direct
convolution's own choice."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eplcanet.energy import pool_ties
from eplcanet.energy.pool_ties import first_identical
from eplcanet.kernels import native
from eplcanet.kernels.winograd import WinogradConvs

needs_kernels = pytest.mark.skipif(native.why_unavailable() is not None,
                                   reason="the Winograd C kernels cannot be built here")


def saturated_states(n, c, h, w, dtype=torch.float64, seed=0):
    """States as a hard-sigmoid network has them: blocks clipped to exactly 0 or 1 (so that many
    receptive fields are identical), other values in between."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 3, (n, c, (h + 7) // 8, (w + 7) // 8), generator=g).to(dtype) / 2
    s = coarse.repeat_interleave(8, 2).repeat_interleave(8, 3)[..., :h, :w].clone()
    free = torch.rand(n, 1, h, w, generator=g) < 0.03  # a few positions move freely
    s[free.expand_as(s)] = torch.rand(int(free.expand_as(s).sum()), generator=g, dtype=dtype)
    return s.contiguous(memory_format=torch.channels_last)


def stripes(c, h, w, dtype=torch.float64):
    """Five images whose fields are identical along one direction each: blocks, rows, columns,
    diagonals (y - x constant) and anti-diagonals (y + x constant), so every pair of window
    positions is tied somewhere and untied elsewhere."""
    y = torch.arange(h).view(h, 1).expand(h, w)
    x = torch.arange(w).view(1, w).expand(h, w)
    lines = [(y // 8) * 3 + x // 8, y, x, y - x, y + x]
    levels = torch.tensor([0.0, 1.0, 0.5, 0.25], dtype=dtype)
    imgs = [levels[(line.unsqueeze(0) + torch.arange(c).view(c, 1, 1)) % 4] for line in lines]
    return torch.stack(imgs)


def naive_first_identical(idx, inp, conv, out_hw):
    """Per window, the first position whose receptive field equals the picked one's, by loops."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    padded = F.pad(inp, (p, p, p, p))
    w = out_hw[1]
    out = idx.clone()
    n_, c_, h2, w2 = idx.shape
    for n in range(n_):
        for i in range(h2):
            for j in range(w2):
                fields = [padded[n, :, y * s:y * s + k, x * s:x * s + k]
                          for y, x in ((2 * i, 2 * j), (2 * i, 2 * j + 1),
                                       (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1))]
                for ch in range(c_):
                    flat = int(idx[n, ch, i, j])
                    picked = (flat // w - 2 * i) * 2 + (flat % w - 2 * j)
                    first = next(q for q in range(4) if torch.equal(fields[q], fields[picked]))
                    out[n, ch, i, j] = (2 * i + first // 2) * w + 2 * j + first % 2
    return out


@pytest.fixture(params=["C kernel", "tensor operations"])
def tie_rule(request, monkeypatch):
    """first_identical through either implementation: the C kernel (CPU) or the tensor
    operations (any device)."""
    if request.param == "C kernel":
        if native.why_unavailable() is not None:
            pytest.skip("the C kernels cannot be built here")
        return first_identical

    def tensor_operations(*args):
        with monkeypatch.context() as m:
            m.setattr(pool_ties.native, "kernels", lambda: None)
            return first_identical(*args)
    return tensor_operations


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, stride, pad, hw", [(3, 1, 1, (9, 11)), (5, 1, 0, (12, 12)),
                                                (3, 2, 1, (13, 10))])
def test_matches_naive_loop_for_any_pick(k, stride, pad, hw, dtype, tie_rule):
    torch.manual_seed(0)
    inp = torch.cat([saturated_states(2, 3, *hw, dtype), stripes(3, *hw, dtype)])
    inp = inp.contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(3, 4, k, stride, pad).to(dtype)
    h = conv(inp)
    # Any pick in each window, not only the maximum: random scores choose it.
    _, idx = F.max_pool2d(torch.rand_like(h), 2, 2, return_indices=True)
    want = naive_first_identical(idx, inp, conv, h.shape[-2:])
    got = tie_rule(idx.clone(), inp, conv, h.shape[-2:])
    assert torch.equal(got, want)
    assert not torch.equal(got, idx)  # the inputs do hold identical fields: the rule moved picks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_convolution_already_picks_the_first_tied_position(dtype, tie_rule):
    """The rule is the reference's: where the convolution is exact (direct, CPU), identical
    fields give bitwise equal outputs and F.max_pool2d keeps the first, so nothing moves."""
    torch.manual_seed(0)
    inp = saturated_states(4, 16, 16, 16, dtype)
    conv = nn.Conv2d(16, 32, 3, 1, 1).to(dtype).to(memory_format=torch.channels_last)
    with torch.no_grad():
        h = conv(inp)
    _, idx = F.max_pool2d(h, 2, 2, return_indices=True)
    _, idx_last = F.max_pool2d(h.flip(-1, -2), 2, 2, return_indices=True)
    assert not torch.equal(idx_last.flip(-1, -2) % 2, idx % 2)  # ties exist in this input
    assert torch.equal(tie_rule(idx.clone(), inp, conv, h.shape[-2:]), idx)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_winograd_picks_become_the_direct_ones(dtype, tie_rule):
    torch.manual_seed(0)
    inp = saturated_states(4, 128, 16, 16, dtype)
    conv = nn.Conv2d(128, 128, 3, 1, 1).to(dtype).to(memory_format=torch.channels_last)
    with torch.no_grad():
        _, direct = F.max_pool2d(conv(inp), 2, 2, return_indices=True)
        h = WinogradConvs().forward(conv, inp)
        _, fast = F.max_pool2d(h, 2, 2, return_indices=True)
    assert not torch.equal(fast, direct)  # Winograd's rounding breaks the ties elsewhere
    assert torch.equal(tie_rule(fast.clone(), inp, conv, h.shape[-2:]), direct)


def test_refuses_convolutions_it_cannot_read_fields_of():
    inp = torch.rand(1, 2, 8, 8)
    conv = nn.Conv2d(2, 2, 3, 1, 1, dilation=2)
    _, idx = F.max_pool2d(torch.rand(1, 2, 8, 8), 2, 2, return_indices=True)
    with pytest.raises(ValueError, match="undilated"):
        first_identical(idx, inp, conv, (8, 8))
