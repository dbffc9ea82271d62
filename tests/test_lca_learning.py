"""Dictionary learning (Hebbian and autograd), dictionary files, pictures, metrics, preprocessing."""

from __future__ import annotations

import itertools

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score
from test_lca_common import RAW, standardised_patches

from eplcanet.data import natural_image_patches
from eplcanet.sparse import (
    DictionaryFileError,
    LCAConv2D,
    LCALinear,
    ZCAWhitener,
    conv_whiten,
    energy_per_sample,
    feature_grid,
    fit_conv_whitening,
    frac_active,
    l1_sparsity,
    l2_error,
    load_dictionary,
    make_unit_var,
    make_zero_mean,
    r_squared,
    save_dictionary,
    save_feature_grid,
    whitening_entry,
    whitening_from_config,
    times_active_by_feature,
    total_energy,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread


def hebbian_by_definition(acts, errors, weights, stride, pad, eta):
    """eta * sum_{b, j} a[b, f, j] * error window of atom f at j, / (times_active_f + 1)."""
    a, e, w = acts.numpy(), errors.numpy(), weights.detach().numpy()
    update = np.zeros_like(w)
    n_feat, _, kh, kw = w.shape
    for b, f, i, j in itertools.product(*map(range, a.shape)):
        if a[b, f, i, j] == 0:
            continue
        for ti, tj in itertools.product(range(kh), range(kw)):
            y, x = i * stride - pad + ti, j * stride - pad + tj
            if 0 <= y < e.shape[2] and 0 <= x < e.shape[3]:
                update[f, :, ti, tj] += a[b, f, i, j] * e[b, :, y, x]
    active = (a != 0).sum(axis=(0, 2, 3))
    return eta * update / (active + 1).reshape(n_feat, 1, 1, 1)


@pytest.mark.parametrize("pad", ["same", "valid"])
def test_hebbian_update_equals_its_formula(pad):
    torch.manual_seed(0)
    layer = LCAConv2D(
        out_neurons=5,
        in_neurons=2,
        kernel_size=5,
        stride=2,
        pad=pad,
        eta=0.3,
        lambda_=0.5,
        lca_iters=60,
        tau=10.0,
        return_vars=("acts", "recon_errors"),
        **RAW,
    ).double()
    acts, errors = layer(torch.randn(3, 2, 11, 12, dtype=torch.float64))
    assert 0 < (acts != 0).sum() < acts.numel()
    before = layer.get_weights()
    expected = hebbian_by_definition(acts, errors, before, 2, 2 if pad == "same" else 0, 0.3)
    update = layer.update_weights(acts, errors)
    np.testing.assert_allclose(update.numpy(), expected, atol=1e-12)
    renormed = before + update
    renormed = renormed / renormed.flatten(1).norm(dim=1).reshape(5, 1, 1, 1)
    torch.testing.assert_close(layer.weights.detach(), renormed)


def test_linear_hebbian_update_clip_and_normalisation():
    torch.manual_seed(1)
    layer = LCALinear(6, 10, eta=5.0, d_update_clip=0.05, lambda_=0.1, nonneg=False, **RAW)
    acts = torch.randn(4, 6)
    acts[:, 2] = 0.0  # an unused atom: its update is 0 (and its count 0 + 1)
    errors = torch.randn(4, 10)
    before = layer.get_weights()
    update = layer.update_weights(acts, errors)
    raw = 5.0 * acts.T @ errors / (times_active_by_feature(acts).reshape(6, 1) + 1)
    torch.testing.assert_close(update, raw.clamp(-0.05, 0.05))
    assert update.abs().max() <= 0.05 and (update[2] == 0).all()
    torch.testing.assert_close(layer.weights.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(layer.weights[2], before[2])


def test_hebbian_direction_is_minus_the_autograd_gradient_of_the_reconstruction_error():
    torch.manual_seed(2)
    layer = LCAConv2D(
        out_neurons=4, in_neurons=3, kernel_size=5, stride=2, req_grad=True, lca_iters=30, **RAW
    ).double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        acts = layer(x)
    loss = 0.5 * (x - layer.decode(acts, output_size=(10, 10))).square().sum()
    loss.backward()
    direction = layer.compute_weight_update(acts, x - layer.decode(acts, output_size=(10, 10)))
    torch.testing.assert_close(layer.weights.grad, -direction.detach())


def test_gradients_flow_through_the_solver_loop_to_weights_and_inputs():
    torch.manual_seed(3)
    for solver in ("lca", "fista"):
        layer = LCAConv2D(
            out_neurons=4,
            in_neurons=3,
            kernel_size=5,
            stride=2,
            req_grad=True,
            lca_iters=25,
            tau=5.0,
            solver=solver,
            return_vars=("acts", "recons"),
        )
        x = torch.randn(2, 3, 10, 10, requires_grad=True)
        acts, recons = layer(x)
        (acts.sum() + recons.square().sum()).backward()
        assert layer.weights.grad is not None and layer.weights.grad.abs().sum() > 0
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_torch_optimizer_learns_a_dictionary_that_lowers_the_energy():
    torch.manual_seed(4)
    x = standardised_patches(8, 64, seed=7, gray=True).float().flatten(1)
    layer = LCALinear(32, 64, lambda_=0.5, req_grad=True, solver="fista", lca_iters=60, **RAW)
    opt = torch.optim.Adam(layer.parameters(), lr=0.02)
    with torch.no_grad():
        start = layer.energy(x, layer(x)).mean()
    for _ in range(15):
        with torch.no_grad():
            acts = layer(x)
        loss = 0.5 * (x - layer.decode(acts)).square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        layer.normalize_weights()
    with torch.no_grad():
        end = layer.energy(x, layer(x)).mean()
    assert end < 0.9 * start


def test_hebbian_learning_lowers_the_energy_on_image_patches():
    torch.manual_seed(5)
    x = standardised_patches(16, 24, seed=8, gray=False).float()
    layer = LCAConv2D(
        out_neurons=16,
        in_neurons=3,
        kernel_size=5,
        stride=2,
        lambda_=0.4,
        eta=0.05,
        solver="fista",
        lca_iters=40,
        return_vars=("acts", "recon_errors"),
        **RAW,
    )
    energies = []
    for _ in range(12):
        acts, errors = layer(x)
        energies.append(float(layer.energy(x, acts).mean()))
        layer.update_weights(acts, errors)
    assert energies[-1] < 0.9 * energies[0]


def test_dictionary_file_round_trip(tmp_path):
    w = torch.randn(8, 3, 5, 5)
    config = {"kernel_size": (5, 5), "stride": 2, "lambda_": torch.tensor(0.25), "note": None}
    path = save_dictionary(tmp_path / "sub" / "dict.pt", w, config)
    assert sorted(p.name for p in path.parent.iterdir()) == ["dict.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"weight", "config"}
    weight, loaded = load_dictionary(path)
    torch.testing.assert_close(weight, w)
    assert loaded == {"kernel_size": [5, 5], "stride": 2, "lambda_": 0.25, "note": None}
    layer = LCAConv2D(out_neurons=8, in_neurons=3, kernel_size=5)
    layer.assign_weight_values(weight)
    torch.testing.assert_close(layer.weights.flatten(1).norm(dim=1), torch.ones(8))


def test_dictionary_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dictionary(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a tensor file")
    with pytest.raises(DictionaryFileError, match="not a readable"):
        load_dictionary(text)
    other = tmp_path / "state.pt"
    torch.save({"weights": torch.ones(2, 2)}, other)
    with pytest.raises(ValueError, match="expected keys"):
        load_dictionary(other)
    bad = tmp_path / "nan.pt"
    torch.save({"weight": torch.full((2, 3), float("nan")), "config": {}}, bad)
    with pytest.raises(ValueError, match="NaN"):
        load_dictionary(bad)
    with pytest.raises(ValueError, match="plain data"):
        save_dictionary(tmp_path / "x.pt", torch.ones(2, 3), {"fn": print})
    with pytest.raises(ValueError, match="floating tensor"):
        save_dictionary(tmp_path / "x.pt", torch.ones(2, dtype=torch.int64), {})
    assert not (tmp_path / "x.pt").exists()


def test_feature_grid_rescales_each_atom_and_tiles_them(tmp_path):
    w = torch.zeros(5, 3, 4, 4)
    w[0, 0, 0, 0] = 10.0  # strong red pixel
    w[1, 1, 2, 2] = -0.01  # weak green-off pixel: still full contrast after rescaling
    grid = feature_grid(w, pad=1)
    assert grid.shape == (1 + 2 * 5, 1 + 3 * 5, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert grid[1, 1, 0] == 1.0 and grid[1, 1, 1] == 0.5
    assert grid[1 + 2, 6 + 2, 1] == 0.0 and grid[1 + 2, 6 + 2, 0] == 0.5
    assert grid[0].max() == 0.0  # separators
    gray = feature_grid(torch.randn(7, 36), atom_shape=(1, 6, 6))
    assert gray.ndim == 2 and gray.min() >= 0 and gray.max() <= 1
    assert feature_grid(torch.randn(4, 3 * 49)).shape == (1 + 2 * 8, 1 + 2 * 8, 3)
    path = save_feature_grid(w, tmp_path / "g" / "grid.png", scale=3)
    assert matplotlib.image.imread(path).shape[:2] == (33, 48)
    with pytest.raises(ValueError, match="atom_shape"):
        feature_grid(torch.randn(3, 10))


def test_metrics_match_their_definitions_and_scikit_learn():
    torch.manual_seed(6)
    x, recons = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4).double()
    acts = torch.relu(torch.randn(6, 5, 2, 2, dtype=torch.float64))
    lam = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    expected_l1 = sum(float(lam[f] * acts[:, f].abs().sum()) for f in range(5)) / 6
    assert float(l1_sparsity(acts, lam)) == pytest.approx(expected_l1)
    assert float(l1_sparsity(acts, 0.3)) == pytest.approx(0.3 * float(acts.abs().sum()) / 6)
    assert float(l2_error(x, recons)) == pytest.approx(0.5 * float((x - recons).square().sum()) / 6)
    total = total_energy(x, recons, acts, 0.3)
    assert float(total) == pytest.approx(float(energy_per_sample(x, recons, acts, 0.3).mean()))
    assert float(frac_active(acts)) == pytest.approx(float((acts > 0).double().mean()))
    assert times_active_by_feature(acts).tolist() == (acts > 0).sum((0, 2, 3)).tolist()
    good = x + 0.1 * torch.randn_like(x)
    expected = r2_score(
        x.flatten(1).numpy(), good.flatten(1).numpy(), multioutput="variance_weighted"
    )
    assert float(r_squared(x, good)) == pytest.approx(expected)


def test_standardisation_and_zca_whitening():
    torch.manual_seed(7)
    x = 3.0 + 2.0 * torch.randn(10, 3, 4, 4, dtype=torch.float64)
    z = make_unit_var(make_zero_mean(x))
    torch.testing.assert_close(z.flatten(1).mean(1), torch.zeros(10, dtype=torch.float64))
    torch.testing.assert_close(z.flatten(1).std(1), torch.ones(10, dtype=torch.float64))

    patches = natural_image_patches(4, 500, seed=9).double()  # 48 correlated dimensions
    zca = ZCAWhitener(eps=0.0).fit(patches)
    white = zca.transform(patches).flatten(1)
    cov = torch.cov(white.T)
    torch.testing.assert_close(cov, torch.eye(48, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(zca.inverse_transform(zca.transform(patches)), patches)
    # ZCA is symmetric: of all whitening transforms it moves the data least
    torch.testing.assert_close(zca.matrix, zca.matrix.T)
    with pytest.raises(RuntimeError, match="fit"):
        ZCAWhitener().transform(patches)


def _numpy_standardise(x):
    flat = x.reshape(len(x), -1)
    mean, std = flat.mean(1), flat.std(1, ddof=1)
    return (x - mean[:, None, None, None]) / (std[:, None, None, None] + 1e-12)


def test_conv_whitening_is_the_patch_zca_at_every_pixel():
    # Reference: the ZCA matrix of all 3x3 patches, written out with numpy loops, applied to
    # the zero-padded neighbourhood of every pixel, then each image standardised again.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 2, 7, 6)).cumsum(axis=3)  # correlated along rows
    k, eps = 3, 0.05
    xs = _numpy_standardise(x)
    patches = np.array([xs[n, :, i:i + k, j:j + k].ravel() for n in range(4)
                        for i in range(7 - k + 1) for j in range(6 - k + 1)])
    mean = patches.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(patches.T))
    zca = evecs @ np.diag(1 / np.sqrt(np.clip(evals, 0, None) + eps)) @ evecs.T
    padded = np.pad(xs, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros_like(x)
    for n, c, i, j in itertools.product(range(4), range(2), range(7), range(6)):
        centre = c * k * k + (k // 2) * k + k // 2
        want[n, c, i, j] = (padded[n, :, i:i + k, j:j + k].ravel() - mean) @ zca[:, centre]
    want = _numpy_standardise(want)

    kernel, bias = fit_conv_whitening(torch.tensor(x), k, eps, max_patches=None)
    assert kernel.shape == (2, 2, 3, 3) and bias.shape == (2,)
    got = conv_whiten(torch.tensor(x), kernel.double(), bias.double())
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6)


def test_conv_whitening_decorrelates_neighbouring_pixels_of_photographs():
    photos = natural_image_patches(32, 64, seed=4)  # (64, 3, 32, 32) in [0, 1]

    def neighbour_corr(z):
        return float(np.corrcoef(z[..., :-1].ravel(), z[..., 1:].ravel())[0, 1])

    before = neighbour_corr(make_unit_var(make_zero_mean(photos)).numpy())
    kernel, bias = fit_conv_whitening(photos, 7, eps=0.01, max_patches=5000,
                                      generator=torch.Generator().manual_seed(0))
    white = conv_whiten(photos, kernel, bias)
    # a patch ZCA applied at every pixel whitens the images only in part: 0.93 -> 0.56 here
    assert before > 0.8 and neighbour_corr(white.numpy()) < 0.65 * before
    # drawn patches give the whitening of all patches, up to sampling noise
    full, _ = fit_conv_whitening(photos, 7, eps=0.01, max_patches=None)
    assert float((kernel - full).norm() / full.norm()) < 0.2
    with pytest.raises(ValueError, match="odd"):
        fit_conv_whitening(photos, 4)
    with pytest.raises(ValueError, match="at least 41 x 41"):
        fit_conv_whitening(photos, 41)
    with pytest.raises(ValueError, match="3-channel"):
        conv_whiten(photos, kernel[:1, :1], bias[:1])


def test_whitening_travels_in_the_dictionary_file(tmp_path):
    photos = natural_image_patches(16, 8, seed=5)
    kernel, bias = fit_conv_whitening(photos, 3, max_patches=None)
    config = {"stride": 1, "whitening": whitening_entry(kernel, bias, eps=0.1)}
    save_dictionary(tmp_path / "d.pt", torch.randn(4, 3, 3, 3), config)
    _, loaded = load_dictionary(tmp_path / "d.pt")
    got_kernel, got_bias = whitening_from_config(loaded, 3)
    assert torch.equal(got_kernel, kernel) and torch.equal(got_bias, bias)
    assert loaded["whitening"]["eps"] == 0.1 and loaded["whitening"]["size"] == 3
    assert whitening_from_config({"stride": 1}, 3) is None
    with pytest.raises(DictionaryFileError, match="1-channel images need"):
        whitening_from_config(loaded, 1)
    with pytest.raises(DictionaryFileError, match="malformed"):
        whitening_from_config({"whitening": {"kernel": [[1.0]]}}, 1)
    with pytest.raises(DictionaryFileError, match="NaN"):
        bad = whitening_entry(kernel * float("nan"), bias)
        whitening_from_config({"whitening": bad}, 3)
