"""The LCA layers solve the LASSO: checked against scikit-learn and dense-matrix references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Lasso
from test_lca_common import RAW, standardised_patches

from eplcanet.sparse import LCAConv1D, LCAConv2D, LCALinear

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread


def sklearn_lasso(dense: np.ndarray, targets: np.ndarray, lam: float, nonneg: bool) -> np.ndarray:
    """Codes (n_targets, n_atoms) minimising 1/2||y - dense @ a||^2 + lam ||a||_1, per target.

    scikit-learn scales the fidelity term by 1 / n_rows, hence alpha = lam / n_rows.
    """
    model = Lasso(
        alpha=lam / dense.shape[0], fit_intercept=False, positive=nonneg, tol=1e-12, max_iter=10**6
    )
    return np.atleast_2d(model.fit(dense, targets.T).coef_)


def lasso_energy(dense: np.ndarray, targets: np.ndarray, codes: np.ndarray, lam: float):
    fidelity = 0.5 * ((targets - codes @ dense.T) ** 2).sum(1)
    return fidelity + lam * np.abs(codes).sum(1)


def assert_lasso_optimum(ours, ref, dense, targets, lam):
    """Codes within 1e-3 of the reference; energy no more than 1e-4 above it (relative)."""
    ours = ours.detach().numpy().reshape(ref.shape)
    assert np.abs(ours - ref).max() <= 1e-3
    e_ours = lasso_energy(dense, targets, ours, lam)
    e_ref = lasso_energy(dense, targets, ref, lam)
    gap = (e_ours - e_ref) / np.maximum(e_ref, 1e-12)
    assert gap.max() <= 1e-4


# The LCA Euler step is stable for tau > ||D||^2 / 2; these taus are close to the fastest
# stable choice for the dictionaries below, so that the tests stay short.
SOLVER_SETTINGS = {
    "lca": {"solver": "lca", "tau": 4.0, "lca_iters": 2500},
    "fista": {"solver": "fista", "lca_iters": 400},
}


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("solver", ["lca", "fista"])
def test_linear_layer_reaches_sklearn_lasso_on_image_patches(solver, nonneg):
    torch.manual_seed(0)
    x = standardised_patches(8, 48, seed=1, gray=True).flatten(1)
    lam = 1.0
    layer = LCALinear(96, 64, lambda_=lam, nonneg=nonneg, **RAW, **SOLVER_SETTINGS[solver])
    layer = layer.double()
    dense = layer.weights.detach().numpy().T  # (in, atoms): D(a) = dense @ a
    ref = sklearn_lasso(dense, x.numpy(), lam, nonneg)
    assert (ref != 0).mean() < 0.5  # a genuinely sparse problem
    assert_lasso_optimum(layer(x), ref, dense, x.numpy(), lam)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("solver", ["lca", "fista"])
def test_conv_layer_with_stride_equal_kernel_reaches_sklearn_lasso(solver, nonneg):
    """Non-overlapping atoms: every 4x4 RGB block of the image is its own LASSO problem."""
    torch.manual_seed(1)
    x = standardised_patches(12, 6, seed=2, gray=False)
    lam = 0.5
    layer = LCAConv2D(
        out_neurons=64,
        in_neurons=3,
        kernel_size=4,
        stride=4,
        pad="valid",
        lambda_=lam,
        nonneg=nonneg,
        **RAW,
        **SOLVER_SETTINGS[solver],
    ).double()
    acts = layer(x)  # (6, 64, 3, 3)
    blocks = F.unfold(x, 4, stride=4).transpose(1, 2).reshape(-1, 48)  # (6 * 9, 48)
    dense = layer.weights.detach().reshape(64, 48).numpy().T
    ref = sklearn_lasso(dense, blocks.numpy(), lam, nonneg)
    ours = acts.permute(0, 2, 3, 1).reshape(-1, 64)
    assert_lasso_optimum(ours, ref, dense, blocks.numpy(), lam)


def dense_dictionary(weights: torch.Tensor, spatial, stride, pad: int) -> np.ndarray:
    """D as a matrix (C * prod(spatial), F * prod(code)), built atom by atom from the definition:
    code coefficient (f, j) places atom f at input offset j * stride - pad, cropped to the input.
    """
    w = weights.detach().numpy()
    n_feat, channels, kernel = w.shape[0], w.shape[1], w.shape[2:]
    code = [(n + 2 * pad - k) // stride + 1 for n, k in zip(spatial, kernel)]
    dense = np.zeros((channels, *spatial, n_feat, *code))
    for f, j in itertools.product(range(n_feat), itertools.product(*map(range, code))):
        for t in itertools.product(*map(range, kernel)):
            pos = tuple(jj * stride - pad + tt for jj, tt in zip(j, t))
            if all(0 <= p < n for p, n in zip(pos, spatial)):
                dense[(slice(None), *pos, f, *j)] += w[(f, slice(None), *t)]
    return dense.reshape(channels * int(np.prod(spatial)), -1)


@pytest.mark.parametrize(
    "cls, spatial, kernel, stride, pad",
    [
        (LCAConv2D, (11, 12), 5, 2, "same"),
        (LCAConv2D, (11, 12), 5, 2, "valid"),
        (LCAConv2D, (9, 9), 3, 1, "same"),
        (LCAConv1D, (23,), 7, 3, "same"),
        (LCAConv1D, (23,), 4, 2, "valid"),
    ],
)
def test_conv_layer_matches_dense_matrix_formulation(cls, spatial, kernel, stride, pad):
    torch.manual_seed(2)
    channels, lam = 2, 0.3
    layer = cls(
        out_neurons=5,
        in_neurons=channels,
        kernel_size=kernel,
        stride=stride,
        pad=pad,
        lambda_=lam,
        nonneg=False,
        solver="fista",
        lca_iters=1500,
        **RAW,
    ).double()
    x = torch.randn((3, channels, *spatial), dtype=torch.float64)
    dense = dense_dictionary(layer.weights, spatial, stride, kernel // 2 if pad == "same" else 0)

    # The operators themselves: decode is D, the input drive is D^T.
    codes = torch.randn(layer.code_shape(x.shape), dtype=torch.float64)
    recon = layer.decode(codes, output_size=spatial).flatten(1).numpy()
    np.testing.assert_allclose(recon, codes.flatten(1).numpy() @ dense.T, atol=1e-12)
    drive = layer.compute_input_drive(x).flatten(1).numpy()
    np.testing.assert_allclose(drive, x.flatten(1).numpy() @ dense, atol=1e-12)

    # The optimum of the same objective, from scikit-learn on the dense matrix.
    ref = sklearn_lasso(dense, x.flatten(1).numpy(), lam, nonneg=False)
    assert_lasso_optimum(layer(x).flatten(1), ref, dense, x.flatten(1).numpy(), lam)


@pytest.mark.parametrize("solver", ["lca", "fista"])
@pytest.mark.parametrize("nonneg", [False, True])
def test_dictionary_element_as_input_gives_one_active_code(solver, nonneg):
    torch.manual_seed(3)
    lam = 0.3
    settings = dict(solver=solver, lca_iters=600, tau=8.0, lambda_=lam, nonneg=nonneg, **RAW)
    linear = LCALinear(40, 30, **settings).double()
    atoms = linear.weights.detach()[[3, 17, 28]]
    acts = linear(atoms)
    expected = torch.zeros_like(acts)
    expected[[0, 1, 2], [3, 17, 28]] = 1 - lam
    torch.testing.assert_close(acts, expected, atol=1e-6, rtol=0)

    conv = LCAConv2D(out_neurons=8, in_neurons=3, kernel_size=5, stride=2, **settings).double()
    one_hot = torch.zeros((1, 8, 8, 8), dtype=torch.float64)
    one_hot[0, 5, 3, 4] = 1.0
    acts = conv(conv.decode(one_hot, output_size=(16, 16)))
    torch.testing.assert_close(acts, (1 - lam) * one_hot, atol=1e-6, rtol=0)


def test_sparsity_falls_and_error_rises_with_lambda():
    torch.manual_seed(4)
    x = standardised_patches(16, 8, seed=3, gray=False)
    layer = LCAConv2D(
        out_neurons=32, in_neurons=3, kernel_size=5, stride=2, solver="fista", lca_iters=300, **RAW
    )
    layer.return_vars = ("acts", "recon_errors")
    layer = layer.double()
    l1, err = [], []
    for lam in (0.05, 0.2, 0.5, 1.0, 2.0):
        layer.lambda_ = lam
        acts, errors = layer(x)
        l1.append(float(acts.abs().sum()))
        err.append(float(errors.square().sum()))
    assert all(a > b for a, b in itertools.pairwise(l1))
    assert all(a < b for a, b in itertools.pairwise(err))


def test_lca_and_fista_reach_the_same_optimum_on_a_strided_same_conv():
    torch.manual_seed(5)
    x = standardised_patches(16, 4, seed=4, gray=False)
    settings = dict(out_neurons=24, in_neurons=3, kernel_size=7, stride=2, lambda_=0.4, **RAW)
    lca = LCAConv2D(solver="lca", tau=6.0, lca_iters=2500, **settings).double()
    fista = LCAConv2D(solver="fista", lca_iters=500, **settings).double()
    fista.load_state_dict(lca.state_dict())
    a_lca, a_fista = lca(x), fista(x)
    e_lca, e_fista = lca.energy(x, a_lca), fista.energy(x, a_fista)
    torch.testing.assert_close(e_lca, e_fista, rtol=1e-6, atol=0)
    torch.testing.assert_close(a_lca, a_fista, atol=1e-4, rtol=0)


def test_fista_reaches_the_optimum_in_far_fewer_iterations_than_lca():
    """Iterations to come within 0.1% of the optimal energy. ||D||^2 is about 6.2 here, so
    tau = 10 is an LCA time constant with a modest safety margin (stability needs tau > 3.1)."""
    torch.manual_seed(6)
    x = standardised_patches(16, 4, seed=5, gray=False)
    settings = dict(
        out_neurons=24,
        in_neurons=3,
        kernel_size=7,
        stride=2,
        lambda_=0.4,
        track_metrics=True,
        **RAW,
    )
    lca = LCAConv2D(solver="lca", tau=10.0, lca_iters=600, **settings).double()
    fista = LCAConv2D(solver="fista", lca_iters=200, **settings).double()
    fista.load_state_dict(lca.state_dict())
    lca(x)
    fista(x)
    e_lca, e_fista = lca.metrics["TotalEnergy"], fista.metrics["TotalEnergy"]
    assert len(e_lca) == 600 and len(e_fista) == 200
    target = min(e_lca.min(), e_fista.min()) * (1 + 1e-3)

    def first_within(trace):
        return int(torch.nonzero(trace <= target)[0]) + 1

    assert first_within(e_fista) * 4 < first_within(e_lca)


@pytest.mark.parametrize("solver", ["lca", "fista"])
def test_early_stop_on_relative_energy_tolerance(solver):
    torch.manual_seed(7)
    x = standardised_patches(16, 4, seed=6, gray=False)
    settings = dict(out_neurons=16, in_neurons=3, kernel_size=5, stride=2, solver=solver, **RAW)
    settings.update(tau=5.0, lambda_=0.3)
    stopping = LCAConv2D(lca_iters=5000, tol=1e-7, check_every=25, **settings).double()
    full = LCAConv2D(lca_iters=5000, **settings).double()
    full.load_state_dict(stopping.state_dict())
    a_stop, a_full = stopping(x), full(x)
    assert stopping.last_iters < 5000 and stopping.last_iters % 25 == 0
    e_stop, e_full = stopping.energy(x, a_stop).sum(), full.energy(x, a_full).sum()
    assert float((e_stop - e_full) / e_full) < 1e-5


@pytest.mark.parametrize("solver", ["lca", "fista"])
@pytest.mark.parametrize("nonneg", [False, True])
def test_returned_acts_are_the_transfer_of_returned_states(solver, nonneg):
    torch.manual_seed(8)
    layer = LCAConv2D(
        out_neurons=8,
        in_neurons=3,
        kernel_size=5,
        stride=2,
        solver=solver,
        lca_iters=37,
        nonneg=nonneg,
        lambda_=0.2,
        return_vars=("states", "acts"),
    )
    states, acts = layer(torch.randn(2, 3, 12, 12))
    torch.testing.assert_close(acts, layer.transfer(states), atol=1e-5, rtol=0)
    assert (acts != 0).any()


def test_valid_pad_on_zero_padded_input_equals_explicit_gram_dynamics():
    """LCA-PyTorch's 'same' dynamics (explicit Gram kernel G on uncropped atoms) are our
    'valid' layer on the zero-padded input: same states at every iteration."""
    torch.manual_seed(9)
    k, s, tau, iters, lam = 5, 2, 10.0, 30, 0.2
    layer = LCAConv2D(
        out_neurons=6,
        in_neurons=2,
        kernel_size=k,
        stride=s,
        pad="valid",
        lambda_=lam,
        tau=tau,
        lca_iters=iters,
        return_vars="states",
        **RAW,
    ).double()
    x = torch.randn((2, 2, 12, 12), dtype=torch.float64)
    ours = layer(F.pad(x, (k // 2,) * 4))

    w = layer.weights.detach()
    gram = layer.lateral_connectivity()
    reach = (k - 1) // s
    drive = F.conv2d(x, w, stride=s, padding=k // 2)
    u = torch.zeros_like(drive)
    for _ in range(iters):
        a = F.relu(u - lam)
        u = u + (drive - u - F.conv2d(a, gram, padding=reach)) / tau
    torch.testing.assert_close(ours, u, atol=1e-10, rtol=0)
