"""Holomorphic EP (--alg hEP, eplcanet.energy.holomorphic) against the exact gradient of the loss
at the free equilibrium, computed independently by implicit differentiation
(``eplcanet.app.estimator_bias.implicit_grads``): the fixed point s* = sigma(dPhi/ds(s*)) with
dPhi/ds by autograd of EnergyNet.phi (not the closed forms the relaxation uses), its Jacobian J
by autograd, and

    dL/dtheta = dL/dtheta|_s* + lambda^T dF/dtheta,   (I - J)^T lambda = dL/ds*.

In float64, on a small P_MLP and on a P_CNN with an average-pooled and an unpooled conv layer
(so the complex states go through the convolution, its adjoint and the unpooling)."""

import pytest
import torch

from eplcanet.app.settings import parse_settings
from eplcanet.energy.activations import ACTIVATIONS
from eplcanet.energy.holomorphic import check_holomorphic, complex_dtype, hep_grads
from eplcanet.energy.estimators import estimate_grads
from eplcanet.energy.learning import Phases, _params, bptt_grads, ep_grads, gdu_traces
from eplcanet.energy.networks import P_CNN, P_MLP, VF_CNN
from eplcanet.app.estimator_bias import implicit_grads
from eplcanet.app.build import phases_of
from eplcanet.app.experiment import run
from eplcanet.kernels import native
from eplcanet.kernels.winograd import WinogradConvs

D = torch.float64
STEPS = 60  # free and nudged steps: converged to float64 rounding on these nets


def exact_grads(net, x, y):
    return implicit_grads(net, x, y, 2 * STEPS)


def mlp():
    torch.manual_seed(0)
    net = P_MLP([6, 5, 4, 3], act="sigmoid", softmax=True, loss="cel").to(D)
    return net, torch.randn(4, 6, dtype=D), torch.tensor([0, 1, 2, 1])


def cnn():
    torch.manual_seed(0)
    net = P_CNN((1, 8, 8), [2, 3], [3, 3], [1, 1], [1, 1], "ai", [4, 3], act="sigmoid",
                softmax=True, loss="cel").to(D)
    return net, torch.randn(3, 1, 8, 8, dtype=D), torch.tensor([0, 1, 2])


NETS = {"P_MLP": mlp, "P_CNN": cnn}


@pytest.fixture(scope="module", params=sorted(NETS))
def case(request):
    net, x, y = NETS[request.param]()
    return net, x, y, exact_grads(net, x, y)


def test_the_reference_is_bptt_through_a_converged_relaxation():
    """The implicit-differentiation reference agrees with a second one: backprop through the
    last 150 of 250 free steps (truncated BPTT, converged so truncation does not matter)."""
    net, x, y = mlp()
    ref = exact_grads(net, x, y)
    bptt_grads(net, x, y, Phases(250, 150, (0.0, 0.5)))
    for p, r in zip(_params(net), ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-9, atol=1e-13)


def phases(radius, batch_phases=True):
    return Phases(STEPS, STEPS, (0.0, radius), thirdphase=True, batch_phases=batch_phases)


def hep(net, x, y, radius, points, batch_phases=True):
    hep_grads(net, x, y, phases(radius, batch_phases), points)
    return [p.grad.clone() for p in _params(net)]


def symmetric(net, x, y, radius):
    ep_grads(net, x, y, phases(radius))
    return [p.grad.clone() for p in _params(net)]


def rel_err(est, ref):
    return [float((e - r).norm() / r.norm()) for e, r in zip(est, ref)]


def cosines(est, ref):
    return [float(torch.nn.functional.cosine_similarity(e.flatten(), r.flatten(), dim=0))
            for e, r in zip(est, ref)]


def test_hep_gives_the_exact_gradient_where_symmetric_ep_is_biased(case):
    net, x, y, ref = case
    h, s = hep(net, x, y, 0.5, 4), symmetric(net, x, y, 0.5)
    err_h, err_s = rel_err(h, ref), rel_err(s, ref)
    assert min(cosines(h, ref)) >= 0.999
    assert max(err_h) < 5e-4, err_h
    # the symmetric estimate's O(beta^2) bias, per tensor, is what hEP removes
    assert all(es > 10 * eh for es, eh in zip(err_s, err_h)), (err_s, err_h)
    assert min(err_s) > 1e-4, err_s


