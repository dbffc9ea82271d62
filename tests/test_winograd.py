"""Winograd convolutions against the direct ones (F.conv2d, F.conv_transpose2d) and a naive
loop."""

import copy

import pytest
import torch
import torch.nn.functional as F

from eplcanet.energy.dynamics import Relaxation, relax
from eplcanet.energy.learning import phi_param_grads
from eplcanet.energy.networks import P_CNN
from eplcanet.kernels.winograd import (WinogradConvs, WinogradPlan, eligible, transform_weight,
                                      transpose_weight, weight_grad_eligible, winograd_matrices)


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("m,r", [(2, 3), (4, 3), (4, 5), (2, 2)])
def test_matrices_compute_the_1d_correlation(m, r):
    at, g, bt = winograd_matrices(m, r)
    torch.manual_seed(0)
    d, w = torch.randn(m + r - 1, dtype=torch.float64), torch.randn(r, dtype=torch.float64)
    naive = torch.stack([sum(w[k] * d[i + k] for k in range(r)) for i in range(m)])
    torch.testing.assert_close(at @ ((g @ w) * (bt @ d)), naive, rtol=1e-12, atol=1e-12)


# (batch, c_in, c_out, size, kernel, padding): tiles that fit exactly, tiles overhanging the
# output (cropped), padding 0 / 1 / 2, rectangular inputs; channel counts below, at and above
# the kernels' blocks of 16 and 32 (layers up to 256 channels run as one fused kernel, some
# here with more images than one chunk), and one layer wider than that (separate transforms
# and one batched product).
SHAPES = [
    (3, 4, 5, (8, 8), 3, 1),
    (2, 3, 6, (11, 9), 3, 0),
    (2, 5, 4, (7, 10), 3, 2),
    (3, 4, 3, (12, 12), 5, 0),
    (2, 3, 4, (9, 6), 5, 2),
    (11, 32, 64, (12, 12), 5, 0),
    (5, 64, 32, (9, 7), 3, 2),
    (3, 32, 32, (10, 13), 5, 1),
    (2, 32, 288, (6, 6), 3, 1),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_adjoint_equal_the_direct_convolutions(shape):
    b, ci, co, hw, r, p = shape
    torch.manual_seed(1)
    x = _cl(torch.randn(b, ci, *hw, dtype=torch.float64))
    w = torch.randn(co, ci, r, r, dtype=torch.float64)
    plan = WinogradPlan(4, r, b, ci, co, hw, p, torch.float64, "cpu")
    assert plan.fused == (max(ci, co) <= 256)
    u = transform_weight(w, 4)
    bias = torch.randn(co, dtype=torch.float64)
    out = plan.forward(x, u, bias=bias)
    ref = F.conv2d(x, w, bias, padding=p)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = ref - bias.view(-1, 1, 1)

    g = _cl(torch.randn_like(ref))
    back = plan.adjoint(g, transpose_weight(u))
    torch.testing.assert_close(back, F.conv_transpose2d(g, w, padding=p), rtol=1e-10, atol=1e-10)
    # The adjoint identity <conv(x), g> = <x, conv^T(g)> holds whatever the tiling.
    torch.testing.assert_close((ref * g).sum(), (x * back).sum(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient_equals_the_direct_one(shape):
    b, ci, co, hw, r, p = shape
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(ci, co, r, padding=p).double()
    x = _cl(torch.randn(b, ci, *hw, dtype=torch.float64))
    g = _cl(torch.randn_like(conv(x)))
    convs = WinogradConvs()
    ref = torch.nn.grad.conv2d_weight(x, conv.weight.shape, g, padding=p)
    torch.testing.assert_close(convs.weight_grad(conv, x, g), ref, rtol=1e-10, atol=1e-10)


def test_adjoint_rejects_maps_of_another_size():
    plan = WinogradPlan(4, 3, 2, 3, 4, (7, 7), 1, torch.float64, "cpu")
    with pytest.raises(ValueError, match=r"gives \(7, 7\) maps"):
        plan.adjoint(torch.zeros(2, 4, 6, 6, dtype=torch.float64), torch.zeros(36, 4, 32))


def test_float32_error_is_rounding_sized():
    torch.manual_seed(3)
    x = _cl(torch.rand(4, 32, 12, 12))
    w = torch.randn(64, 32, 5, 5) / 40
    plan = WinogradPlan(4, 5, 4, 32, 64, (12, 12), 0, torch.float32, "cpu")
    out = plan.forward(x, transform_weight(w, 4))
    ref = F.conv2d(x.double(), w.double())
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def _wide_conv(c_in=128, c_out=128):
    return torch.nn.Conv2d(c_in, c_out, 3, padding=1).to(memory_format=torch.channels_last)


def test_eligibility():
    conv, x = _wide_conv(), _cl(torch.rand(2, 128, 8, 8))
    with torch.no_grad():
        assert eligible(conv, x)
        narrow, xn = _wide_conv(32, 64), _cl(torch.rand(2, 32, 8, 8))
        assert not eligible(narrow, xn)  # too narrow to pay, by default
        assert eligible(narrow, xn, everywhere=True)  # --conv-algo winograd
        five, thin_five = torch.nn.Conv2d(32, 64, 5), torch.nn.Conv2d(8, 16, 5)
        assert eligible(five, xn)  # 5x5 pays from 32 channels on
        x8 = _cl(torch.rand(2, 8, 8, 8))
        assert not eligible(thin_five, x8) and eligible(thin_five, x8, everywhere=True)
        assert not eligible(torch.nn.Conv2d(128, 128, 3, stride=2, padding=1), x)
        assert not eligible(conv, x.to(torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not eligible(conv, x)
    assert not eligible(conv, x)  # autograd on: BPTT differentiates the direct convolution


def test_cache_follows_in_place_weight_updates_and_shares_its_workspace():
    torch.manual_seed(4)
    convs = WinogradConvs()
    a, b = _wide_conv(), _wide_conv()
    xa, xb = _cl(torch.rand(2, 128, 8, 8)), _cl(torch.rand(3, 128, 4, 4))
    with torch.no_grad():
        for _ in range(2):  # alternating plans reuse the same tile buffers
            torch.testing.assert_close(convs.forward(a, xa), a(xa), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(convs.forward(b, xb), b(xb), rtol=1e-4, atol=1e-4)
        g = _cl(torch.rand(2, 128, 8, 8))
        adjoint = F.conv_transpose2d(g, a.weight, padding=1)
        torch.testing.assert_close(convs.adjoint(a, g, (8, 8)), adjoint, rtol=1e-4, atol=1e-4)
        a.weight.mul_(-2.0)  # what an optimizer step does
        torch.testing.assert_close(convs.forward(a, xa), a(xa), rtol=1e-4, atol=1e-4)
        # the adjoint's transposed copy of the transformed weight follows too
        torch.testing.assert_close(convs.adjoint(a, g, (8, 8)), -2 * adjoint, rtol=1e-4,
                                   atol=1e-4)


def _wide_net(size=8):
    return P_CNN((8, size, size), [128, 128], [3, 3], [1, 1], [1, 1], "mm", [10],
                 act="my_hard_sig", softmax=True, loss="cel").double()


def _direct_twin_and_two_phases(net, batch):
    """A copy of net with direct convolutions, inputs, labels and two random sets of states."""
    direct = net.with_relaxation(conv_algo="direct")
    x = torch.rand(batch, *net.in_shape, dtype=torch.float64)
    sa = [torch.rand(batch, *s, dtype=torch.float64) for s in net.state_shapes]
    return direct, x, torch.randint(0, 10, (batch,)), sa, [torch.rand_like(s) for s in sa]


def test_network_relaxation_is_the_same_with_and_without_winograd():
    torch.manual_seed(5)
    net = _wide_net()
    direct = net.with_relaxation(conv_algo="direct")
    x, y = torch.rand(4, 8, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    with torch.no_grad():
        assert eligible(net.synapses[1], net.init_states(4)[0])
        drive = net.input_drive(x)
        states = relax(net, drive, net.init_states(4), 3)
        for beta in (0.0, torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64)):
            fast = net.phi_grad_states(drive, states, beta, y)
            ref = direct.phi_grad_states(drive, states, beta, y)
            for a, b in zip(fast, ref):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    # The update's weight gradients too (a batch with enough tiles for the Winograd weight
    # gradient), from states far enough apart to move the pool indices.
    net = _wide_net(16)
    direct, x, y, sa, sb = _direct_twin_and_two_phases(net, 32)
    with torch.no_grad():
        assert weight_grad_eligible(net.synapses[1], sa[0])
    fast = phi_param_grads(net, x, y, sa, -0.5, sb, 0.5)
    for a, b in zip(fast, phi_param_grads(direct, x, y, sa, -0.5, sb, 0.5)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_conv_algo_is_validated():
    net = _wide_net()
    with pytest.raises(ValueError, match="accepted: auto, direct, winograd"):
        net.with_relaxation(conv_algo="fft")


def test_copies_and_pickles_of_a_network_start_with_empty_caches():
    import pickle

    torch.manual_seed(6)
    net = _wide_net()
    x = torch.rand(2, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        relax(net, net.input_drive(x), net.init_states(2), 1)
    assert net._winograd._plans
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert not other._winograd._plans
        with torch.no_grad():
            other.synapses[1].weight.mul_(0.5)  # its own weights, not the original's
            s = other.init_states(2)
            s[0] = torch.rand_like(s[0])
            fast = other.phi_grad_states(other.input_drive(x), s)[0]
            direct = other.with_relaxation(conv_algo="direct")
            ref = direct.phi_grad_states(direct.input_drive(x), s)[0]
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


def test_winograd_everywhere_runs_5x5_layers_like_the_direct_convolution():
    torch.manual_seed(8)
    net = P_CNN((1, 14, 14), [8, 16], [5, 5], [1, 1], [0, 2], "mm", [10], act="my_hard_sig",
                softmax=True, loss="cel",
                relaxation=Relaxation(conv_algo="winograd")).double()
    direct, x, y, sa, sb = _direct_twin_and_two_phases(net, 6)
    with torch.no_grad():
        assert eligible(net.synapses[1], sa[0], everywhere=True)
        assert not eligible(net.synapses[1], sa[0])  # 8 channels: too thin for 'auto'
        d = net.input_drive(x)
        for a, b in zip(net.phi_grad_states(d, sa, 0.3, y), direct.phi_grad_states(d, sa, 0.3, y)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(phi_param_grads(net, x, y, sa, -0.5, sb, 0.5),
                    phi_param_grads(direct, x, y, sa, -0.5, sb, 0.5)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_plans_refuse_tensors_of_another_shape_before_the_kernels_run():
    plan = WinogradPlan(4, 5, 2, 12, 32, (20, 20), 0, torch.float64, "cpu")
    u = transform_weight(torch.zeros(32, 12, 5, 5, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match=r"takes inputs of shape \(2, 12, 20, 20\)"):
        plan.forward(_cl(torch.zeros(2, 12, 40, 40, dtype=torch.float64)), u)
    with pytest.raises(ValueError, match="in torch.float64, got"):
        plan.forward(_cl(torch.zeros(2, 12, 20, 20)), u)
