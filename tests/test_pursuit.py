"""Matching pursuit: invariants, exact recovery, a plain-loop reference, gradients, interface."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eplcanet.sparse.base import SparseCoder
from eplcanet.sparse.pursuit import ConvMP2D, MpSAE, matching_pursuit, mp_revive_loss

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread


def naive_mp(x, dictionary, k, selection, bias=None, residual_tol=None):
    """Matching pursuit written as plainly as possible: one sample, one step, one atom at a time.

    Differentiable by autograd, so it is also the reference for gradients.
    """
    n_atoms = dictionary.shape[0]
    residuals, all_codes = [], []
    for b in range(x.shape[0]):
        r = x[b]
        codes = x.new_zeros(n_atoms)
        for _ in range(k):
            if residual_tol is not None and r.norm() <= residual_tol:
                break
            best_key, best_j, best_raw = None, None, None
            for j in range(n_atoms):
                raw = torch.dot(r, dictionary[j])
                if bias is not None:
                    raw = raw + bias[j]
                score = raw / dictionary[j].norm()
                key = score.abs() if selection == "abs" else score
                if best_key is None or key.item() > best_key:
                    best_key, best_j, best_raw = key.item(), j, raw
            if selection == "relu" and best_key <= 0:
                continue
            atom = dictionary[best_j]
            c = best_raw / torch.dot(atom, atom)
            onehot = torch.zeros(n_atoms, dtype=x.dtype)
            onehot[best_j] = 1
            codes = codes + c * onehot
            r = r - c * atom
        residuals.append(r)
        all_codes.append(codes)
    return torch.stack(residuals), torch.stack(all_codes)


def unit_rows(n, d, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g, dtype=dtype)
    return w / w.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("selection", ["relu", "abs", "signed"])
def test_reconstruction_plus_residual_is_input(selection):
    torch.manual_seed(0)
    x = torch.randn(16, 20, dtype=DT)
    d = torch.randn(50, 20, dtype=DT) * torch.rand(50, 1, dtype=DT)  # atoms of varied norms
    residual, codes = matching_pursuit(x, d, 6, selection=selection)
    torch.testing.assert_close(codes @ d + residual, x, rtol=0, atol=1e-12)
    assert ((codes != 0).sum(1) <= 6).all()
    if selection == "relu":
        assert (codes >= 0).all()


@pytest.mark.parametrize("selection", ["relu", "abs", "signed"])
def test_residual_norm_never_increases(selection):
    torch.manual_seed(1)
    x = torch.randn(32, 24, dtype=DT)
    d = torch.randn(64, 24, dtype=DT) * 3
    norms = [x.norm(dim=1)]
    for k in range(1, 12):
        norms.append(matching_pursuit(x, d, k, selection=selection)[0].norm(dim=1))
    norms = torch.stack(norms)
    assert (norms[1:] <= norms[:-1] * (1 + 1e-12)).all()
    assert (norms[-1] < norms[0]).all() if selection == "abs" else (norms[-1] <= norms[0]).all()


@pytest.mark.parametrize("selection", ["relu", "abs"])
def test_orthonormal_dictionary_recovers_planted_codes(selection):
    torch.manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=DT))
    d = q[:16]  # 16 orthonormal atoms in R^32
    k, batch = 4, 10
    planted = torch.zeros(batch, 16, dtype=DT)
    for b in range(batch):
        support = torch.randperm(16)[:k]
        values = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=DT)
        if selection == "abs":
            values = values * torch.where(torch.rand(k) < 0.5, -1.0, 1.0).to(DT)
        planted[b, support] = values
    x = planted @ d
    residual, codes = matching_pursuit(x, d, k, selection=selection)
    torch.testing.assert_close(codes, planted, rtol=0, atol=1e-12)
    assert residual.abs().max() < 1e-12


@pytest.mark.parametrize("selection", ["relu", "abs", "signed"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_naive_loop_values_and_gradients(selection, with_bias):
    torch.manual_seed(3)
    x = torch.randn(5, 12, dtype=DT, requires_grad=True)
    d = (torch.randn(20, 12, dtype=DT) * (0.5 + torch.rand(20, 1, dtype=DT))).requires_grad_()
    b = (0.1 * torch.randn(20, dtype=DT)).requires_grad_() if with_bias else None
    g_res, g_codes = torch.randn(5, 12, dtype=DT), torch.randn(5, 20, dtype=DT)
    inputs = [x, d] + ([b] if with_bias else [])

    res, codes = matching_pursuit(x, d, 5, selection=selection, bias=b)
    ref_res, ref_codes = naive_mp(x, d, 5, selection, bias=b)
    torch.testing.assert_close(res, ref_res, rtol=0, atol=1e-12)
    torch.testing.assert_close(codes, ref_codes, rtol=0, atol=1e-12)

    ours = torch.autograd.grad((res * g_res).sum() + (codes * g_codes).sum(), inputs)
    ref = torch.autograd.grad((ref_res * g_res).sum() + (ref_codes * g_codes).sum(), inputs)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10)


def test_custom_backward_passes_gradcheck():
    torch.manual_seed(4)
    x = torch.randn(3, 5, dtype=DT, requires_grad=True)
    d = torch.randn(7, 5, dtype=DT, requires_grad=True)
    b = torch.randn(7, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, d, b: matching_pursuit(x, d, 3, selection="abs", bias=b), (x, d, b)
    )


def test_early_stop_per_sample_matches_reference():
    torch.manual_seed(5)
    x = torch.randn(8, 10, dtype=DT) * torch.linspace(0.2, 3, 8, dtype=DT)[:, None]
    d = torch.randn(30, 10, dtype=DT)
    tol = 1.0
    res, codes = matching_pursuit(x, d, 8, selection="abs", residual_tol=tol)
    ref_res, ref_codes = naive_mp(x, d, 8, "abs", residual_tol=tol)
    torch.testing.assert_close(codes, ref_codes, rtol=0, atol=1e-12)
    torch.testing.assert_close(res, ref_res, rtol=0, atol=1e-12)
    small = x.norm(dim=1) <= tol
    assert small.any() and (codes[small] == 0).all() and (res[small] == x[small]).all()
    stopped = res.norm(dim=1) <= tol
    assert stopped.any() and not stopped.all()
    # samples that never reached the threshold took every step, as without early stopping
    _, codes_all = matching_pursuit(x, d, 8, selection="abs")
    torch.testing.assert_close(codes[~stopped], codes_all[~stopped], rtol=0, atol=0)
    assert not torch.equal(codes[stopped], codes_all[stopped])


def test_autograd_path_matches_custom_backward():
    """The untied path, given the tied correlations, is the same function with the same grads."""
    torch.manual_seed(6)
    x = torch.randn(6, 10, dtype=DT, requires_grad=True)
    d = torch.randn(25, 10, dtype=DT, requires_grad=True)
    g_res, g_codes = torch.randn(6, 10, dtype=DT), torch.randn(6, 25, dtype=DT)
    outs = [
        matching_pursuit(x, d, 4, selection="signed"),
        matching_pursuit(x, d, 4, selection="signed", analysis=lambda r: r @ d.T),
    ]
    grads = [torch.autograd.grad((r * g_res).sum() + (c * g_codes).sum(), (x, d)) for r, c in outs]
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_step_is_divided_by_squared_atom_norm():
    """Scaling an atom by s scales its codes by 1/s and leaves reconstruction unchanged."""
    torch.manual_seed(7)
    x = torch.randn(10, 8, dtype=DT)
    d = unit_rows(12, 8)
    scale = torch.linspace(0.1, 5, 12, dtype=DT)[:, None]
    r1, c1 = matching_pursuit(x, d, 4, selection="abs")
    r2, c2 = matching_pursuit(x, d * scale, 4, selection="abs")
    torch.testing.assert_close(r1, r2, rtol=0, atol=1e-12)
    torch.testing.assert_close(c1, c2 * scale.T, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- MpSAE


def test_mpsae_documented_api():
    torch.manual_seed(8)
    sae = MpSAE(24, 64, k=4, dtype=DT)
    x = torch.randn(7, 24, dtype=DT)
    residual, codes = sae.encode(x)
    assert residual.shape == (7, 24) and codes.shape == (7, 64)
    z_pre, z, x_hat = sae(x)
    torch.testing.assert_close(z_pre, codes)
    torch.testing.assert_close(z, codes)
    torch.testing.assert_close(x_hat + residual, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(sae.decode(z), x_hat, rtol=0, atol=1e-12)
    dictionary = sae.get_dictionary()
    assert dictionary.shape == (64, 24)
    torch.testing.assert_close(dictionary.norm(dim=1), torch.ones(64, dtype=DT))
    assert isinstance(sae, SparseCoder)
    torch.testing.assert_close(sae.code(x), codes)
    torch.testing.assert_close(sae.residual(x, codes), residual, rtol=0, atol=1e-12)
    assert sae.tied() is sae and sae.untied() is sae


def test_dropout_only_in_training_and_rate_survives_eval():
    torch.manual_seed(9)
    sae = MpSAE(16, 40, k=3, dropout=0.5, dtype=DT)
    plain = MpSAE(16, 40, k=3, dtype=DT, dictionary_params={"initializer": sae.weights.data})
    x = torch.randn(1, 16, dtype=DT).repeat(64, 1)  # one input, 64 times

    sae.eval()
    assert sae.dropout == 0.5
    torch.testing.assert_close(sae.code(x), plain.code(x))
    sae.train()
    assert sae.dropout == 0.5 and sae.training
    residual, codes = sae.encode(x)
    # masks are drawn per sample: identical inputs pick different atoms
    assert len({tuple(row.nonzero().flatten().tolist()) for row in codes}) > 1
    torch.testing.assert_close(codes @ sae.get_dictionary() + residual, x, rtol=0, atol=1e-12)
    assert (residual.norm(dim=1) <= x.norm(dim=1)).all()
    sae.train(False)
    assert sae.dropout == 0.5 and not sae.training
    torch.testing.assert_close(sae.code(x), plain.code(x))


def test_tied_and_untied_change_which_parameters_get_gradients():
    torch.manual_seed(10)
    x = torch.randn(32, 12, dtype=DT)

    def grads(sae):
        sae.zero_grad(set_to_none=True)
        _, z, x_hat = sae(x)
        ((x - x_hat).square().mean() + 0.1 * z.abs().mean()).backward()
        return {n: p.grad for n, p in sae.named_parameters()}

    sae = MpSAE(12, 30, k=3, dtype=DT)
    g = grads(sae)
    assert set(g) == {"weights"} and g["weights"].abs().sum() > 0

    sae.tied(bias=True)
    g = grads(sae)
    assert set(g) == {"weights", "encoder_bias"} and g["encoder_bias"].abs().sum() > 0

    tied_codes = sae.tied().code(x)
    sae.untied(bias=True)
    assert set(dict(sae.named_parameters())) == {"weights", "encoder.weight", "encoder.bias"}
    torch.testing.assert_close(sae.code(x), tied_codes)  # copied from the dictionary
    g = grads(sae)
    assert g["encoder.weight"].abs().sum() > 0 and g["encoder.bias"].abs().sum() > 0
    with torch.no_grad():
        sae.encoder.weight.add_(0.5 * torch.randn_like(sae.encoder.weight))
    assert not torch.allclose(sae.code(x), tied_codes)  # the encoder really is used

    sae.untied(copy_from_dictionary=False)
    assert not torch.allclose(sae.encoder.weight, sae.get_dictionary())
    sae.tied()
    assert set(dict(sae.named_parameters())) == {"weights"}


def test_custom_encoder_module_is_used():
    torch.manual_seed(11)
    enc = torch.nn.Linear(10, 20, bias=False, dtype=DT)
    sae = MpSAE(10, 20, k=2, encoder_module=enc, dtype=DT)
    x = torch.randn(4, 10, dtype=DT)
    x_hat = sae(x)[2]
    x_hat.sum().backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("selection", ["relu", "abs"])
def test_bfloat16_runs(selection):
    torch.manual_seed(12)
    sae = MpSAE(32, 128, k=6, selection=selection, dtype=torch.bfloat16)
    x = torch.randn(16, 32).to(torch.bfloat16)
    _, z, x_hat = sae(x)
    assert z.dtype == x_hat.dtype == torch.bfloat16
    assert torch.isfinite(z).all()
    assert ((x - x_hat).float().norm(dim=1) < x.float().norm(dim=1)).all()
    (x - x_hat).float().square().mean().backward()
    assert sae.weights.grad.dtype == torch.bfloat16 and torch.isfinite(sae.weights.grad).all()
    conv = ConvMP2D(8, 3, 3, stride=2, k=6, selection=selection, dtype=torch.bfloat16)
    img = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    res, codes = conv.encode(img)
    assert codes.dtype == torch.bfloat16 and (res.float().norm() < img.float().norm())


def test_revive_loss_revives_dead_atoms():
    """Atoms pointing away from all data are never chosen; only the revive term moves them.

    The live atoms are held fixed, so the residual keeps the half of the data they cannot
    explain (trained, they would absorb the residual's mean, which the term follows).
    """
    torch.manual_seed(13)
    x = torch.randn(256, 8).abs()  # data in the positive orthant
    alive = torch.eye(8)[:4]  # explains only half of the coordinates
    dead = -torch.rand(12, 8) - 0.1  # negative correlation with every input under 'relu'
    init = torch.cat([alive, dead])
    frozen = (torch.arange(16) < 4)[:, None]

    def dead_after(revive: bool) -> int:
        sae = MpSAE(8, 16, k=2, dictionary_params={"initializer": init})
        sae.weights.register_hook(lambda g: g.masked_fill(frozen, 0))
        opt = torch.optim.Adam(sae.parameters(), lr=0.05)
        for _ in range(40):
            residual, z = sae.encode(x)
            x_hat = x - residual
            if revive:
                loss = mp_revive_loss(x, x_hat, residual, z, sae.get_dictionary(), min_dead=0)
            else:
                loss = (x - x_hat).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return int((sae.code(x).amax(0) < 1e-2).sum())

    assert dead_after(revive=False) == 12
    assert dead_after(revive=True) <= 6


def test_revive_loss_is_plain_mse_when_few_atoms_are_dead():
    x, x_hat = torch.randn(4, 5), torch.randn(4, 5)
    codes = torch.ones(4, 7)
    loss = mp_revive_loss(x, x_hat, x - x_hat, codes, torch.randn(7, 5))
    torch.testing.assert_close(loss, (x - x_hat).square().mean())


def test_update_dictionary_keeps_unit_atoms_and_moves_only_active_ones():
    torch.manual_seed(14)
    sae = MpSAE(10, 40, k=2, dtype=DT, eta=0.1)
    x = torch.randn(8, 10, dtype=DT)
    residual, codes = sae.encode(x)
    before = sae.weights.detach().clone()
    sae.update_dictionary(codes, residual)
    used = codes.abs().sum(0) > 0
    torch.testing.assert_close(sae.weights.norm(dim=1), torch.ones(40, dtype=DT))
    torch.testing.assert_close(sae.weights[~used], before[~used], rtol=0, atol=1e-15)
    assert (sae.weights[used] - before[used]).abs().amax(1).min() > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="selection"):
        MpSAE(4, 8, selection="max")
    with pytest.raises(ValueError, match="k must"):
        MpSAE(4, 8, k=0)
    with pytest.raises(ValueError, match="dropout"):
        MpSAE(4, 8, dropout=1.0)
    with pytest.raises(ValueError, match="input_shape"):
        MpSAE((3, 4), 8)
    with pytest.raises(ValueError, match="dictionary_params"):
        MpSAE(4, 8, dictionary_params={"normalisation": "l2"})
    with pytest.raises(ValueError, match="encoder_module"):
        MpSAE(4, 8, encoder_module="mlp")
    with pytest.raises(ValueError, match=r"x must be \(batch, 4\)"):
        MpSAE(4, 8).encode(torch.randn(2, 5))
    with pytest.raises(ValueError, match="pad"):
        ConvMP2D(4, 3, 3, pad="full")
    with pytest.raises(ValueError, match="odd kernel_size"):
        ConvMP2D(4, 3, 4, pad="same")
    with pytest.raises(ValueError, match="x must be"):
        ConvMP2D(4, 3, 3).encode(torch.randn(2, 1, 8, 8))


# ----------------------------------------------------------------------------- convolutional

GEOMETRIES = [  # (height, width, kernel_size, stride, pad)
    (7, 7, 3, 2, "same"),
    (8, 6, 3, 1, "same"),
    (9, 8, 3, 2, "valid"),
    (11, 12, 5, 2, "same"),
]


def explicit_dictionary(mp: ConvMP2D, height: int, width: int) -> torch.Tensor:
    """Every (atom, position) as one row: the conv dictionary written out as a matrix."""
    hc, wc = mp.code_shape(height, width)
    eye = torch.eye(mp.out_neurons * hc * wc, dtype=mp.weights.dtype)
    recon = mp.decode(eye.view(-1, mp.out_neurons, hc, wc), output_size=(height, width))
    return recon.flatten(1)


@pytest.mark.parametrize("height,width,ks,stride,pad", GEOMETRIES)
def test_conv_geometry_matches_conv_layers(height, width, ks, stride, pad):
    torch.manual_seed(15)
    mp = ConvMP2D(5, 2, ks, stride=stride, pad=pad, k=6, selection="abs", dtype=DT)
    x = torch.randn(3, 2, height, width, dtype=DT)
    residual, codes = mp.encode(x)
    padding = ks // 2 if pad == "same" else 0
    assert codes.shape == F.conv2d(x, mp.weights, stride=stride, padding=padding).shape
    op = [n - ((c - 1) * stride - 2 * padding + ks) for n, c in zip(x.shape[2:], codes.shape[2:])]
    recon = F.conv_transpose2d(
        codes, mp.weights, stride=stride, padding=padding, output_padding=tuple(op)
    )
    torch.testing.assert_close(recon + residual, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(mp.residual(x, codes), residual, rtol=0, atol=1e-12)
    assert ((codes != 0).flatten(1).sum(1) <= 6).all()
    if height == codes.shape[2] * stride and width == codes.shape[3] * stride:
        torch.testing.assert_close(mp.decode(codes), recon)  # default size for 'same'


@pytest.mark.parametrize("selection", ["relu", "abs", "signed"])
@pytest.mark.parametrize("height,width,ks,stride,pad", GEOMETRIES[:3])
def test_conv_matches_naive_loop_over_explicit_dictionary(
    selection, height, width, ks, stride, pad
):
    """Conv MP is linear MP over all shifted, border-cropped atoms: values and gradients."""
    torch.manual_seed(16)
    mp = ConvMP2D(3, 2, ks, stride=stride, pad=pad, k=4, selection=selection, dtype=DT)
    x = torch.randn(3, 2, height, width, dtype=DT, requires_grad=True)
    residual, codes = mp.encode(x)
    rows = explicit_dictionary(mp, height, width)
    ref_res, ref_codes = naive_mp(x.flatten(1), rows, 4, selection)
    torch.testing.assert_close(codes.flatten(1), ref_codes, rtol=0, atol=1e-12)
    torch.testing.assert_close(residual.flatten(1), ref_res, rtol=0, atol=1e-12)

    g_res, g_codes = torch.randn_like(residual), torch.randn_like(codes)
    ours = torch.autograd.grad((residual * g_res).sum() + (codes * g_codes).sum(), (x, mp.weights))
    ref = torch.autograd.grad(
        (ref_res * g_res.flatten(1)).sum() + (ref_codes * g_codes.flatten(1)).sum(),
        (x, mp.weights),
    )
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("selection", ["relu", "abs"])
def test_conv_residual_norm_never_increases(selection):
    torch.manual_seed(17)
    x = torch.randn(4, 3, 10, 10, dtype=DT)
    norms = [x.flatten(1).norm(dim=1)]
    for k in range(1, 10):
        mp = ConvMP2D(6, 3, 5, stride=2, k=k, selection=selection, dtype=DT)
        if k == 1:
            weights = mp.weights.detach().clone()
        mp.weights.data.copy_(weights)
        norms.append(mp.encode(x)[0].flatten(1).norm(dim=1))
    norms = torch.stack(norms)
    assert (norms[1:] <= norms[:-1] * (1 + 1e-12)).all()
    assert (norms[-1] < norms[0]).all()


def test_conv_recovers_planted_nonoverlapping_atoms():
    torch.manual_seed(18)
    mp = ConvMP2D(4, 1, 3, stride=3, pad="valid", k=3, selection="abs", dtype=DT)
    w = torch.zeros(4, 1, 3, 3, dtype=DT)
    for f, (i, j) in enumerate([(0, 0), (0, 2), (2, 0), (1, 1)]):
        w[f, 0, i, j] = 1.0  # orthonormal atoms, strided so positions never overlap
    mp.weights.data.copy_(w)
    planted = torch.zeros(2, 4, 3, 3, dtype=DT)
    planted[0, 1, 0, 2], planted[0, 3, 2, 2], planted[0, 0, 1, 1] = 3.0, -2.0, 1.0
    planted[1, 2, 1, 0], planted[1, 0, 0, 0], planted[1, 3, 2, 1] = -4.0, 2.5, 0.5
    x = mp.decode(planted, output_size=(9, 9))
    residual, codes = mp.encode(x)
    torch.testing.assert_close(codes, planted, rtol=0, atol=1e-12)
    assert residual.abs().max() < 1e-12


def test_conv_update_dictionary_keeps_unit_atoms():
    torch.manual_seed(19)
    mp = ConvMP2D(6, 3, 5, stride=2, k=5, eta=0.1, dtype=DT)
    x = torch.randn(2, 3, 12, 12, dtype=DT)
    residual, codes = mp.encode(x)
    before = mp.weights.detach().clone()
    mp.update_dictionary(codes, residual)
    torch.testing.assert_close(mp.weights.flatten(1).norm(dim=1), torch.ones(6, dtype=DT))
    used = codes.flatten(2).abs().sum((0, 2)) > 0
    torch.testing.assert_close(mp.weights[~used], before[~used], rtol=0, atol=1e-15)
    assert not torch.allclose(mp.weights[used], before[used])


def test_conv_mp_swaps_with_lca_layer():
    """Same constructor arguments, weight shape, code shape and reconstruction as LCAConv2D."""
    lca = pytest.importorskip("eplcanet.sparse.lca")
    kwargs = {"out_neurons": 8, "in_neurons": 3, "kernel_size": 5, "stride": 2, "pad": "same"}
    mp = ConvMP2D(**kwargs, k=10)
    layer = lca.LCAConv2D(**kwargs)
    assert isinstance(layer, SparseCoder) and isinstance(mp, SparseCoder)
    assert layer.weights.shape == mp.weights.shape
    with torch.no_grad():
        layer.weights.copy_(mp.weights)
    x = torch.randn(2, 3, 16, 16)
    codes = mp.code(x)
    torch.testing.assert_close(layer.decode(codes), mp.decode(codes), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.residual(x, codes), mp.residual(x, codes))
    odd = torch.randn(2, 3, 15, 15)  # stride 2: the size must be passed to reconstruct it
    codes = mp.code(odd)
    assert codes.shape == layer.code_shape(odd.shape)
    torch.testing.assert_close(
        layer.decode(codes, output_size=(15, 15)), mp.decode(codes, output_size=(15, 15))
    )