def test_alternate_update_order_reaches_the_same_gradient(case):
    """--updates alternate relaxes to the same fixed points (through the memo of pooled
    convolutions, on complex states too): the same exact gradient."""
    net, x, y, ref = case
    est = hep(net.with_relaxation(update_order="alternate"), x, y, 0.5, 8)
    assert max(rel_err(est, ref)) < 1e-7


def test_error_falls_with_the_number_of_points(case):
    net, x, y, ref = case
    e2, e4, e8 = (rel_err(hep(net, x, y, 1.0, n), ref) for n in (2, 4, 8))
    for a, b, c in zip(e2, e4, e8):  # the aliasing error is O(r^N): orders of magnitude here
        assert b < a / 5 and c < b / 20, (e2, e4, e8)
    assert max(e8) < 1e-5


@pytest.mark.parametrize("k", [1, 2, 4])
def test_short_nudged_phases_give_bptt_through_as_many_steps(k):
    """Each T2-step nudged state is holomorphic in beta too, so hEP with T2 = k is d/dbeta of
    the k-step estimate: by the GDU theorem, the gradient backpropagated through k free steps
    from the free equilibrium (learning.gdu_traces' BPTT), without EP's finite-beta bias."""
    net, x, y = mlp()
    traces = gdu_traces(net, x, y, STEPS, k, 0.1)
    hep_grads(net, x, y, Phases(STEPS, k, (0.0, 0.5)), 8)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    for name, p in zip(names, _params(net)):
        torch.testing.assert_close(p.grad, traces[name]["bptt"][k - 1], rtol=1e-8, atol=1e-13)


