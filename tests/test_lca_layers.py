"""LCA layers as torch.nn modules: the lcapt-compatible API, shapes, options and clear errors."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from test_lca_common import RAW

from eplcanet.sparse import RETURN_VARS, LCAConv1D, LCAConv2D, LCAConv3D, LCALinear, SparseCoder

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread


def test_seed_usage_gives_codes_of_the_strided_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layer = LCAConv2D(out_neurons=64, in_neurons=3, kernel_size=7, stride=2, pad="same")
    assert os.listdir(tmp_path) == []  # constructing a layer writes nothing
    assert layer.weights.shape == (64, 3, 7, 7)
    torch.testing.assert_close(layer.weights.flatten(1).norm(dim=1), torch.ones(64))
    layer.lca_iters = 20
    acts = layer(torch.rand(2, 3, 32, 32))
    assert acts.shape == (2, 64, 16, 16) and (acts >= 0).all()
    assert isinstance(layer, SparseCoder)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "cls, shape, kwargs, code",
    [
        (LCALinear, (4, 30), {}, (4, 12)),
        (LCAConv1D, (4, 2, 21), {"kernel_size": 5, "stride": 2}, (4, 12, 11)),
        (LCAConv1D, (4, 2, 21), {"kernel_size": 4, "stride": 2, "pad": "valid"}, (4, 12, 9)),
        (LCAConv2D, (4, 3, 13, 10), {"kernel_size": (5, 3), "stride": (3, 1)}, (4, 12, 5, 10)),
        (LCAConv3D, (4, 2, 5, 6, 7), {"kernel_size": 3, "stride": 2}, (4, 12, 3, 3, 4)),
        (LCAConv3D, (4, 2, 5, 6, 7), {"kernel_size": 3, "pad": "valid"}, (4, 12, 3, 4, 5)),
    ],
)
def test_every_layer_returns_all_variables_with_their_shapes(cls, shape, kwargs, code):
    layer = cls(
        out_neurons=12, in_neurons=shape[1], lca_iters=15, return_vars=RETURN_VARS, **kwargs
    )
    x = torch.randn(shape)
    inputs, drives, states, acts, recons, errors, conns = layer(x)
    assert drives.shape == states.shape == acts.shape == code
    assert inputs.shape == recons.shape == errors.shape == x.shape
    torch.testing.assert_close(errors, inputs - recons)
    torch.testing.assert_close(recons, layer.decode(acts, output_size=x.shape[2:]))
    torch.testing.assert_close(drives, layer.compute_input_drive(inputs))
    # inputs come back standardised per sample (lcapt's defaults)
    torch.testing.assert_close(inputs.flatten(1).mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs.flatten(1).std(1), torch.ones(4), atol=1e-4, rtol=0)
    assert conns.shape[:2] == (12, 12)


@pytest.mark.parametrize("cls", [LCAConv1D, LCAConv2D, LCAConv3D])
def test_input_drive_is_the_padded_strided_convolution(cls):
    nd = cls._nd
    layer = cls(out_neurons=4, in_neurons=2, kernel_size=5, stride=2).double()
    x = torch.randn((2, 2) + (9,) * nd, dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    expected = conv(x, layer.weights, stride=2, padding=2)
    torch.testing.assert_close(layer.compute_input_drive(x), expected)
    # and decode is its exact adjoint: <D a, x> == <a, D^T x>
    a = torch.randn_like(expected)
    lhs = (layer.decode(a, output_size=x.shape[2:]) * x).sum()
    torch.testing.assert_close(lhs, (a * expected).sum())


def test_return_var_order_single_name_and_all_timesteps():
    layer = LCAConv2D(out_neurons=6, in_neurons=1, kernel_size=3, lca_iters=9, **RAW)
    x = torch.randn(2, 1, 8, 8)
    layer.return_vars = "states"
    assert isinstance(layer(x), torch.Tensor)
    layer.return_vars = ("recons", "acts")
    recons, acts = layer(x)
    assert recons.shape == x.shape and acts.shape == (2, 6, 8, 8)
    layer.return_all_ts = True
    layer.return_vars = ("acts", "inputs", "states", "recon_errors")
    series, inputs, states, errors = layer(x)
    assert series.shape == (2, 6, 8, 8, 9) and inputs.shape == (2, 1, 8, 8, 9)
    assert errors.shape == (2, 1, 8, 8, 9)
    torch.testing.assert_close(series[..., -1], acts)  # the last step is the settled code
    torch.testing.assert_close(series, layer.transfer(states))
    assert not torch.equal(states[..., 0], states[..., -1])


def test_linear_layer_matches_the_equivalent_conv_layer():
    """A 1x1 'image' with a full-size kernel is a dense dictionary: both layers agree."""
    torch.manual_seed(0)
    conv = LCAConv2D(out_neurons=20, in_neurons=3, kernel_size=5, pad="valid", lca_iters=50)
    linear = LCALinear(20, 75, lca_iters=50)
    linear.assign_weight_values(conv.weights.detach().reshape(20, 75))
    x = torch.randn(6, 3, 5, 5)
    torch.testing.assert_close(linear(x.flatten(1)), conv(x).flatten(1), atol=1e-5, rtol=1e-5)


def test_nonneg_hard_threshold_and_callable_transfer():
    torch.manual_seed(1)
    x = torch.randn(3, 3, 10, 10)
    signed = LCAConv2D(out_neurons=8, in_neurons=3, kernel_size=5, nonneg=False, lca_iters=40)
    assert (signed(x) < 0).any()
    nonneg = LCAConv2D(out_neurons=8, in_neurons=3, kernel_size=5, nonneg=True, lca_iters=40)
    assert (nonneg(x) >= 0).all()

    hard = LCAConv2D(
        out_neurons=8,
        in_neurons=3,
        kernel_size=5,
        lambda_=0.3,
        lca_iters=40,
        transfer_func="hard_threshold",
        nonneg=False,
    )
    acts = hard(x)
    assert ((acts == 0) | (acts.abs() > 0.3)).all() and (acts != 0).any()

    seen = []

    def shrink(states, lambda_):
        seen.append(lambda_)
        return torch.sign(states) * F.relu(states.abs() - lambda_)

    custom = LCAConv2D(
        out_neurons=8,
        in_neurons=3,
        kernel_size=5,
        lca_iters=40,
        transfer_func=shrink,
        lambda_=0.25,
    )
    custom.load_state_dict(signed.state_dict())
    torch.testing.assert_close(custom(x), signed(x))
    assert seen and all(lam == 0.25 for lam in seen)


def test_per_feature_lambda():
    torch.manual_seed(2)
    x = torch.randn(4, 3, 12, 12)
    base = LCAConv2D(out_neurons=6, in_neurons=3, kernel_size=5, stride=2, lca_iters=60)
    same = LCAConv2D(
        out_neurons=6,
        in_neurons=3,
        kernel_size=5,
        stride=2,
        lca_iters=60,
        lambda_=torch.full((6,), 0.25),
    )
    same.load_state_dict(base.state_dict())
    torch.testing.assert_close(same(x), base(x))
    lam = torch.tensor([0.25, 0.25, 1e6, 0.25, 0.25, 0.25])
    muted = LCAConv2D(
        out_neurons=6, in_neurons=3, kernel_size=5, stride=2, lca_iters=60, lambda_=lam
    )
    muted.load_state_dict(same.state_dict())
    acts = muted(x)
    assert (acts[:, 2] == 0).all() and (acts[:, [0, 1]] != 0).any()


@pytest.mark.parametrize("solver", ["lca", "fista"])
def test_drive_scaling_and_warm_start(solver):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    layer = LCAConv2D(
        out_neurons=6,
        in_neurons=3,
        kernel_size=5,
        stride=2,
        solver=solver,
        tau=8.0,
        lca_iters=1500,
        return_vars=("states", "acts", "input_drives"),
        **RAW,
    ).double()
    states, acts, drives = layer(x)
    zero = torch.zeros_like(states)
    torch.testing.assert_close(layer(x, drive_scaling=zero)[1], acts)
    push = zero.clone()
    push[:, 4] = 100.0  # a large top-down drive switches feature 4 on everywhere
    _, pushed, pushed_drives = layer(x, drive_scaling=push)
    assert (pushed[:, 4] > 0).all()
    torch.testing.assert_close(pushed_drives, drives + push)
    # warm start at the settled states: one more iteration moves nothing
    layer.lca_iters = 1
    again = layer(x, initial_states=states)[1]
    torch.testing.assert_close(again, acts, atol=1e-6, rtol=0)


def test_track_metrics_records_the_energy_of_each_iteration_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layer = LCAConv2D(
        out_neurons=6,
        in_neurons=3,
        kernel_size=5,
        stride=2,
        lca_iters=25,
        track_metrics=True,
        return_vars=("inputs", "acts"),
        lambda_=0.3,
    ).double()
    inputs, acts = layer(torch.randn(3, 3, 11, 11, dtype=torch.float64))
    m = layer.metrics
    assert set(m) == {"L1", "L2", "TotalEnergy", "FractionActive"}
    assert all(len(v) == 25 for v in m.values())
    torch.testing.assert_close(m["TotalEnergy"], m["L1"] + m["L2"])
    recons = layer.decode(acts, output_size=(11, 11))
    torch.testing.assert_close(m["L2"][-1], 0.5 * (inputs - recons).square().sum() / 3)
    torch.testing.assert_close(m["L1"][-1], 0.3 * acts.abs().sum() / 3)
    torch.testing.assert_close(m["FractionActive"][-1], (acts != 0).double().mean())
    assert os.listdir(tmp_path) == []


def test_sparse_coder_contract_and_state_dict_round_trip():
    torch.manual_seed(4)
    x = torch.randn(3, 3, 12, 12)
    layer = LCAConv2D(out_neurons=8, in_neurons=3, kernel_size=5, stride=2, lca_iters=30, **RAW)
    codes = layer.code(x)
    torch.testing.assert_close(layer.residual(x, codes), x - layer.decode(codes))
    assert layer.dictionary is layer.weights
    twin = LCAConv2D(out_neurons=8, in_neurons=3, kernel_size=5, stride=2, lca_iters=30, **RAW)
    twin.load_state_dict(layer.state_dict())
    torch.testing.assert_close(twin.code(x), codes)
    before = layer.get_weights()
    layer.update_dictionary(codes, layer.residual(x, codes))
    assert not torch.equal(before, layer.weights)


def test_lr_schedule_sets_eta_after_each_update():
    layer = LCALinear(
        5, 4, lca_iters=5, lr_schedule=lambda n: 1.0 / n, return_vars=("acts", "recon_errors")
    )
    x = torch.randn(3, 4)
    for _ in range(3):
        acts, errors = layer(x)
        layer.update_weights(acts, errors)
    assert layer.eta == pytest.approx(1.0 / int(layer.forward_pass))


def test_weight_init_options():
    ones = LCALinear(3, 4, weight_init=torch.nn.init.ones_)
    torch.testing.assert_close(ones.weights, torch.full((3, 4), 0.5))
    normal = LCALinear(3, 4, weight_init=(torch.nn.init.normal_, {"mean": 5.0, "std": 0.01}))
    assert (normal.weights > 0.4).all()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: LCAConv2D(4, 3, kernel_size=4, pad="same"), ValueError, "odd kernel"),
        (lambda: LCAConv2D(4, 3, kernel_size=3, stride=4), ValueError, "stride"),
        (lambda: LCAConv2D(4, 3, kernel_size=3, pad="full"), ValueError, "pad"),
        (lambda: LCAConv2D(4, 3, kernel_size=(3, 3, 3)), ValueError, "kernel_size"),
        (lambda: LCAConv2D(4, 3, return_vars=("acts", "codes")), ValueError, "codes"),
        (lambda: LCAConv2D(4, 3, transfer_func="relu"), ValueError, "transfer_func"),
        (lambda: LCAConv2D(4, 3, solver="ista"), ValueError, "solver"),
        (
            lambda: LCAConv2D(4, 3, solver="fista", transfer_func="hard_threshold"),
            ValueError,
            "soft_threshold",
        ),
        (lambda: LCAConv2D(4, 3, lambda_=torch.ones(3)), ValueError, "one per feature"),
        (lambda: LCAConv2D(4, 3, lambda_=-1.0), ValueError, "lambda_"),
        (lambda: LCAConv2D(4, 3, tau=0.5), ValueError, "tau"),
        (lambda: LCAConv2D(0, 3), ValueError, "out_neurons"),
        (lambda: LCAConv2D(4, 3, tol=0.0), ValueError, "tol"),
        (lambda: LCALinear(4, 3, kernel_size=3), TypeError, "kernel_size"),
    ],
)
def test_bad_configuration_is_rejected_with_a_clear_message(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(2, 3, 16), ValueError, "expects inputs of shape"),
        (torch.randn(2, 4, 16, 16), ValueError, "in_neurons=3"),
        (torch.randn(2, 3, 16, 16).double(), TypeError, "float64"),
        (torch.full((2, 3, 16, 16), math.nan), ValueError, "NaN or Inf"),
        (torch.full((2, 3, 16, 16), math.inf), ValueError, "NaN or Inf"),
        (torch.randn(2, 3, 4, 16), ValueError, "smaller than kernel_size"),
    ],
)
def test_bad_inputs_are_rejected_before_any_iteration(x, error, match):
    layer = LCAConv2D(4, 3, kernel_size=5, pad="valid", lca_iters=10)
    with pytest.raises(error, match=match):
        layer(x)


def test_bad_weights_and_code_shaped_arguments_are_rejected():
    layer = LCAConv2D(4, 3, kernel_size=5, stride=2, lca_iters=10)
    with pytest.raises(ValueError, match=r"shape \(4, 3, 5, 5\)"):
        layer.assign_weight_values(torch.randn(4, 3, 3, 3))
    with pytest.raises(TypeError, match="float32"):
        layer.assign_weight_values(torch.randn(4, 3, 5, 5, dtype=torch.float64))
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(ValueError, match="initial_states"):
        layer(x, initial_states=torch.zeros(2, 4, 12, 12))
    with pytest.raises(ValueError, match="drive_scaling"):
        layer(x, drive_scaling=torch.zeros(2, 4, 5, 5))


def test_a_time_constant_too_small_for_the_dictionary_is_reported():
    layer = LCALinear(64, 8, tau=1.0, lca_iters=200, **RAW)  # ||D||^2 ~ 8 + ... > 2 * tau
    with pytest.raises(FloatingPointError, match="tau"):
        layer(torch.randn(4, 8))


def test_fast_reconstruction_and_correlation_give_the_direct_codes(monkeypatch):
    # The LCA-RCNN frontend's shape (9x9 atoms, stride 2: 5x5 work-layout taps, 32+ features)
    # correlates through the fused Winograd kernel; without the kernels it convolves directly.
    from eplcanet.kernels import native

    if native.kernels() is None:
        pytest.skip(f"no Winograd kernels here: {native.why_unavailable()}")
    torch.manual_seed(21)
    x = torch.randn(3, 3, 20, 20, dtype=torch.float64)
    layer = LCAConv2D(out_neurons=32, in_neurons=3, kernel_size=9, stride=2, lambda_=0.3,
                      tau=50.0, lca_iters=60, input_zero_mean=False,
                      input_unit_var=False).double()
    with torch.no_grad():
        plan = layer._plan(x.shape[2:], x)
        w = plan.weight(layer.weights)
        residual = plan.to_work(x)
        recon, corr = plan.operators(w, 3, fast=True)
        torch.testing.assert_close(corr(residual), plan.corr(residual, w), rtol=1e-10, atol=1e-10)
        acts = torch.rand(3, 32, *plan.code_spatial, dtype=torch.float64)
        acts = acts.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(recon(acts), plan.recon(acts, w), rtol=1e-10, atol=1e-10)
        # Under autocast the operators stay direct, in the precision autocast asks for.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            corr_amp = plan.operators(w.float(), 3, fast=True)[1]
            assert corr_amp(residual.float()).dtype == torch.bfloat16
        fast = layer(x)
        monkeypatch.setattr(native, "kernels", lambda: None)
        torch.testing.assert_close(layer(x), fast, rtol=1e-9, atol=1e-9)
