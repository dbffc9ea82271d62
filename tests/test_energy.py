"""The closed-form dynamics against autograd of Phi, and EP against BPTT (GDU theorem)."""

import pytest
import torch

from eplcanet.energy.activations import ACTIVATIONS, get_activation
from eplcanet.energy.dynamics import Relaxation, autograd_step, relax, relax_autograd, step
from eplcanet.energy.estimators import estimate_grads
from eplcanet.energy.learning import (
    Phases,
    ep_grads,
    free_phase,
    gdu_metrics,
    gdu_traces,
    phi_param_grads,
)
from eplcanet.energy.networks import P_CNN, P_MLP, VF_CNN

D = torch.float64


def _cnn(pools="mm", softmax=False, loss="mse", act="mysig", strides=(1, 1), cls=P_CNN, **kw):
    fc = [7, 10] if softmax else [10]
    return cls((2, 9, 9), [4, 6], [3, 3], list(strides), [1, 0], pools, fc, act=act,
               softmax=softmax, loss=loss, **kw).to(D)


def _random_states(net, batch=5):
    return [torch.rand(batch, *s, dtype=D) for s in net.state_shapes]


@pytest.mark.parametrize("pools", ["mm", "aa", "ii", "ma"])
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("loss", ["mse", "cel"])
def test_closed_form_step_equals_autograd_of_phi(pools, softmax, loss):
    torch.manual_seed(0)
    net = _cnn(pools, softmax, loss)
    x, y = torch.rand(5, 2, 9, 9, dtype=D), torch.randint(0, 10, (5,))
    s = _random_states(net)
    for beta in (0.0, 0.7):
        ours = step(net, net.input_drive(x), s, beta, y)
        ref = autograd_step(net, x, s, beta, y)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_closed_form_with_strides_and_odd_sizes():
    torch.manual_seed(1)
    net = P_CNN((1, 13, 13), [3, 5, 4], [3, 2, 3], [2, 1, 1], [1, 1, 0], "iam", [10]).to(D)
    x, y = torch.rand(3, 1, 13, 13, dtype=D), torch.randint(0, 10, (3,))
    s = _random_states(net, 3)
    for a, b in zip(step(net, net.input_drive(x), s, 0.3, y), autograd_step(net, x, s, 0.3, y)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_mlp_closed_form_and_multi_step_relaxation():
    torch.manual_seed(2)
    net = P_MLP([20, 15, 12, 10], act="hard_sigmoid", loss="cel").to(D)
    x, y = torch.rand(4, 20, dtype=D), torch.randint(0, 10, (4,))
    s0 = net.init_states(4)
    ours = relax(net, net.input_drive(x), s0, 12, 0.5, y)
    ref = relax_autograd(net, x, s0, 12, 0.5, y)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_vf_cnn_with_feedback_equal_to_forward_is_the_symmetric_net():
    torch.manual_seed(3)
    vf = _cnn(cls=VF_CNN)
    sym = _cnn()
    sym.load_state_dict({k: v for k, v in vf.state_dict().items() if k.startswith("synapses")})
    x, y = torch.rand(5, 2, 9, 9, dtype=D), torch.randint(0, 10, (5,))
    s = _random_states(vf)
    a_vf = step(vf, vf.input_drive(x), s, 0.2, y)
    assert not all(torch.allclose(a, b) for a, b in zip(a_vf, step(sym, sym.input_drive(x), s, 0.2, y)))
    with torch.no_grad():
        for i in range(1, len(vf.feedback)):
            vf.feedback[i].weight.copy_(vf.synapses[i].weight)
    assert vf.angles()[1] == pytest.approx(0.0, abs=1e-3)
    for a, b in zip(step(vf, vf.input_drive(x), s, 0.2, y), step(sym, sym.input_drive(x), s, 0.2, y)):
        torch.testing.assert_close(a, b)


def test_vf_same_update_copies_forward_update():
    torch.manual_seed(4)
    vf = _cnn(cls=VF_CNN, same_update=True)
    x, y = torch.rand(5, 2, 9, 9, dtype=D), torch.randint(0, 10, (5,))
    ep_grads(vf, x, y, Phases(10, 4, (0.0, 0.5)))
    for i in range(1, len(vf.feedback)):
        torch.testing.assert_close(vf.feedback[i].weight.grad, vf.synapses[i].weight.grad)


@pytest.mark.parametrize("softmax,loss", [(False, "mse"), (True, "cel")])
def test_symmetric_ep_matches_bptt(softmax, loss):
    """GDU theorem: with a small beta, symmetric EP updates equal the BPTT gradients."""
    torch.manual_seed(5)
    fc = [12, 10] if softmax else [10]
    net = P_CNN((1, 8, 8), [6, 8], [3, 3], [1, 1], [1, 1], "mm", fc, act="mysig",
                softmax=softmax, loss=loss).to(D)
    x, y = torch.rand(6, 1, 8, 8, dtype=D), torch.randint(0, 10, (6,))
    traces = gdu_traces(net, x, y, T1=150, T2=10, beta=0.005)
    metrics = gdu_metrics(traces)
    assert set(metrics) == {n for n, _ in net.named_parameters()}
    for name, m in metrics.items():
        assert m["ep_symmetric"]["cosine"] >= 0.99, (name, m)
        assert m["ep_symmetric"]["rel_rmse"] <= m["ep_onesided"]["rel_rmse"] + 1e-9, (name, m)
        assert traces[name]["bptt"].shape == (10, *dict(net.named_parameters())[name].shape)


def test_ep_estimate_has_the_sign_of_a_descent_direction():
    """A small SGD step along the EP estimate lowers the loss at the free equilibrium."""
    torch.manual_seed(6)
    net = P_MLP([16, 20, 10], act="mysig").to(D)
    x, y = torch.rand(32, 16, dtype=D), torch.randint(0, 10, (32,))
    phases = Phases(60, 10, (0.0, 0.05), thirdphase=True)

    def loss():
        with torch.no_grad():
            s = relax(net, net.input_drive(x), net.init_states(32), 60)
            return net.loss_per_sample(s, y).mean().item()

    before = loss()
    ep_grads(net, x, y, phases)
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.5 * p.grad
    assert loss() < before


def test_estimators_keep_no_graph_and_reject_unknown_algorithm():
    torch.manual_seed(7)
    net = _cnn()
    x, y = torch.rand(5, 2, 9, 9, dtype=D), torch.randint(0, 10, (5,))
    for alg in ("EP", "BPTT"):
        states = estimate_grads(net, x, y, alg, Phases(8, 3, (0.0, 0.5), random_sign=True)).states
        assert all(not s.requires_grad for s in states)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="unknown algorithm 'EQPROP'; accepted: EP, BPTT"):
        estimate_grads(net, x, y, "EQPROP", Phases(8, 3, (0.0, 0.5)))


