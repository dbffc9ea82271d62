"""main_fast.py end to end: flag validation, run directories, resume and the seed's commands."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from eplcanet import runs
from eplcanet.app.settings import parse_settings
from eplcanet.app.experiment import run
from helpers import metrics_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = "--channels 4 8 --T1 6 --T2 2 --mbs 64 --device cpu".split()

SEED_RCNN = (
    "--model 'CNN' --task 'CIFAR10' --data-aug --channels 64 128 256 512 --kernels 3 3 3 3 "
    "--pools 'mmmm' --strides 1 1 1 1 --paddings 1 1 1 1 --fc 10 --optim 'sgd' "
    "--lrs 0.25 0.15 0.1 0.08 0.05 --wds 3e-4 3e-4 3e-4 3e-4 3e-4  --mmt 0.9 --lr-decay "
    "--epochs 35 --act 'my_hard_sig' --todo 'train' --T1 250 --T2 50 --mbs 128 --alg 'EP' "
    "--betas 0.0 1.0 --thirdphase --loss 'cel' --softmax --save"
)


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--lrs 0.1 0.1", "--lrs needs 3 value"),
        ("--wds 0 0 0 0", "--wds needs 3 value"),
        ("--pools m", "--pools needs one of"),
        ("--kernels 3", "--kernels needs 2 value"),
        ("--task npz", "--data-path"),
        ("--alg BPTT --T1 3 --T2 5", "T2 <= T1"),
        ("--betas 0.5 0.5", "must differ"),
        ("--random-sign", "--no-thirdphase"),
        ("--todo evaluate", "--load-path"),
        ("--same-update", "VFCNN"),
        ("--warm-start 0", "--warm-start: must be an integer >= 1"),
        ("--warm-start 3 --alg BPTT", "--warm-start applies to --alg EP"),
    ],
)
def test_inconsistent_flags_are_refused_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as err:
        parse_settings(flags.split())
    assert message in str(err.value) + capsys.readouterr().err  # a check's or argparse's


def test_unknown_choice_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--act", "relu"])
    assert "invalid choice" in capsys.readouterr().err


def test_seed_rcnn_command_parses_to_the_seed_network():
    args = parse_settings(shlex.split(SEED_RCNN))
    assert args.model.channels == (64, 128, 256, 512) and args.model.pools == "mmmm"
    assert args.estimator.thirdphase and args.model.softmax and args.model.loss == "cel"
    assert args.estimator.betas == (0.0, 1.0)
    assert len(args.optim.lrs) == 5 and args.estimator.T1 == 250 and args.estimator.T2 == 50


@pytest.mark.slow
def test_seed_rcnn_command_trains_on_real_cifar_images(tmp_path):
    src = SHARED / "cifar10-train-4k.npz"
    if not src.is_file():
        pytest.skip("shared CIFAR-10 subset not available")
    data = np.load(src)
    small = tmp_path / "cifar_small.npz"
    np.savez(small, x=data["x"][:160], y=data["y"][:160])
    argv = shlex.split(SEED_RCNN) + [
        "--task", "npz", "--data-path", str(small), "--T1", "3", "--T2", "1", "--epochs", "1",
        "--mbs", "32", "--device", "cpu", "--results-dir", str(tmp_path / "res"),
    ]
    result = run(parse_settings(argv), argv)
    assert 0.0 <= result["test_acc"] <= 1.0 and np.isfinite(result["train_loss"])
    run_dir = next((tmp_path / "res").glob("npz/EP/CNN/*/run_1"))
    hp = json.loads((run_dir / "hyperparameters.json").read_text())
    assert hp["channels"] == [64, 128, 256, 512] and "--thirdphase" in hp["command"]


@pytest.mark.slow
def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(tmp_path, monkeypatch):
    argv = TINY + ["--save", "--results-dir", str(tmp_path), "--seed", "3", "--lr-decay",
                   "--data-aug", "--epochs", "2", "--lrs", "0.2", "0.2", "0.1"]
    run(parse_settings(argv), argv)

    # Interrupt a second, identical run right after its first checkpoint is written.
    real_save = runs.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(parse_settings(argv), argv)
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    run_dirs = sorted((tmp_path / "digits/EP/CNN").glob("*/run_*"))
    assert [r.name for r in run_dirs] == ["run_1", "run_2"]
    assert len(metrics_rows(run_dirs[1])) == 1

    resumed = argv + ["--load-path", str(run_dirs[1])]
    run(parse_settings(resumed), resumed)
    uninterrupted, interrupted = metrics_rows(run_dirs[0]), metrics_rows(run_dirs[1])
    assert len(uninterrupted) == 2
    assert interrupted == uninterrupted
    for name in ("checkpoint.pt", "best.pt", "train-test_acc.png", "neural_activity.png",
                 "hyperparameters.txt"):
        assert (run_dirs[1] / name).is_file(), name
    assert torch.load(run_dirs[1] / "checkpoint.pt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_evaluate_and_gducheck_on_a_saved_run(tmp_path, capsys):
    argv = TINY + ["--act", "mysig", "--save", "--results-dir", str(tmp_path), "--epochs", "1"]
    trained = run(parse_settings(argv), argv)
    run_dir = next(tmp_path.glob("digits/EP/CNN/*/run_1"))
    # no architecture flag: the run's own (hyperparameters.json) rebuild its network and split
    ev = ["--todo", "evaluate", "--load-path", str(run_dir), "--device", "cpu"]
    assert parse_settings(ev).model.channels == (4, 8) and parse_settings(ev).estimator.T1 == 6
    assert run(parse_settings(ev), ev)["test_acc"] == pytest.approx(trained["best"]["test_acc"])
    # the check's own phase lengths and betas; the architecture flags repeat the run's own
    gdu = ["--todo", "gducheck", "--load-path", str(run_dir), "--T1", "60", "--T2", "6",
           "--betas", "0", "0.01"] + TINY[:3] + ["--device", "cpu"]
    result = run(parse_settings(gdu), gdu)
    stored = json.loads((run_dir / "gdu.json").read_text())
    assert stored == json.loads(json.dumps(result))
    assert set(stored) == {"synapses.0.weight", "synapses.0.bias", "synapses.1.weight",
                           "synapses.1.bias", "synapses.2.weight", "synapses.2.bias"}
    assert list(run_dir.glob("gdu_*.png"))


def test_missing_checkpoint_is_reported_before_work(tmp_path):
    argv = ["--todo", "evaluate", "--load-path", str(tmp_path)]
    with pytest.raises(SystemExit, match="no checkpoint.pt"):
        run(parse_settings(argv), argv)
    (tmp_path / "hyperparameters.json").write_text("{oops")
    with pytest.raises(SystemExit, match="cannot read hyperparameters.json"):
        parse_settings(argv)


def test_alternate_update_order_trains_and_is_recorded(tmp_path, capsys):
    from eplcanet.app.build import build_model

    argv = ["--updates", "alternate", "--T1", "10", "--T2", "2", "--epochs", "1", "--device",
            "cpu", "--save", "--results-dir", str(tmp_path)]
    args = parse_settings(argv)
    assert build_model(args, (1, 8, 8), 10).relaxation.update_order == "alternate"
    assert parse_settings(TINY).estimator.updates == "sync"
    result = run(args, argv)
    assert result["test_acc"] > 0.3  # one tiny epoch on the digits, far above chance (0.1)
    run_dir = next(tmp_path.glob("digits/EP/CNN/*/run_1"))
    assert json.loads((run_dir / "hyperparameters.json").read_text())["updates"] == "alternate"
    evaluate = ["--todo", "evaluate", "--load-path", str(run_dir), "--device", "cpu"]
    assert parse_settings(evaluate).estimator.updates == "alternate"  # the run's own order by default
    evaluate += ["--updates", "sync"]  # an explicit flag wins, with a warning
    run(parse_settings(evaluate), evaluate)
    assert "trained with --updates alternate" in capsys.readouterr().out
