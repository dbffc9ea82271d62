"""Continual EP (--alg CEP): per-step weight updates against one-shot EP, a naive loop and BPTT."""

import copy
import json

import pytest
import torch

from eplcanet.app.settings import parse_settings
from eplcanet.energy.dynamics import relax, relax_autograd
from eplcanet.energy.estimators import estimate_grads
from eplcanet.energy.learning import (Phases, cep_grads, cep_step_traces, cep_vs_ep, ep_grads,
                                      gdu_metrics, gdu_traces)
from eplcanet.energy.networks import P_MLP, VF_MLP
from eplcanet.app.experiment import run
from eplcanet.app.train import train_epoch

D = torch.float64
ARCHI = [6, 5, 4, 3]


def _net(cls=P_MLP, softmax=True, loss="cel"):
    torch.manual_seed(0)
    return cls(ARCHI, act="mysig", softmax=softmax, loss=loss).to(D)


def _data(batch=5):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(batch, ARCHI[0], generator=g, dtype=D),
            torch.randint(0, 3, (batch,), generator=g))


def _sgd(net, lr):
    """Plain SGD on every parameter (what train_epoch's optimizer does with --mmt 0)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0)
    return opt.step


@pytest.mark.parametrize("cls", [P_MLP, VF_MLP])
@pytest.mark.parametrize("softmax, loss", [(True, "cel"), (False, "mse")])
def test_summed_steps_equal_one_shot_ep_at_tiny_lr(cls, softmax, loss):
    net = _net(cls, softmax, loss)
    x, y = _data()
    phases = Phases(25, 8, (0.0, 0.3), thirdphase=False)
    before = copy.deepcopy(net)
    record = {}
    est = cep_grads(net, x, y, phases, _sgd(net, 1e-7), record=record)
    assert est.applied and len(record["steps"]) == phases.T2
    rows = cep_vs_ep(copy.deepcopy(before), x, y, phases, record)
    ep_grads(before, x, y, phases)
    names = [n for n, _ in net.named_parameters()]
    for k, (name, p, q) in enumerate(zip(names, net.parameters(), before.parameters())):
        summed = sum(s[k] for s in record["steps"])
        torch.testing.assert_close(summed, q.grad, rtol=1e-3, atol=1e-9 * q.grad.abs().max())
        torch.testing.assert_close(p.grad, summed)  # what .grad holds after the minibatch
        assert rows[name]["rel_diff"] < 1e-3 and rows[name]["cosine"] > 1 - 1e-6
    # the sum is over steps that each carry a part: the nudge reaches the first layer only after
    # a few steps, so its first step holds almost none of the update
    first = record["steps"][0][0].norm() / before.synapses[0].weight.grad.norm()
    assert first < 0.05


def _naive_cep(net, x, y, phases, lr, autograd_dynamics):
    """CEP written out: relax one step, differentiate Phi at the two states by autograd, move
    every parameter by lr times the per-step estimate, repeat."""
    b1, b2 = phases.betas
    params = list(net.parameters())
    with torch.no_grad():
        s = relax(net, net.input_drive(x), net.init_states(x.shape[0]), phases.T1)
    prev_beta, steps = b1, []
    for _ in range(phases.T2):
        if autograd_dynamics:
            new = relax_autograd(net, x, s, 1, b2, y)
        else:  # VF_MLP's field is not Phi's gradient: its closed form (test_vfmlp) steps it
            with torch.no_grad():
                new = relax(net, net.input_drive(x), s, 1, b2, y)
        with torch.enable_grad():
            diff = net.phi(x, [t.detach() for t in new], b2, y).mean() - net.phi(
                x, [t.detach() for t in s], prev_beta, y).mean()
            g = [-d / (b2 - b1) for d in torch.autograd.grad(diff, params)]
        with torch.no_grad():
            for p, d in zip(params, g):
                p -= lr * d
        steps.append(g)
        s, prev_beta = [t.detach() for t in new], b2
    return steps


@pytest.mark.parametrize("cls", [P_MLP, VF_MLP])
@pytest.mark.parametrize("random_sign", [False, True])
def test_steps_equal_a_naive_loop_that_moves_the_weights(cls, random_sign):
    net = _net(cls)
    naive = copy.deepcopy(net)
    x, y = _data()
    lr = 0.2  # large enough that the later steps see visibly moved weights
    phases = Phases(25, 6, (0.0, 0.4), random_sign=random_sign, thirdphase=False)
    record = {}
    torch.manual_seed(3)  # the random sign's draw
    cep_grads(net, x, y, phases, _sgd(net, lr), record=record)
    signed = Phases(25, 6, (0.0, record["beta"]), thirdphase=False)
    ref = _naive_cep(naive, x, y, signed, lr, autograd_dynamics=cls is P_MLP)
    for t, (mine, theirs) in enumerate(zip(record["steps"], ref)):
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for p, q in zip(net.parameters(), naive.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    # the moved weights matter: one-shot EP from the start differs from the summed steps
    fixed = copy.deepcopy(naive)
    ep_grads(fixed, x, y, signed)
    assert any(not torch.allclose(p.grad, q.grad, rtol=1e-3)
               for p, q in zip(net.parameters(), fixed.parameters()))


def test_cep_needs_its_update_and_refuses_a_third_phase():
    net = _net()
    x, y = _data()
    with pytest.raises(ValueError, match="pass update="):
        estimate_grads(net, x, y, "CEP", Phases(5, 2, (0.0, 0.3), thirdphase=False))
    with pytest.raises(ValueError, match="one-sided"):
        cep_grads(net, x, y, Phases(5, 2, (0.0, 0.3), thirdphase=True), _sgd(net, 0.1))


def test_per_step_gdu_cep_steps_match_bptt_steps():
    net = _net()
    x, y = _data(8)
    steps = cep_step_traces(gdu_traces(net, x, y, 80, 6, 1e-4))
    for name, tr in steps.items():
        # each step on its own, per tensor; the scale is the tensor's largest step (BPTT's
        # first steps do not reach the lowest layers: exactly zero there)
        scale = tr["bptt"].abs().max()
        for k in range(6):
            torch.testing.assert_close(tr["cep"][k], tr["bptt"][k], rtol=2e-3, atol=2e-3 * scale)
    metrics = gdu_metrics(steps)
    assert all(set(m) == {"cep"} and m["cep"]["rel_rmse"] < 2e-3 for m in metrics.values())


BASE = "--model MLP --archi 64 32 10 --T1 20 --T2 4 --device cpu"


@pytest.mark.parametrize("flags, message", [
    ("--alg CEP --no-thirdphase --mmt 0 --model CNN", "--alg CEP runs on the fully connected"),
    ("--alg CEP --no-thirdphase --mmt 0 --model VFCNN", "--model MLP or VFMLP, not --model VFCNN"),
    ("--alg CEP --mmt 0", "add --no-thirdphase"),
    ("--alg CEP --no-thirdphase --optim adam --mmt 0", "--optim adam is not that"),
    ("--alg CEP --no-thirdphase", "add --mmt 0"),
    ("--cep-debug", "--cep-debug compares"),
    ("--alg CEP --no-thirdphase --mmt 0 --tol 1e-6", "--tol applies to --alg EP"),
    ("--alg CEP --no-thirdphase --mmt 0 --warm-start 5", "--warm-start applies to --alg EP"),
])
def test_parse_args_refuses_what_cep_cannot_run(flags, message):
    with pytest.raises(SystemExit) as err:
        parse_settings(f"{BASE} {flags}".split())
    assert message in str(err.value)


def test_cep_learns_digits(tmp_path, capsys):
    # one layer of neurons under the softmax readout: settled in a few steps
    argv = ("--model MLP --archi 64 32 10 --act mysig --T1 8 --T2 3 --alg CEP --no-thirdphase "
            "--optim sgd --mmt 0 --lrs 0.2 0.1 --betas 0 0.5 --mbs 32 --seed 0 --epochs 2 "
            "--cep-debug --device cpu").split()
    result = run(parse_settings(argv), argv)
    assert result["test_acc"] > 0.4  # chance is 0.1 (measured 0.563)
    out = capsys.readouterr().out
    assert out.count("cep-debug epoch") == 2 and out.count("synapses.0.weight") == 2


def test_cep_debug_reports_without_changing_training(capsys):
    x, y = _data(12)
    loader = [(x[k:k + 4], y[k:k + 4]) for k in range(0, 12, 4)]
    phases = Phases(15, 4, (0.0, 0.5), random_sign=True, thirdphase=False)
    trained = []
    for debug in (False, True):
        net = _net()
        opt = torch.optim.SGD([{"params": g, "lr": lr} for g, lr in
                               zip(net.synapse_groups(), (0.3, 0.2, 0.1))], momentum=0.0)
        torch.manual_seed(5)  # the random signs
        train_epoch(net, opt, loader, "CEP", phases, "cpu", epoch=1, cep_debug=debug)
        trained.append([p.detach().clone() for p in net.parameters()])
    for a, b in zip(*trained):
        assert torch.equal(a, b)
    out = capsys.readouterr().out
    assert out.count("cep-debug epoch 1 minibatch 1 (beta2 ") == 1
    assert all(f"synapses.{i}.weight" in out for i in range(3))


def test_gducheck_with_cep_compares_steps(tmp_path):
    argv = ("--model MLP --archi 64 16 16 10 --act mysig --alg CEP --no-thirdphase --todo gducheck "
            f"--T1 60 --T2 5 --betas 0 0.001 --device cpu --results-dir {tmp_path}").split()
    result = run(parse_settings(argv), argv)
    stored = json.loads((tmp_path / "gducheck" / "gdu.json").read_text())
    assert stored == json.loads(json.dumps(result))
    assert len(result) == 6 and all(set(m) == {"cep"} for m in result.values())
    for m in result.values():  # the near-zero steps aside (test_per_step_gdu_...), they agree
        assert m["cep"]["rel_rmse"] < 1e-2 and len(m["cep"]["cosine_per_step"]) == 5
        assert max(c for c in m["cep"]["cosine_per_step"] if c is not None) > 0.9999