def test_activation_formulas():
    x = torch.linspace(-3, 3, 61, dtype=D)
    torch.testing.assert_close(ACTIVATIONS["mysig"](x), 1 / (1 + torch.exp(-(4 * x - 2))))
    torch.testing.assert_close(ACTIVATIONS["my_hard_sig"](x), torch.clamp(x / 2, 0, 1))
    torch.testing.assert_close(ACTIVATIONS["hard_sigmoid"](x), torch.clamp(x, 0, 1))
    torch.testing.assert_close(ACTIVATIONS["ctrd_hard_sig"](x), torch.clamp(x, -0.5, 0.5))
    with pytest.raises(ValueError, match="accepted: .*my_hard_sig"):
        get_activation("relu6")


def test_bad_architectures_are_refused():
    with pytest.raises(ValueError, match="pools"):
        P_CNN((1, 8, 8), [4, 4], [3, 3], [1, 1], [1, 1], "mx", [10])
    with pytest.raises(ValueError, match="kernels"):
        P_CNN((1, 8, 8), [4, 4], [3], [1, 1], [1, 1], "mm", [10])
    with pytest.raises(ValueError, match="no spatial extent"):
        P_CNN((1, 8, 8), [4, 4, 4, 4], [3] * 4, [1] * 4, [1] * 4, "mmmm", [10])


def test_batched_plus_minus_phases_equal_sequential_phases():
    torch.manual_seed(8)
    net = _cnn(softmax=True, loss="cel")
    x, y = torch.rand(5, 2, 9, 9, dtype=D), torch.randint(0, 10, (5,))
    grads = []
    for batched in (True, False):
        ep_grads(net, x, y, Phases(12, 4, (0.0, 0.3), thirdphase=True, batch_phases=batched))
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_keeps_fp32_states_and_close_gradients():
    from eplcanet.app.train import precision_context

    torch.manual_seed(9)
    net = _cnn(softmax=True, loss="cel").float()
    x, y = torch.rand(8, 2, 9, 9), torch.randint(0, 10, (8,))
    phases = Phases(10, 3, (0.0, 0.5), thirdphase=True)
    ep_grads(net, x, y, phases)
    ref = [p.grad.clone() for p in net.parameters()]
    with precision_context("bf16", "cpu"):
        states = ep_grads(net, x, y, phases).states
    assert all(s.dtype == torch.float32 for s in states)
    got = [p.grad.clone() for p in net.parameters()]
    assert all(g.dtype == torch.float32 for g in got)
    assert not all(torch.equal(a, b) for a, b in zip(got, ref))  # bf16 arithmetic really ran
    # Per tensor: the nudged phases run in fp32, so even the first layer's estimate keeps its
    # direction (with bf16 nudged phases its bias fell to cosine 0.64 here).
    for a, b in zip(got, ref):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    with pytest.raises(ValueError, match="accepted: fp32, tf32, bf16"):
        precision_context("fp16", "cpu")


