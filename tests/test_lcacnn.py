"""LCA-RCNN (--model LCACNN): closed-form dynamics vs autograd of Phi, the feedback scale, the
Hebbian dictionary update from the nudged copy layer, the code cache, the seed's commands, one
epoch per dictionary mode on digits, and the run/ scripts."""

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eplcanet.app.settings import parse_settings
from eplcanet.energy.dynamics import autograd_step, relax, step
from eplcanet.energy.lcacnn import LCA_CNN, standardise
from eplcanet.energy.learning import Phases, ep_grads, gdu_metrics, gdu_traces
from eplcanet.app.build import build_model, seed_everything
from eplcanet.app.experiment import _load_trained, run
from eplcanet.sparse import (
    conv_whiten,
    fit_conv_whitening,
    load_dictionary,
    make_sparse_coder,
    save_dictionary,
    whitening_entry,
)
from helpers import ROOT

D = torch.float64

SEED_LCACNN = (
    "--model LCACNN --task CIFAR10 --data-aug --channels 64 256 512 --kernels 3 3 3 --pools immmm "
    "--strides 1 1 1 1 --paddings 1 1 1 1 --fc 10 --optim sgd --lrs 0.25 0.15 0.1 0.08 "
    "--wds 3e-4 3e-4 3e-4 3e-4 3e-4 --mmt 0.9 --lr-decay --epochs 120 --act my_hard_sig "
    "--todo train --T1 250 --T2 50 --mbs 128 --alg EP --betas 0.0 0.5 --scale 0.5 --thirdphase "
    "--loss cel --softmax --save --seed 2 --lca_feats 64 --lca_lambda 0.25 --lca_tau 100 "
    "--lca_eta 0.05 --lca_iters 600 --lca_stride 2 --lca_ksize 9 --dict_training "
)

# A tiny LCACNN on 8x8 digits: every end-to-end test below takes a few seconds.
TINY = shlex.split(
    "--model LCACNN --task digits --channels 6 8 --pools imm --fc 10 --T1 6 --T2 2 --mbs 128 "
    "--epochs 1 --device cpu --lca_feats 6 --lca_ksize 3 --lca_stride 1 --lca_iters 15 "
    "--lca-solver fista --lrs 0.3 0.2 0.1"
)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread


def _coder(kind="lca", feats=5, channels=2, k=3, stride=2, dtype=D):
    if kind == "lca":
        coder = make_sparse_coder("lca", out_neurons=feats, in_neurons=channels, kernel_size=k,
                                  stride=stride, lambda_=0.05, lca_iters=25, solver="fista",
                                  input_zero_mean=False, input_unit_var=False)
    else:
        coder = make_sparse_coder("mp", out_neurons=feats, in_neurons=channels, kernel_size=k,
                                  stride=stride, k=6)
    return coder.to(dtype)


def _net(kind="lca", pools="ma", softmax=True, loss="cel", act="mysig", g=1.0, mode="pretrained",
         every=1, size=10, gain=1.0):
    torch.manual_seed(0)
    coder = _coder(kind)
    fc = [7, 10] if softmax else [10]
    return LCA_CNN((2, size, size), coder, [4, 6], [3, 3], [1, 1], [1, 1], pools, fc, act=act,
                   softmax=softmax, loss=loss, scale_feedback=g, code_gain=gain,
                   dict_training=mode, dict_update_every=every).to(D)


def _states(net, batch=3):
    torch.manual_seed(1)
    return [torch.rand(batch, *s, dtype=D) for s in net.state_shapes]


def _xy(batch=3, size=10):
    torch.manual_seed(2)
    return torch.rand(batch, 2, size, size, dtype=D), torch.randint(0, 10, (batch,))


# --------------------------------------------------------------------------------- dynamics
@pytest.mark.parametrize("kind", ["lca", "mp"])
@pytest.mark.parametrize("pools, softmax, loss", [("ma", True, "cel"), ("mm", False, "mse"),
                                                  ("ia", True, "mse")])
