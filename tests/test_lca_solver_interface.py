"""The two LCA solvers behind one interface: picked once when a layer is built, both minimising
the same objective, both reporting their iterations and energies the same way.

The dense LASSO reference (scikit-learn) for both solvers is in test_lca_solvers.py
(test_linear_layer_reaches_sklearn_lasso_on_image_patches, and the conv case with stride equal
to the kernel); here the reference is the optimality (KKT) condition of the objective, whose
gradient autograd takes through a transposed convolution written from the definition of D.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_lca_common import RAW, standardised_patches

from eplcanet.sparse import SOLVERS, LCAConv1D, LCAConv2D, LCAConv3D, LCALinear
from eplcanet.sparse import lca as lca_module

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run on one thread

# The seed's frontend geometry (64 atoms 9x9, stride 2, 'same', RGB), on 16x16 images.
SEED = dict(out_neurons=64, in_neurons=3, kernel_size=9, stride=2, pad="same", **RAW)
PAD, STRIDE = 4, 2


def reference_recon(acts: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """D(a) for the 'same' layer: coefficient (f, j) places atom f at offset j * stride - pad;
    conv_transpose2d with padding=pad drops the first pad positions, output_padding fills the
    end up to the input size."""
    full = (acts.shape[-1] - 1) * STRIDE - 2 * PAD + weights.shape[-1]
    return F.conv_transpose2d(acts, weights, stride=STRIDE, padding=PAD,
                              output_padding=size - full)


def kkt_violation(x, weights, acts, lam, drive_scaling, nonneg):
    """Largest violation of the optimality conditions of
    E(a) = 1/2 ||x - D(a)||^2 + lam ||a||_1 - <drive_scaling, a>  (a >= 0 if nonneg):
    r = -dE_smooth/da must equal lam * sign(a) where a != 0 and lie in [-lam, lam] (nonneg:
    below lam) where a == 0."""
    a = acts.detach().clone().requires_grad_(True)
    smooth = 0.5 * (x - reference_recon(a, weights, x.shape[-1])).square().sum()
    smooth = smooth - (drive_scaling * a).sum()
    (grad,) = torch.autograd.grad(smooth, a)
    r, lam = -grad, lam.expand_as(acts)
    active = acts != 0
    on_support = (r - lam * torch.sign(acts))[active].abs().max()
    off, lam_off = r[~active], lam[~active]
    off_support = (off if nonneg else off.abs()) - lam_off
    return float(on_support), float(off_support.max().clamp(min=0))


@pytest.mark.parametrize("nonneg", [True, False])
def test_both_solvers_reach_the_same_minimiser_with_a_top_down_drive(nonneg):
    """Seed geometry, per-feature lambda and a drive_scaling: both solvers meet the optimality
    conditions of the same objective, and hence give the same codes."""
    torch.manual_seed(11)
    x = standardised_patches(16, 2, seed=7, gray=False)
    lam = torch.linspace(0.5, 0.9, 64, dtype=torch.float64)
    fista = LCAConv2D(solver="fista", lca_iters=1500, lambda_=lam, nonneg=nonneg, **SEED).double()
    tau = 0.6 * fista.lipschitz()  # stable (tau > ||D||^2 / 2) and close to the fastest
    lca = LCAConv2D(solver="lca", tau=tau, lca_iters=5000, lambda_=lam, nonneg=nonneg,
                    **SEED).double()
    lca.load_state_dict(fista.state_dict())
    drive_scaling = 0.3 * torch.randn(fista.code_shape(x.shape), dtype=torch.float64)
    codes = {}
    for layer in (lca, fista):
        codes[layer.solver] = acts = layer(x, drive_scaling=drive_scaling)
        assert 0.01 < float((acts != 0).double().mean()) < 0.5  # a genuinely sparse problem
        # the layer's own lambda_: the values above, rounded to the float32 of construction
        lam_used = layer.lambda_.reshape(1, -1, 1, 1)
        on, off = kkt_violation(x, layer.weights.detach(), acts, lam_used, drive_scaling, nonneg)
        assert on <= 2e-7 and off <= 2e-7, (layer.solver, on, off)
        if nonneg:
            assert (acts >= 0).all()
        else:
            assert (acts < 0).any()
    # The optimum is ill-conditioned enough (4096 codes for 768 pixels) that KKT residuals of
    # 1e-7 leave code differences of a few 1e-6.
    torch.testing.assert_close(codes["lca"], codes["fista"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_recorded_iterations_and_energies_are_those_of_the_returned_codes(solver):
    """With tol and track_metrics: last_iters is a multiple of check_every, one energy is
    recorded per iteration, and the last one is the energy of the codes returned."""
    torch.manual_seed(12)
    x = standardised_patches(16, 3, seed=8, gray=True)
    layer = LCAConv2D(out_neurons=8, in_neurons=1, kernel_size=5, stride=2, lambda_=0.3,
                      tau=4.0, solver=solver, lca_iters=2000, tol=1e-6, check_every=7,
                      track_metrics=True, **RAW).double()
    acts = layer(x)
    n = layer.last_iters
    assert 0 < n < 2000 and n % 7 == 0
    assert all(len(v) == n for v in layer.metrics.values())
    per_sample = 0.5 * (x - layer.decode(acts, x.shape[2:])).square().flatten(1).sum(1)
    per_sample = per_sample + 0.3 * acts.abs().flatten(1).sum(1)
    torch.testing.assert_close(layer.metrics["TotalEnergy"][-1], per_sample.mean(),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_forward_goes_through_the_solver_picked_at_construction(solver, monkeypatch):
    """forward() calls run(layer, problem) of the solver named at construction, once, and
    returns its codes; the other solver is never called."""
    calls = []
    for cls in (lca_module.LCADynamics, lca_module.FISTA):
        def spy(self, layer, problem, _run=cls.run):
            calls.append((self.name, layer))
            return _run(self, layer, problem)

        monkeypatch.setattr(cls, "run", spy)
    torch.manual_seed(13)
    layer = LCAConv2D(out_neurons=6, in_neurons=2, kernel_size=3, stride=1, solver=solver,
                      lca_iters=20, return_vars=("states", "acts"))
    states, acts = layer(torch.randn(2, 2, 8, 8))
    assert calls == [(solver, layer)]
    assert layer.solver == solver
    torch.testing.assert_close(acts, layer.transfer(states), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: LCALinear(4, 3, **kw),
        lambda **kw: LCAConv1D(4, 3, kernel_size=3, **kw),
        lambda **kw: LCAConv2D(4, 3, kernel_size=3, **kw),
        lambda **kw: LCAConv3D(4, 3, kernel_size=3, **kw),
    ],
)
def test_an_unknown_solver_is_refused_at_construction_naming_the_accepted_ones(make):
    with pytest.raises(ValueError) as err:
        make(solver="ista")
    message = str(err.value)
    assert "'ista'" in message and all(repr(name) in message for name in SOLVERS)
    assert SOLVERS == ("lca", "fista")


def test_the_solver_is_fixed_once_the_layer_is_built():
    """No solver can be swapped into a built layer; FISTA's need for the soft threshold holds
    for a transfer function assigned later too, while LCA takes any."""
    fista = LCAConv2D(4, 3, kernel_size=3, solver="fista")
    with pytest.raises(AttributeError):
        fista.solver = "lca"
    assert fista.solver == "fista"
    with pytest.raises(ValueError, match="soft_threshold"):
        fista.transfer_func = "hard_threshold"
    assert fista.transfer_func == "soft_threshold"
    lca = LCAConv2D(4, 3, kernel_size=3, solver="lca")
    lca.transfer_func = "hard_threshold"
    assert lca.transfer_func == "hard_threshold"