def test_update_runs_in_fp32_under_bf16_autocast():
    # The EP estimate divides a difference of two nearly equal gradients by beta: under bf16
    # it would lose most of its digits, so phi_param_grads must leave autocast.
    from eplcanet.app.train import precision_context

    torch.manual_seed(10)
    net = _cnn(softmax=True, loss="cel").float()
    x, y = torch.rand(6, 2, 9, 9), torch.randint(0, 10, (6,))
    _, free, _ = free_phase(net, x, 10)
    with torch.no_grad():
        drive = net.input_drive(x)
        plus, minus = (relax(net, drive, free, 3, b, y) for b in (0.5, -0.5))
    ref = phi_param_grads(net, x, y, minus, -0.5, plus, 0.5)
    with precision_context("bf16", "cpu"):
        got = phi_param_grads(net, x, y, minus, -0.5, plus, 0.5)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_states_and_weights_stay_channels_last_with_one_input_channel():
    # A 1-channel input is both NCHW- and NHWC-contiguous, so the convolution cannot infer the
    # layout from it: the drive must be set to channels_last, or every state falls back to NCHW.
    torch.manual_seed(11)
    net = P_CNN((1, 16, 16), [4, 6], [3, 3], [1, 1], [0, 0], "mm", [10], softmax=True, loss="cel")
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in net.synapses if isinstance(m, torch.nn.Conv2d))
    _, states, _ = free_phase(net, torch.rand(3, 1, 16, 16), 4)
    assert all(s.is_contiguous(memory_format=torch.channels_last) and not s.is_contiguous()
               for s in states if s.dim() == 4)


def _alternating(net):
    return net.with_relaxation(update_order="alternate")


@pytest.mark.parametrize("pools", ["mm", "ai"])
@pytest.mark.parametrize("softmax", [False, True])
def test_alternate_step_equals_autograd_of_phi_even_then_odd(pools, softmax):
    torch.manual_seed(12)
    net = _cnn(pools, softmax, "cel")
    alternate = _alternating(net)
    x, y = torch.rand(5, 2, 9, 9, dtype=D), torch.randint(0, 10, (5,))
    s = _random_states(net)
    for beta in (0.0, 0.6):
        ours = step(alternate, alternate.input_drive(x), s, beta, y)
        # independent reference: one full autograd update, keep the even layers; a second one
        # from those states, keep the odd layers
        first = autograd_step(net, x, s, beta, y)
        mixed = [first[i] if i % 2 == 0 else s[i] for i in range(len(s))]
        second = autograd_step(net, x, mixed, beta, y)
        ref = [mixed[i] if i % 2 == 0 else second[i] for i in range(len(s))]
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [P_CNN, VF_CNN])
def test_alternate_relaxation_reuses_unchanged_convolutions_and_gives_the_same_states(cls):
    torch.manual_seed(15)
    net = cls((2, 12, 12), [3, 4, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1], "mmi", [10], softmax=True,
              loss="cel").to(D)
    x, y = torch.rand(4, 2, 12, 12, dtype=D), torch.randint(0, 10, (4,))
    drive, start = net.input_drive(x), _random_states(net, 4)
    twin = _alternating(net)
    calls = []
    for m in (net, twin):
        m._conv = lambda conv, s, convolve=m._conv: calls.append(conv) or convolve(conv, s)
    sync = relax(net, drive, start, 5, 0.3, y)
    n_sync = len(calls)
    alternate = relax(twin, drive, start, 5, 0.3, y)
    n_alternate = len(calls) - n_sync
    # Each synapse's convolution is needed in both sweeps, and its input changes in only one:
    # beyond the first step, an alternating step convolves no more than a synchronous one
    # (without the memo: twice as much).
    assert n_sync == 5 * (net.n_conv - 1) * (2 if cls is VF_CNN else 1)
    assert n_alternate <= n_sync + n_sync // 5, (n_alternate, n_sync)
    # Reference: every sweep evaluated afresh, without the memo.
    ref = list(start)
    for _ in range(5):
        for layers in (range(0, len(ref), 2), range(1, len(ref), 2)):
            grads = net.phi_grad_states(drive, ref, 0.3, y, set(layers))
            for i in layers:
                ref[i] = net.act(grads[i])
    assert all(torch.equal(a, b) for a, b in zip(alternate, ref))
    assert not all(torch.equal(a, b) for a, b in zip(alternate, sync))