def test_closed_form_step_equals_autograd_of_phi(kind, pools, softmax, loss):
    net = _net(kind, pools, softmax, loss)
    x, y = _xy()
    s = _states(net)
    assert s[0].shape[1:] == (5, 5, 5)  # the copy layer has the code's shape
    for beta in (0.0, 0.7):
        ours = step(net, net.input_drive(x), s, beta, y)
        ref = autograd_step(net, x, s, beta, y)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_copy_layer_drive_is_the_code_and_feedback_from_s1():
    net = _net(act="hard_sigmoid")
    x, _ = _xy()
    a = net.input_drive(x)
    torch.testing.assert_close(a, net.coder.code(standardise(x)))
    assert (a != 0).any() and (a == 0).any()  # a sparse, nonzero code
    s = _states(net)
    zero_top = [s[0], torch.zeros_like(s[1]), *s[2:]]
    # Without s1 activity, s0's input is the code alone: s0 = sigma(a).
    torch.testing.assert_close(step(net, a, zero_top)[0], a.clamp(0, 1))


def test_scale_feedback_scales_only_the_top_down_input_of_s0():
    x, y = _xy()
    s = _states(net := _net())
    a = net.input_drive(x)
    with torch.enable_grad():
        leaves = [t.clone().requires_grad_(True) for t in s]
        g_phi = torch.autograd.grad(net.phi(x, leaves, 0.4, y).sum(), leaves)
    for g in (0.0, 0.3, 2.0):
        ours = _net(g=g).phi_grad_states(a, s, 0.4, y)  # the same weights and dictionary
        # s0: a + g * (dPhi/ds0 - a); every other layer: exactly dPhi/ds.
        torch.testing.assert_close(ours[0], a + g * (g_phi[0] - a), atol=1e-10, rtol=0)
        for o, r in zip(ours[1:], g_phi[1:], strict=True):
            torch.testing.assert_close(o, r, atol=1e-10, rtol=0)
    # And it changes where the network settles.
    free = {}
    for g in (1.0, 0.0):
        free[g] = relax(_net(g=g), a, net.init_states(3), 30)
    assert not torch.allclose(free[1.0][0], free[0.0][0])
    assert not torch.allclose(free[1.0][-1], free[0.0][-1])


def test_code_gain_multiplies_the_code_in_the_drive_and_in_phi():
    x, y = _xy()
    s = _states(net := _net())
    code = net.coder.code(standardise(x))
    phi1 = net.phi(x, s, 0.4, y)
    gained = _net(gain=2.5)  # the same weights and dictionary
    torch.testing.assert_close(gained.input_drive(x), 2.5 * code, atol=1e-12, rtol=0)
    # Phi gains 1.5 <a, s0>; nothing else changes.
    extra = 1.5 * (code * s[0]).flatten(1).sum(1)
    torch.testing.assert_close(gained.phi(x, s, 0.4, y), phi1 + extra, atol=1e-10, rtol=0)
    for beta in (0.0, 0.7):  # the closed-form dynamics are still the gradient of Phi
        ours = step(gained, gained.input_drive(x), s, beta, y)
        for a, b in zip(ours, autograd_step(gained, x, s, beta, y), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="code_gain"):
        _net(gain=0.0)


def test_symmetric_ep_matches_bptt_for_the_lca_front_end():
    """GDU check: with scale_feedback = 1 the EP estimate is BPTT's gradient as beta -> 0."""
    net = _net(act="mysig")
    x, y = _xy(4)
    traces = gdu_traces(net, x, y, T1=60, T2=8, beta=1e-3)
    metrics = gdu_metrics(traces)
    assert set(metrics) == {n for n, p in net.named_parameters() if p.requires_grad}
    assert "coder.weights" not in metrics
    for name, m in metrics.items():
        assert m["ep_symmetric"]["cosine"] > 0.999, (name, m)


