"""Tests of the feed-forward baseline (--model FFCNN --alg BP): its pass against a plain
torch.nn.functional formulation, the relaxation reaching that pass, its layers being P_CNN's, BP's
gradient against autograd of the plain formulation, and its flags."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eplcanet.app.settings import parse_settings
from eplcanet.energy.activations import get_activation
from eplcanet.energy.dynamics import Relaxation, relax
from eplcanet.energy.feedforward import FF_CNN, bp_grads
from eplcanet.energy.networks import P_CNN
from eplcanet.app.experiment import run

# the MNIST recipe's shape on 8x8 digits: two conv layers with max-pooling, an fc readout
ARCH = dict(in_shape=(1, 8, 8), channels=[4, 8], kernels=[3, 3], strides=[1, 1], paddings=[1, 1],
            pools="mm", fc=[10])


def _net(softmax: bool = True, updates: str = "sync", fc=(10,)) -> FF_CNN:
    torch.manual_seed(0)
    arch = {**ARCH, "fc": list(fc)}
    return FF_CNN(*arch.values(), act="my_hard_sig", softmax=softmax, loss="cel",
                  relaxation=Relaxation(updates, "direct")).double()


def _plain_logits(net: FF_CNN, x: torch.Tensor) -> torch.Tensor:
    """The same network written with torch.nn.functional, layer by layer."""
    act = get_activation("my_hard_sig")
    c0, c1, fc = net.synapses
    h = act(F.max_pool2d(F.conv2d(x, c0.weight, c0.bias, padding=1), 2))
    h = act(F.max_pool2d(F.conv2d(h, c1.weight, c1.bias, padding=1), 2))
    return F.linear(h.flatten(1), fc.weight, fc.bias)


def test_the_pass_is_the_plain_network_and_the_relaxation_reaches_it():
    net = _net()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    drive = net.input_drive(x)
    states = net.forward_states(drive)
    torch.testing.assert_close(net.output(states), _plain_logits(net, x), rtol=1e-12, atol=1e-12)
    for updates in ("sync", "alternate"):
        net = _net(updates=updates)  # the same weights (seeded), relaxed in either order
        start = [torch.randn_like(s) for s in states]  # any starting states
        for steps in (net.n_states, net.n_states + 3):
            relaxed = relax(net, drive, start, steps)
            for got, want in zip(relaxed, states):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
    # one synchronous step short, the top layer still depends on where the relaxation started
    short = relax(_net(updates="sync"), drive, [torch.randn_like(s) for s in states], net.n_states - 1)
    assert not torch.allclose(short[-1], states[-1])


def test_each_layer_is_the_bottom_up_part_of_p_cnn():
    """A P_CNN with the same weights, the layer above set to zero (no top-down input), drives
    every layer exactly as the feed-forward network does."""
    ff = _net(softmax=False, fc=(16, 10))
    p = P_CNN(*{**ARCH, "fc": [16, 10]}.values(), act="my_hard_sig", softmax=False, loss="cel",
              relaxation=Relaxation("sync", "direct")).double()
    p.load_state_dict(ff.state_dict())
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    drive = ff.input_drive(x)
    states = ff.forward_states(drive)
    want = ff.phi_grad_states(drive, states)
    for i in range(ff.n_states):
        alone = [s if j != i + 1 else torch.zeros_like(s) for j, s in enumerate(states)]
        got = p.phi_grad_states(drive, alone, layers={i})[i]
        torch.testing.assert_close(got, want[i], rtol=1e-12, atol=1e-12, msg=f"layer {i}")


def test_bp_gradient_is_autograd_of_the_plain_network_per_tensor():
    net = _net()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 10
    est = bp_grads(net, x, y)
    names = [n for n, _ in net.named_parameters()]
    want = torch.autograd.grad(F.cross_entropy(_plain_logits(net, x), y), list(net.parameters()))
    for name, p, g in zip(names, net.parameters(), want):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12, msg=name)
    assert est.free_steps == 1
    with pytest.raises(ValueError, match="BP trains a feed-forward network"):
        bp_grads(P_CNN(*ARCH.values(), act="my_hard_sig", softmax=True, loss="cel"), x, y)
    with pytest.raises(TypeError, match="no energy"):
        net.phi(x, est.states)


@pytest.mark.parametrize("flags, message", [
    (["--model", "FFCNN"], "--alg BP trains the feed-forward --model FFCNN"),
    (["--alg", "BP"], "--alg BP trains the feed-forward --model FFCNN"),
    (["--model", "FFCNN", "--alg", "BP", "--T1", "1"], "need --T1 >= 2, got 1"),
    (["--model", "FFCNN", "--alg", "BP", "--todo", "gducheck"], "has no energy"),
    (["--model", "FFCNN", "--alg", "BP", "--check-thm"], "has no energy"),
    (["--model", "FFCNN", "--alg", "BP", "--todo", "attack", "--load-path", "r",
      "--attack-step", "1"], "need --attack-step >= 2, got 1"),
])
def test_bad_flags_are_refused(flags, message):
    with pytest.raises(SystemExit, match=message):
        parse_settings(["--channels", "4", "8", "--device", "cpu", *flags])


def test_it_trains_on_digits_and_its_attack_runs(tmp_path, capsys):
    argv = ["--model", "FFCNN", "--alg", "BP", "--T1", "2", "--epochs", "2", "--device", "cpu",
            "--save", "--results-dir", str(tmp_path)]
    result = run(parse_settings(argv), argv)
    assert result["test_acc"] > 0.6  # two epochs of a tiny network; chance is 0.1
    run_dir = next(tmp_path.glob("digits/BP/FFCNN/*/run_1"))
    attack = ["--todo", "attack", "--load-path", str(run_dir), "--attacks", "pgd",
              "--attack-norm", "Linf", "--epsilons", "0", "0.3", "--pgd-steps", "5",
              "--attack-samples", "64", "--device", "cpu"]
    rows = run(parse_settings(attack), attack)["rows"]
    clean = [r for r in rows if r["epsilon"] == 0]
    strong = [r for r in rows if r["epsilon"] == 0.3]
    assert clean[0]["accuracy"] > 0.5 and all(r["accuracy"] < 0.2 for r in strong)