def test_two_points_are_the_symmetric_estimate(case):
    """N = 2 puts the betas at +r and -r: the Cauchy sum is symmetric EP's difference quotient
    (this pins hEP's sign and scale to EP's convention)."""
    net, x, y, _ = case
    for h, s in zip(hep(net, x, y, 0.7, 2), symmetric(net, x, y, 0.7)):
        torch.testing.assert_close(h, s, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("points", [3, 4, 5])
def test_batched_phases_equal_one_relaxation_per_beta(case, points):
    net, x, y, _ = case
    for a, b in zip(hep(net, x, y, 0.6, points), hep(net, x, y, 0.6, points, False)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)


@pytest.mark.skipif(native.why_unavailable() is not None,
                    reason="the Winograd C kernels cannot be built here")
def test_winograd_takes_the_parts_of_complex_states(monkeypatch):
    """--conv-algo winograd: the complex phase's adjoints and weight gradients run the Winograd
    kernels on its real and imaginary parts stacked along the batch (its forward convolutions
    are direct), and give the direct convolution's estimate. N = 3: one real phase (batch B)
    and one complex phase, whose parts make batch 2B (adjoint) and, as the weight gradient's
    difference terms are stacked too, 4B (weight gradient of the conv-to-conv synapse)."""
    net, x, y = cnn()
    batches = {"adjoint": set(), "weight_grad": set()}
    for name in batches:
        real = getattr(WinogradConvs, name)

        def recorded(self, conv, t, *rest, _real=real, _name=name):
            batches[_name].add(t.shape[0])
            return _real(self, conv, t, *rest)
        monkeypatch.setattr(WinogradConvs, name, recorded)
    wino = hep(net.with_relaxation(conv_algo="winograd"), x, y, 0.5, 3)
    n = x.shape[0]
    assert 2 * n in batches["adjoint"] and 4 * n in batches["weight_grad"], batches
    for a, b in zip(wino, hep(net, x, y, 0.5, 3)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_float32_states_relax_in_complex64():
    net, x, y = mlp()
    ref = exact_grads(net, x, y)
    assert complex_dtype(torch.float32) == torch.complex64
    assert complex_dtype(torch.float64) == torch.complex128
    net32 = net.float()
    est = hep(net32, x.float(), y, 0.5, 4)
    assert all(g.dtype == torch.float32 for g in est)
    assert min(cosines([g.double() for g in est], ref)) >= 0.999
    assert max(rel_err([g.double() for g in est], ref)) < 1e-3


def test_estimate_grads_dispatches_to_hep():
    net, x, y = mlp()
    estimate_grads(net, x, y, "hEP", Phases(STEPS, STEPS, (0.0, 0.5), hep_points=8))
    via_dispatch = [p.grad.clone() for p in _params(net)]
    for a, b in zip(via_dispatch, hep(net, x, y, 0.5, 8)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_networks_without_holomorphic_dynamics_are_refused():
    def conv(cls, pools="a", act="sigmoid"):
        return cls((1, 8, 8), [2], [3], [1], [1], pools, [3], act=act)

    for net, words in ((conv(P_CNN, pools="m"), "max pooling"),
                       (conv(P_CNN, act="my_hard_sig"), "analytic"),
                       (conv(VF_CNN), "P_MLP and P_CNN")):
        with pytest.raises(ValueError, match=words):
            check_holomorphic(net)
    net, x, y = mlp()
    with pytest.raises(ValueError, match="points >= 2"):
        hep_grads(net, x, y, phases(0.5), 1)
    with pytest.raises(ValueError, match="betas\\[0\\] must be 0"):
        hep_grads(net, x, y, Phases(5, 5, (0.1, 0.5)), 4)


HEP = "--alg hEP --act sigmoid --pools aa"


@pytest.mark.parametrize("flags, message", [
    ("--alg hEP --pools aa", "--act"),  # the default my_hard_sig is a clamp
    ("--alg hEP --pools aa --act ctrd_hard_sig", "--act"),
    (f"{HEP} --model VFCNN", "--model"),
    (f"{HEP} --model LCACNN", "--model"),
    ("--alg hEP --act sigmoid --pools am", "--pools"),
    (f"{HEP} --betas 0.1 0.5", "--betas"),
    (f"{HEP} --tol 1e-6", "--tol"),
    (f"{HEP} --no-thirdphase --random-sign", "--random-sign"),
    (f"{HEP} --warm-start 5", "--warm-start"),
    ("--hep-points 6", "--hep-points applies to --alg hEP"),
])
def test_cli_refuses_what_hep_cannot_run(flags, message):
    with pytest.raises(SystemExit) as err:
        parse_settings(flags.split())
    assert str(err.value).startswith("error: ") and message in str(err.value)


def test_cli_refuses_fewer_than_two_points(capsys):
    with pytest.raises(SystemExit) as err:
        parse_settings(f"{HEP} --hep-points 1".split())
    assert err.value.code == 2
    assert "--hep-points" in capsys.readouterr().err
    assert parse_settings(HEP.split()).estimator.hep_points == 4
    assert parse_settings(f"{HEP} --hep-points 6".split()).estimator.hep_points == 6
    assert phases_of(parse_settings(f"{HEP} --hep-points 6".split())).hep_points == 6
    assert parse_settings([]).estimator.hep_points is None  # other estimators: no value to record or resume
    assert phases_of(parse_settings([])) == Phases(20, 4, (0.0, 0.5), thirdphase=True)


def test_trains_a_tiny_mlp_on_digits_above_chance(tmp_path):
    argv = ("--alg hEP --model MLP --archi 64 32 10 --act sigmoid --lrs 0.5 0.5 --T1 15 --T2 6 "
            f"--epochs 1 --device cpu --results-dir {tmp_path}").split()
    result = run(parse_settings(argv), argv)
    assert result["test_acc"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("name, reference", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
                                             ("mysig", lambda z: torch.sigmoid(4 * z - 2))])
def test_complex_activations_are_the_holomorphic_extensions(name, reference):
    """The real-arithmetic complex activations equal torch's complex functions where those are
    finite (to float64 rounding, also near 0 and near the real axis), and their limits where
    torch's overflow to NaN; real inputs still go to torch's real functions."""
    act = ACTIVATIONS[name]
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(2, 500, generator=g, dtype=D) * scale for scale in (0.3, 3.0, 30.0)]
    z = torch.cat([torch.complex(a, 0.4 * b) for a, b in parts])
    z = torch.cat([z, torch.tensor([1e-9 + 1e-12j, -1e-9 + 1e-12j, 1e-3j, 0.2 + 1e-10j],
                                   dtype=torch.complex128)])
    ours, ref = act(z), reference(z)
    finite = torch.isfinite(ref)
    assert finite.float().mean() > 0.9
    rel = (ours - ref).abs() / ref.abs().clamp_min(1e-300)
    assert float(rel[finite].max()) < 1e-13
    far = torch.tensor([800 + 0.3j, -800 - 0.1j], dtype=torch.complex128)
    limits = {"sigmoid": [1, 0], "tanh": [1, -1], "mysig": [1, 0]}[name]
    torch.testing.assert_close(act(far), torch.tensor(limits, dtype=torch.complex128))
    x = torch.randn(50, generator=g, dtype=D)
    assert torch.equal(act(x), reference(x))