def test_batched_and_sequential_phases_give_the_same_update():
    x, y = _xy()
    grads = []
    for batch_phases in (True, False):
        net = _net()
        ep_grads(net, x, y, Phases(8, 3, (0.0, 0.5), thirdphase=True, batch_phases=batch_phases))
        grads.append([p.grad.clone() for p in net.parameters() if p.requires_grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------- dictionary
def _whitening(size=10):
    torch.manual_seed(3)
    images = torch.rand(6, 2, size, size, dtype=D).cumsum(-1)  # neighbouring pixels correlated
    return fit_conv_whitening(images, 3, eps=0.05, max_patches=None)


def _dictionary_step(mode, every=1, training=True, calls=1, kind="lca", gain=1.0,
                     whitening=None):
    net = _net(kind, mode=mode, every=every, gain=gain)
    if whitening is not None:
        net.set_whitening(*whitening)
    net.train(training)
    seen = []
    hook = net.on_nudged
    net.on_nudged = lambda x, s, b: (seen.append(([t.clone() for t in s], b)), hook(x, s, b))
    x, y = _xy()
    before = net.dictionary.detach().clone()
    for _ in range(calls):
        ep_grads(net, x, y, Phases(8, 3, (0.0, 0.5), thirdphase=True))
    return net, x, before, seen


@pytest.mark.parametrize("kind, gain, white", [("lca", 1.0, False), ("mp", 1.0, False),
                                               ("lca", 4.0, False), ("lca", 1.0, True)])
def test_finetune_update_is_the_hebbian_step_on_the_nudged_copy_layer(kind, gain, white):
    whitening = _whitening() if white else None
    net, x, before, seen = _dictionary_step("finetune", kind=kind, gain=gain,
                                            whitening=whitening)
    assert len(seen) == 1 and seen[0][1] == 0.5  # the +beta2 equilibrium
    s0 = seen[0][0][0] / gain  # the copy layer back on the code's scale
    expected = _coder(kind)
    with torch.no_grad():
        expected.weights.copy_(before)
    # the residual is taken against what the coder saw: the whitened image when whitening
    xs = conv_whiten(x, *whitening) if white else standardise(x)
    expected.update_dictionary(s0, xs - expected.decode(s0, output_size=xs.shape[-2:]))
    after = net.dictionary.detach()
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, expected.dictionary.detach())
    torch.testing.assert_close(after.flatten(1).norm(dim=1), torch.ones(5, dtype=D))


def test_pretrained_dictionary_is_never_updated_and_never_a_parameter_to_optimize():
    net, _, before, seen = _dictionary_step("pretrained", calls=2)
    assert len(seen) == 2
    assert torch.equal(net.dictionary, before)
    assert all(not p.requires_grad for p in net.coder.parameters())
    with pytest.raises(RuntimeError, match="fixed"):
        net.update_dictionary(*_xy()[:1], seen[0][0][0])


def test_updates_follow_dict_update_every_and_training_mode():
    net, _, before, _ = _dictionary_step("learn", training=False)
    assert torch.equal(net.dictionary, before)  # evaluation never learns
    net, _, before, _ = _dictionary_step("learn", every=2, calls=1)
    assert torch.equal(net.dictionary, before) and int(net.nudged_steps) == 1
    net, _, before, _ = _dictionary_step("learn", every=2, calls=2)
    assert not torch.equal(net.dictionary, before) and int(net.nudged_steps) == 2
    assert "nudged_steps" in net.state_dict() and "coder.weights" in net.state_dict()


def test_whitening_sets_what_the_coder_sees_and_survives_a_checkpoint():
    net = _net()
    x, _ = _xy()
    plain = net.encode(x)
    net.fill_code_cache([x])
    kernel, bias = _whitening()
    net.set_whitening(kernel, bias)
    assert net.code_cache is None  # codes of unwhitened images are dropped
    white = net.encode(x)
    torch.testing.assert_close(white, net.coder.code(conv_whiten(x, kernel, bias)))
    assert not torch.allclose(white, plain)
    torch.testing.assert_close(net.coder_input(x), conv_whiten(x, kernel, bias))
    fresh = _net()  # built as an evaluated run is, without the dictionary file
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh.encode(x), white)
    with pytest.raises(ValueError, match="2-channel images needs a kernel"):
        net.set_whitening(kernel[:1, :1], bias[:1])
    # the one check (sparse.check_whitening) behind the model, the function and the file
    even = torch.zeros(2, 2, 2, 2)
    for bad_kernel, bad_bias, message in [(even, bias, "k odd"), (kernel, bias[:1], "a bias"),
                                          (kernel * float("nan"), bias, "NaN")]:
        with pytest.raises(ValueError, match=message):
            net.set_whitening(bad_kernel, bad_bias)
        with pytest.raises(ValueError, match=message):
            conv_whiten(x, bad_kernel, bad_bias)
    torch.testing.assert_close(net.coder_input(x), conv_whiten(x, kernel, bias))  # unchanged