def _every_network_class(relaxation):
    from eplcanet.energy.lcacnn import LCA_CNN
    from eplcanet.sparse import make_sparse_coder

    coder = make_sparse_coder("lca", out_neurons=3, in_neurons=2, kernel_size=3, stride=1,
                              lambda_=0.05, lca_iters=5, solver="fista", input_zero_mean=False,
                              input_unit_var=False).to(D)
    return [P_MLP([20, 15, 12, 10], relaxation=relaxation).to(D),
            _cnn(relaxation=relaxation), _cnn(cls=VF_CNN, relaxation=relaxation),
            LCA_CNN((2, 9, 9), coder, [4], [3], [1], [1], "m", [10],
                    relaxation=relaxation).to(D)]


def test_every_network_relaxes_as_it_was_built_and_cannot_be_changed_afterwards():
    torch.manual_seed(16)
    alternate = Relaxation(update_order="alternate", conv_algo="direct")
    for built, default in zip(_every_network_class(alternate), _every_network_class(None)):
        assert built.relaxation == alternate and default.relaxation == Relaxation()
        with pytest.raises(AttributeError):
            built.relaxation = Relaxation()
        # the order given at construction is the one the steps follow: the same states as a
        # copy of the synchronous twin switched to it, and not the synchronous ones
        default.load_state_dict(built.state_dict())
        twin = default.with_relaxation(update_order="alternate", conv_algo="direct")
        assert default.relaxation == Relaxation()  # the original keeps its settings
        assert twin.synapses[0].weight is not default.synapses[0].weight
        x = torch.rand(4, *getattr(built, "image_shape", built.in_shape), dtype=D)
        drive, s = built.input_drive(x), _random_states(built, 4)
        ours = relax(built, drive, s, 3)
        assert all(torch.equal(a, b) for a, b in zip(ours, relax(twin, drive, s, 3)))
        assert not all(torch.equal(a, b) for a, b in zip(ours, relax(default, drive, s, 3)))
    with pytest.raises(TypeError, match="relaxation must be a Relaxation"):
        P_MLP([20, 10], relaxation="alternate")


def test_partial_gradients_equal_the_full_ones_and_skip_the_rest():
    torch.manual_seed(13)
    for net in (_cnn("mm", True, "cel"), _cnn(cls=VF_CNN), P_MLP([20, 15, 12, 10]).to(D)):
        x = torch.rand(4, *net.in_shape, dtype=D)
        y = torch.randint(0, 10, (4,))
        s = _random_states(net, 4)
        full = net.phi_grad_states(net.input_drive(x), s, 0.4, y)
        for layers in ({0}, {1}, {0, 2}, {len(s) - 1}):
            part = net.phi_grad_states(net.input_drive(x), s, 0.4, y, layers)
            for i, (a, b) in enumerate(zip(part, full)):
                if i in layers:
                    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
                else:
                    assert a is None


def test_alternate_updates_reach_a_fixed_point_of_the_synchronous_dynamics_sooner():
    torch.manual_seed(14)
    net = P_MLP([20, 30, 25, 10], act="mysig").to(D)
    x = torch.rand(6, 20, dtype=D)
    drive = net.input_drive(x)
    star = relax(net, drive, net.init_states(6), 400)
    assert max((a - b).abs().max() for a, b in zip(step(net, drive, star), star)) < 1e-10

    def distance(states):
        return sum((a - b).norm() for a, b in zip(states, star))

    sync_10 = distance(relax(net, drive, net.init_states(6), 10))
    alternate = _alternating(net)
    alt = relax(alternate, drive, net.init_states(6), 400)
    assert max((a - b).abs().max() for a, b in zip(alt, star)) < 1e-8
    assert distance(relax(alternate, drive, net.init_states(6), 10)) < sync_10
    with pytest.raises(ValueError, match="accepted: sync, alternate"):
        net.with_relaxation(update_order="gauss")
