"""VF_MLP (--model VFMLP): the vector-field MLP against plain formulations of its field and update."""

import pytest
import torch
import torch.nn.functional as F

from eplcanet.app.settings import parse_settings
from eplcanet.energy.dynamics import relax, step
from eplcanet.energy.learning import Phases, ep_grads
from eplcanet.energy.networks import P_MLP, VF_MLP
from eplcanet.app.experiment import run

D = torch.float64
ARCHI = [6, 5, 4, 3]


def _net(softmax=False, loss="mse", same_update=False, cls=VF_MLP, **kw):
    torch.manual_seed(0)
    extra = {"same_update": same_update} if cls is VF_MLP else {}
    return cls(ARCHI, act="mysig", softmax=softmax, loss=loss, **extra, **kw).to(D)


def _data(batch=5):
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, ARCHI[0], generator=g, dtype=D), torch.randint(0, 3, (batch,),
                                                                             generator=g)


def _loss(net, out, y):
    """The output loss written out: logits / output state -> per-sample loss."""
    if net.loss == "cel":
        return F.cross_entropy(out, y, reduction="none")
    p = F.softmax(out, 1) if net.softmax else out
    return 0.5 * ((p - F.one_hot(y, 3).to(D)) ** 2).sum(1)


def _field(net, x, states, beta, y):
    """The vector field layer by layer: the gradient with respect to s_i of the terms that hold
    s_i, <W_i s_{i-1} + b_i, s_i> + <B_{i+1} s_i, s_{i+1}> - beta L, by autograd."""
    W = [m.weight for m in net.synapses]
    b = [m.bias for m in net.synapses]
    B = [None] + [m.weight for m in list(net.feedback)[1:]]
    n = len(states)
    out = []
    for i in range(n):
        s_i = states[i].detach().requires_grad_(True)
        below = x if i == 0 else states[i - 1]
        e = ((below @ W[i].T + b[i]) * s_i).sum(1)
        if i + 1 < n:
            e = e + ((s_i @ B[i + 1].T) * states[i + 1]).sum(1)
        if i == n - 1 and beta != 0:
            top = s_i @ W[-1].T + b[-1] if net.softmax else s_i
            e = e - beta * _loss(net, top, y)
        out.append(torch.autograd.grad(e.sum(), s_i)[0])
    return out


def _naive_relax(net, x, y, states, steps, beta):
    with torch.no_grad():
        for _ in range(steps):
            with torch.enable_grad():
                states = [net.act(f) for f in _field(net, x, states, beta, y)]
    return states


@pytest.mark.parametrize("softmax, loss", [(False, "mse"), (True, "cel"), (True, "mse")])
def test_closed_form_step_equals_the_vector_field_by_autograd(softmax, loss):
    net = _net(softmax, loss)
    x, y = _data()
    torch.manual_seed(2)
    states = [torch.rand(5, *s, dtype=D) for s in net.state_shapes]
    for beta in (0.0, 0.7):
        with torch.no_grad():
            fast = step(net, net.input_drive(x), states, beta, y)
        ref = [net.act(f) for f in _field(net, x, states, beta, y)]
        assert len(fast) == len(ref) == net.n_states
        for a, r in zip(fast, ref):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def _outer_mean(a, b):
    """Batch mean of the per-sample outer products a_n b_n^T, one sample at a time."""
    return sum(torch.outer(a[k], b[k]) for k in range(a.shape[0])) / a.shape[0]