# --------------------------------------------------------------------------------- code cache
@pytest.mark.parametrize("kind", ["lca", "mp"])
def test_code_cache_returns_the_recomputed_codes_and_never_stale_ones(kind):
    net = _net(kind)
    x, _ = _xy(6)
    fresh = net.encode(x)
    net.fill_code_cache([x[:4], x[2:]])  # overlapping batches: each image coded once
    assert len(net.code_cache) == 6
    torch.testing.assert_close(net.encode(x[[5, 0, 3]]), fresh[[5, 0, 3]], atol=1e-6, rtol=0)
    calls = []
    real = net._code
    net._code = lambda t: (calls.append(t.shape[0]), real(t))[1]
    net.encode(x)
    assert calls == []  # served from the cache
    other, _ = _xy(2, 10)
    net.encode(other + 1.0)
    assert calls == [2]  # unknown images are coded
    # A changed dictionary invalidates every cached code.
    with torch.no_grad():
        net.coder.weights.copy_(net.coder.weights.flip(0))
    torch.testing.assert_close(net.encode(x), real(x))
    assert calls == [2, 6]


def test_code_cache_stats_match_numpy():
    net = _net()
    x, _ = _xy(6)
    net.fill_code_cache([x[:4], x[4:]])
    codes = np.abs(net.coder.code(standardise(x)).numpy())
    nonzero = codes[codes > 0]
    stats = net.code_cache.stats()
    assert stats["nonzero"] == pytest.approx(nonzero.size / codes.size, rel=1e-12)
    assert 0 < stats["nonzero"] < 1
    assert stats["median"] == pytest.approx(np.quantile(nonzero, 0.5, method="lower"), rel=1e-12)
    assert stats["p99"] == pytest.approx(np.quantile(nonzero, 0.99), rel=1e-12)
    sub = net.code_cache.stats(sample=2)  # codes 0, 3: the percentiles of those two only
    keep = np.abs(np.stack([codes[0], codes[3]]))
    assert sub["median"] == pytest.approx(np.quantile(keep[keep > 0], 0.5, method="lower"))
    assert sub["nonzero"] == stats["nonzero"]  # always over every code


def test_code_cache_needs_a_fixed_dictionary():
    with pytest.raises(ValueError, match="pretrained"):
        _net(mode="finetune").enable_code_cache()


# --------------------------------------------------------------------------------- CLI
@pytest.fixture
def seed_dictionary(tmp_path, monkeypatch):
    """The seed's commands load images/lca_dictionary_cifar10.pt, relative to the working dir."""
    monkeypatch.chdir(tmp_path)
    w = torch.randn(64, 3, 9, 9)
    save_dictionary("images/lca_dictionary_cifar10.pt", w / w.flatten(1).norm(dim=1)[:, None, None,
                                                                                   None], {})
    return tmp_path


@pytest.mark.parametrize("mode", ["pretrained", "finetune", "learn"])
def test_seed_lcacnn_commands_parse_as_written(mode, seed_dictionary, capsys):
    args = parse_settings(shlex.split(SEED_LCACNN + mode))
    assert args.model.model == "LCACNN" and args.frontend.dict_training == mode
    m, c = args.model, args.coder
    assert m.pools == "mmm" and m.strides == (1, 1, 1) and m.paddings == (1, 1, 1)
    assert args.optim.lrs == (0.25, 0.15, 0.1, 0.08) and len(args.optim.wds) == 4
    assert (c.lca_feats, c.lca_iters, c.lca_stride, c.lca_ksize) == (64, 600, 2, 9)
    assert c.lca_lambda == 0.25 and c.lca_tau == 100 and c.lca_eta == 0.05
    out = capsys.readouterr().out
    assert "ignores the extra trailing entries" in out
    for ignored in ("--pools 'immmm': 'm'", "--strides 1", "--paddings 1", "--wds 0.0003"):
        assert ignored in out
    # The network the seed meant: code 64 x 16 x 16, then 64 -> 256 -> 512 conv, fc 10.
    net = build_model(args, (3, 32, 32), 10)
    assert [tuple(s) for s in net.state_shapes] == [(64, 16, 16), (64, 8, 8), (256, 4, 4),
                                                    (512, 2, 2)]


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--pools mmm --channels 4 8", "must be 'i'"),
        ("--pools i --channels 4 8", "--pools needs one of"),
        ("--dict_training finetune --cache-codes", "--cache-codes needs a fixed dictionary"),
        ("--dict_training learn --cache-codes", "--cache-codes needs a fixed dictionary"),
        ("--data-aug --cache-codes --lca-dict {dict}", "--data-aug"),
        ("--dict_training learn --alg BPTT", "--alg EP"),
        ("--lca-dict {tmp}/missing.pt", "cifar_dictlearning.py"),
        ("--lca-dict {dict} --lca_feats 32", "shape (4, 1, 3, 3)"),
        ("--lca-dict {dict} --lca_ksize 5", "--lca_ksize 5"),
        ("--lca_ksize 4", "odd"),
        ("--lca_stride 0", "--lca_stride: must be an integer >= 1"),
        ("--dict_training learn --dict-update-every 0", "--dict-update-every: must be an integer"),
        ("--lca_tau 0.5", "--lca_tau: must be a finite number >= 1"),
        ("--lca_lambda inf", "--lca_lambda: must be a finite number >= 0"),
        ("--code-gain 0", "--code-gain: must be a finite number > 0"),
        ("--code-gain nan", "--code-gain: must be a finite number > 0"),
    ],
)
def test_bad_lcacnn_flags_are_refused_before_any_work(flags, message, tmp_path, capsys):
    path = tmp_path / "d.pt"
    w = torch.randn(4, 1, 3, 3)
    save_dictionary(path, w, {})
    argv = ["--model", "LCACNN", "--lca_feats", "4", "--lca_ksize", "3", *shlex.split(
        flags.format(dict=path, tmp=tmp_path))]
    with pytest.raises(SystemExit) as err:
        parse_settings(argv)
    assert message in str(err.value) + capsys.readouterr().err  # a check's or argparse's


def test_lca_flags_are_refused_for_other_models():
    with pytest.raises(SystemExit, match="--dict_training, --cache-codes only apply"):
        parse_settings(["--model", "CNN", "--dict_training", "learn", "--cache-codes"])
    with pytest.raises(SystemExit, match="--code-gain only applies"):
        parse_settings(["--model", "CNN", "--code-gain", "4"])
    assert parse_settings(["--model", "CNN"]).model.pools == "mm"


def test_pools_with_one_character_per_conv_layer_are_the_conv_pools():
    args = parse_settings(["--model", "LCACNN", "--dict_training", "learn", "--channels", "4", "8",
                       "--pools", "ma"])
    assert args.model.pools == "ma"


# --------------------------------------------------------------------------------- end to end
def _digits_dictionary(path, feats=6, k=3):
    torch.manual_seed(5)
    w = torch.randn(feats, 1, k, k)
    return save_dictionary(path, w / w.flatten(1).norm(dim=1)[:, None, None, None], {"stride": 1})


def _train(tmp_path, flags):
    argv = TINY + ["--save", "--results-dir", str(tmp_path / "res")] + flags
    result = run(parse_settings(argv), argv)
    run_dir = next((tmp_path / "res").glob("digits/EP/LCACNN/*/run_*"))
    return result, run_dir, argv