@pytest.mark.parametrize("softmax, loss", [(False, "mse"), (True, "cel")])
def test_ep_update_equals_the_naive_hebbian_difference(softmax, loss):
    net = _net(softmax, loss)
    x, y = _data()
    T1, T2, beta = 25, 6, 0.3
    ep_grads(net, x, y, Phases(T1, T2, (0.0, beta), thirdphase=False))
    zero = [torch.zeros(5, *s, dtype=D) for s in net.state_shapes]
    free = _naive_relax(net, x, y, zero, T1, 0.0)
    nudged = _naive_relax(net, x, y, free, T2, beta)
    layers_f, layers_n = [x] + free, [x] + nudged
    for i in range(net.n_states):
        hebb = -(_outer_mean(layers_n[i + 1], layers_n[i])
                 - _outer_mean(layers_f[i + 1], layers_f[i])) / beta
        torch.testing.assert_close(net.synapses[i].weight.grad, hebb, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(net.synapses[i].bias.grad,
                                   -(layers_n[i + 1] - layers_f[i + 1]).mean(0) / beta,
                                   rtol=1e-9, atol=1e-12)
        if i >= 1:  # the feedback synapse B_i: the same Hebbian difference
            torch.testing.assert_close(net.feedback[i].weight.grad, hebb, rtol=1e-9, atol=1e-12)
    if softmax:  # the readout only enters Phi through -beta L at the nudged state
        with torch.enable_grad():
            w = net.synapses[-1].weight.detach().requires_grad_(True)
            c = net.synapses[-1].bias.detach().requires_grad_(True)
            loss_n = _loss(net, nudged[-1] @ w.T + c, y).mean()
            gw, gc = torch.autograd.grad(loss_n, (w, c))
        torch.testing.assert_close(net.synapses[-1].weight.grad, gw, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(net.synapses[-1].bias.grad, gc, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("softmax", [False, True])
def test_with_feedback_equal_to_forward_weights_it_is_p_mlp(softmax):
    vf = _net(softmax, "cel" if softmax else "mse")
    p = _net(softmax, "cel" if softmax else "mse", cls=P_MLP)
    with torch.no_grad():
        for a, b in zip(vf.synapses, p.synapses):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
        for i in range(1, vf.n_states):
            vf.feedback[i].weight.copy_(vf.synapses[i].weight)
    x, y = _data()
    phases = Phases(20, 5, (0.0, 0.4), thirdphase=False)
    with torch.no_grad():
        for beta in (0.0, 0.4):
            sv = relax(vf, vf.input_drive(x), vf.init_states(5), 20, beta, y)
            sp = relax(p, p.input_drive(x), p.init_states(5), 20, beta, y)
            for a, b in zip(sv, sp):
                torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    ep_grads(vf, x, y, phases)
    ep_grads(p, x, y, phases)
    for a, b in zip(vf.synapses, p.synapses):
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.bias.grad, b.bias.grad, rtol=1e-12, atol=1e-14)
    for i in range(1, vf.n_states):
        torch.testing.assert_close(vf.feedback[i].weight.grad, p.synapses[i].weight.grad,
                                   rtol=1e-12, atol=1e-14)


def test_same_update_changes_nothing_for_linear_feedback():
    x, y = _data()
    phases = Phases(15, 4, (0.0, 0.5), thirdphase=False)
    grads = []
    for same in (False, True):
        net = _net(same_update=same)
        with torch.no_grad():  # feedback unlike the forward weights, so the claim is not trivial
            for fb in list(net.feedback)[1:]:
                fb.weight.normal_()
        ep_grads(net, x, y, phases)
        grads.append([fb.weight.grad.clone() for fb in list(net.feedback)[1:]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_cli_builds_vfmlp_and_refuses_what_it_cannot_take():
    args = parse_settings("--model VFMLP --archi 64 32 10 --same-update --device cpu".split())
    assert args.optim.lrs == (0.1, 0.1) and args.model.same_update
    with pytest.raises(SystemExit, match="--lrs needs 2 value"):
        parse_settings("--model VFMLP --archi 64 32 10 --lrs 0.1".split())
    with pytest.raises(SystemExit, match="VFCNN or VFMLP"):
        parse_settings("--model MLP --archi 64 32 10 --same-update".split())


def test_vfmlp_learns_digits(tmp_path):
    argv = ("--model VFMLP --archi 64 64 10 --act mysig --T1 20 --T2 4 --mbs 32 --epochs 2 "
            "--optim sgd --mmt 0.9 --lrs 0.2 0.1 --betas 0 0.5 --device cpu --seed 0").split()
    result = run(parse_settings(argv), argv)
    assert result["test_acc"] > 0.85  # chance is 0.1 (measured 0.955)