def _saved_dictionaries(run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]["coder.weights"]
    best = torch.load(run_dir / "best.pt", weights_only=True)["coder.weights"]
    return ckpt, best, load_dictionary(run_dir / "dictionary.pt")[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pretrained", "finetune", "learn"])
def test_one_epoch_per_dictionary_mode_on_digits(mode, tmp_path):
    file = _digits_dictionary(tmp_path / "digits_dict.pt")
    flags = ["--dict_training", mode, "--lca-dict", str(file)]
    result, run_dir, argv = _train(tmp_path, flags)
    assert 0.0 <= result["test_acc"] <= 1.0 and result["train_loss"] == result["train_loss"]
    for name in ("checkpoint.pt", "best.pt", "dictionary.pt", "dictionary.png", "metrics.csv",
                 "train-test_acc.png", "neural_activity.png", "hyperparameters.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "dictionary_epoch001.png").is_file() == (mode != "pretrained")
    saved = _saved_dictionaries(run_dir)
    if mode == "learn":
        seed_everything(0)
        start = build_model(parse_settings(argv), (1, 8, 8), 10).dictionary.detach()
    else:
        start = load_dictionary(file)[0]
    for w in saved:
        if mode == "pretrained":
            assert torch.equal(w, start)  # bit-identical
        else:
            assert not torch.allclose(w, start, atol=1e-4)
            torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(6))
    hp = json.loads((run_dir / "hyperparameters.json").read_text())
    assert hp["dict_training"] == mode and hp["model"] == "LCACNN"


@pytest.mark.slow
def test_mp_frontend_trains_and_learns_its_dictionary(tmp_path):
    result, run_dir, _ = _train(tmp_path, ["--sparse-coder", "mp", "--mp-k", "8",
                                           "--dict_training", "learn", "--epochs", "2"])
    assert result["epoch"] == 2 and result["train_loss"] == result["train_loss"]
    ckpt, _, file = _saved_dictionaries(run_dir)
    assert torch.equal(ckpt, file)
    assert (run_dir / "dictionary_epoch002.png").is_file()


@pytest.mark.slow
def test_cached_codes_give_the_run_of_recomputed_codes(tmp_path):
    file = _digits_dictionary(tmp_path / "digits_dict.pt")
    flags = ["--lca-dict", str(file), "--epochs", "2"]
    plain, _, _ = _train(tmp_path / "plain", flags)
    cached, _, _ = _train(tmp_path / "cached", flags + ["--cache-codes"])
    for key in ("train_loss", "train_acc", "val_acc", "test_acc"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-6), key


def test_evaluating_a_cached_run_codes_the_test_split_only(tmp_path, capsys):
    file = _digits_dictionary(tmp_path / "digits_dict.pt")
    trained, run_dir, argv = _train(tmp_path, ["--lca-dict", str(file), "--cache-codes"])
    out = capsys.readouterr().out
    assert "coding the 1797 images of the train, val, test split(s) once" in out
    assert "cached the codes of 1797 images" in out  # train, val, test
    ev = argv + ["--todo", "evaluate", "--load-path", str(run_dir)]
    cached = run(parse_settings(ev), ev)
    assert "cached the codes of 359 images" in capsys.readouterr().out  # the test split
    live = [a for a in ev if a != "--cache-codes"]
    assert run(parse_settings(live), live)["test_acc"] == cached["test_acc"]
    assert cached["test_acc"] == pytest.approx(trained["test_acc"], abs=1e-6)


def test_a_whitened_dictionary_file_whitens_training_its_saved_dictionary_and_evaluation(
        tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images[:200, None] / 16.0)
    kernel, bias = fit_conv_whitening(digits, 3, eps=0.1, max_patches=None)
    file = _digits_dictionary(tmp_path / "digits_dict.pt")
    weight, config = load_dictionary(file)
    save_dictionary(file, weight, {**config, "whitening": whitening_entry(kernel, bias)})
    trained, run_dir, argv = _train(tmp_path, ["--lca-dict", str(file), "--cache-codes"])
    assert "whitened images (3x3 ZCA)" in capsys.readouterr().out
    _, saved = load_dictionary(run_dir / "dictionary.pt")  # the run's file whitens the same way
    assert saved["whitening"]["kernel"] == kernel.tolist() and "ZCA" in saved["preprocessing"]
    ev = argv + ["--todo", "evaluate", "--load-path", str(run_dir), "--lca-dict", "nowhere.pt"]
    assert run(parse_settings(ev), ev)["test_acc"] == pytest.approx(trained["test_acc"], abs=1e-6)
    # whitening matters: the same dictionary without it is another model
    save_dictionary(file, weight, config)
    plain = _train(tmp_path / "plain", ["--lca-dict", str(file)])[0]
    assert plain["train_loss"] != trained["train_loss"]


@pytest.mark.slow
def test_evaluating_a_finetuned_run_uses_its_learned_dictionary(tmp_path):
    file = _digits_dictionary(tmp_path / "digits_dict.pt")
    _, run_dir, argv = _train(tmp_path, ["--dict_training", "finetune", "--lca-dict", str(file)])
    learned = _saved_dictionaries(run_dir)[0]
    ev = argv + ["--todo", "evaluate", "--load-path", str(run_dir), "--lca-dict", "nowhere.pt"]
    args = parse_settings(ev)  # no dictionary file is needed: the run's own is loaded
    run(args, ev)
    net = build_model(args, (1, 8, 8), 10)
    _load_trained(net, run_dir, "cpu")
    assert torch.equal(net.dictionary, learned)


# --------------------------------------------------------------------------------- run/ scripts
SCRIPTS = sorted((ROOT / "run").glob("*.sh"))
QUICK = [p for p in SCRIPTS if p.name.endswith("_quick.sh")]

# A stand-in "python" that records every call (fields separated by \x1f, calls by \x1e).
_FAKE_PYTHON = """#!/bin/sh
for a in "$@"; do printf '%s\\037' "$a"; done >> "$LOG"
printf '\\036' >> "$LOG"
"""


def _validate_call(argv: list[str]) -> None:
    """Check one recorded call's flags as the real entry point would, without running it; a
    dictionary-learning call writes a dictionary of its flags' shape where it would write one."""
    script, flags = Path(argv[0]).name, argv[1:]
    if script == "main_fast.py":
        parse_settings(flags)
    elif script == "cifar_dictlearning.py":
        from eplcanet.app.settings import parse_dictlearning

        args = parse_dictlearning(flags)
        channels = 1 if args.data.task in ("digits", "MNIST", "FashionMNIST") else 3
        c = args.coder
        w = torch.randn(c.lca_feats, channels, c.lca_ksize, c.lca_ksize)
        save_dictionary(args.run.out, w / w.flatten(1).norm(dim=1)[:, None, None, None], {})
    else:
        raise AssertionError(f"unexpected python call {argv}")


def test_every_run_script_is_valid_bash():
    assert {"rcnn_cifar10.sh", "lcacnn_pretrained.sh", "lcacnn_finetune.sh", "lcacnn_learn.sh",
            "dictlearning_cifar10.sh"} <= {p.name for p in SCRIPTS}
    assert len(QUICK) >= 5
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", QUICK + [p for p in SCRIPTS if p.name in (
    "rcnn_cifar10.sh", "lcacnn_pretrained.sh", "lcacnn_finetune.sh", "lcacnn_learn.sh",
    "dictlearning_cifar10.sh")], ids=lambda p: p.name)
def test_run_script_commands_pass_flag_validation(script, tmp_path):
    """Each script runs with a stand-in python that records its calls; every call then passes
    the entry point's flag validation (in order, so a learned dictionary exists when used)."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "LOG": str(log),
           "DEVICE": "cpu", "DATA_DIR": str(tmp_path / "data"), "OUT": str(tmp_path / "out"),
           "LCA_DICT": str(tmp_path / "dict.pt")}
    runs = [env]
    if script.name.endswith("_quick.sh"):  # also on an .npz file (e.g. the shared CIFAR subset)
        (tmp_path / "images.npz").touch()
        runs.append({**env, "DATA_PATH": str(tmp_path / "images.npz"),
                     "LCA_DICT": str(tmp_path / "dict_npz.pt")})
    for run_env in runs:
        done = subprocess.run(["bash", str(script)], env=run_env, capture_output=True,
                              text=True, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    calls = [c.split("\x1f")[:-1] for c in log.read_text().split("\x1e")[:-1]]
    assert len(calls) >= len(runs)
    if script.name in ("lcacnn_pretrained.sh", "lcacnn_finetune.sh"):
        _validate_call(["cifar_dictlearning.py", "--task", "CIFAR10", "--out", str(tmp_path /
                                                                                    "dict.pt")])
    for argv in calls:
        assert argv[argv.index("--device") + 1] == "cpu"
        _validate_call(argv)


def _tiny_frontend_study(tmp_path, n_images, **env):
    """run/lca_frontend_study.sh on n_images random colour images with atoms, networks and
    epochs small enough for a test: returns (run it with extra environment, its OUT)."""
    rng = np.random.default_rng(n_images)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8),
             y=np.arange(n_images) % 10)
    out = tmp_path / "study"
    atoms = "--lca_feats 4 --lca_ksize 3 --lca_iters 5"
    env = {**os.environ, "DATA_PATH": str(data), "OUT": str(out), "LCA_FLAGS": atoms,
           "DICT_FLAGS": f"{atoms} --epochs 1 --n-eval 5 --eval-iters 5", **env}
    study = ["bash", str(ROOT / "run" / "lca_frontend_study.sh"), "--epochs", "1", "--T1", "2",
             "--T2", "1", "--channels", "2", "4"]

    def run(**more):
        return subprocess.run(study, env={**env, **more}, capture_output=True, text=True,
                              check=False)
    return run, out


@pytest.mark.slow
def test_lca_frontend_study_learns_a_dictionary_per_seed_and_reports_both_models(tmp_path):
    """run/lca_frontend_study.sh on 100 random colour images: one dictionary per seed, each
    seed's LCA-RCNN loads its own, and the report holds plain EP and the LCA-RCNN with both
    seeds each (the per-seed dictionary does not split the configuration)."""
    run, out = _tiny_frontend_study(tmp_path, 100, SEEDS="3 4")
    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    dicts = [load_dictionary(out / "dictionaries" / f"seed_{s}.pt") for s in (3, 4)]
    assert dicts[0][0].shape == (4, 3, 3, 3)
    assert dicts[0][1]["seed"] == 3 and dicts[1][1]["seed"] == 4
    assert not torch.equal(dicts[0][0], dicts[1][0])  # each learned on its own split
    for seed in (3, 4):
        (hp,) = (out / "lca" / f"seed_{seed}").rglob("hyperparameters.json")
        assert json.loads(hp.read_text())["lca_dict"] == str(out / "dictionaries" /
                                                             f"seed_{seed}.pt")
    summary = pd.read_csv(out / "report" / "summary.csv")
    models = sorted(c.split("model=")[1].split()[0] for c in set(summary["config"]))
    assert models == ["CNN", "LCACNN"]  # two configurations, not one per seed
    assert (summary["n"] == 2).all()


@pytest.mark.slow
def test_lca_frontend_study_trains_finetune_and_learn_on_live_codes(tmp_path):
    """DICT_TRAINING=finetune: the study's LCA-RCNN fine-tunes its per-seed dictionary on live
    codes (a code cache would freeze the codes the dictionary is learning); learn starts from
    random atoms and learns no dictionary file; an unknown mode is refused before any work."""
    run, out = _tiny_frontend_study(tmp_path, 60, SEEDS="2", MODELS="lca")
    bad = run(DICT_TRAINING="frozen")
    assert bad.returncode == 2 and "DICT_TRAINING: unknown mode frozen" in bad.stderr
    assert not out.exists()
    done = run(DICT_TRAINING="finetune")
    assert done.returncode == 0, done.stderr[-3000:]
    (hp,) = (out / "lca" / "seed_2").rglob("hyperparameters.json")
    hp = json.loads(hp.read_text())
    assert hp["dict_training"] == "finetune" and hp["cache_codes"] is False
    (ckpt,) = (out / "lca" / "seed_2").rglob("checkpoint.pt")
    trained = torch.load(ckpt, weights_only=True)["model"]["coder.weights"]
    start = load_dictionary(out / "dictionaries" / "seed_2.pt")[0]
    assert trained.shape == start.shape and not torch.allclose(trained, start)
    learn = run(DICT_TRAINING="learn", OUT=str(tmp_path / "learn"))
    assert learn.returncode == 0, learn.stderr[-3000:]
    assert not (tmp_path / "learn" / "dictionaries").exists()
    (hp,) = (tmp_path / "learn" / "lca" / "seed_2").rglob("hyperparameters.json")
    hp = json.loads(hp.read_text())
    assert hp["dict_training"] == "learn" and hp["cache_codes"] is False
    assert "seed_" not in hp["lca_dict"]  # no per-seed file named
