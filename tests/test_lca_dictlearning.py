"""cifar_dictlearning.py: flag validation and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from eplcanet.app import dictlearning as script
from eplcanet.app.entry import EXIT_USAGE, run_command
from eplcanet.sparse import load_dictionary
from helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread

_SCRIPT = ROOT / "cifar_dictlearning.py"

TINY = ["--n-eval", "8", "--epochs", "1", "--mbs", "8", "--lca_feats", "8", "--lca_iters", "10"]
TINY += ["--eval-iters", "10", "--lca_ksize", "5"]


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--task", "imagenet"], "--task: invalid choice: .imagenet."),
        (["--task", "npz"], "needs --data-path"),
        (["--task", "npz", "--data-path", "missing.npz"], "no such file"),
        (["--data-path", "x.npz"], "only with --task npz"),
        (["--lca_ksize", "8"], "odd"),
        (["--lca_stride", "11"], "lca_stride"),
        (["--n-eval", "0"], "--n-eval: must be an integer >= 1"),
        (["--lca_eta", "0"], "--lca_eta: must be a finite number > 0"),
        (["--lca_lambda", "nan"], "--lca_lambda: must be a finite number >= 0"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
         "--device cpu"),
        (["--lambda-schedule", "cosine"], "linear:START:EPOCHS"),
        (["--lambda-schedule", "linear:0.1:0"], "EPOCHS > 0"),
        (["--device", "tpu"], "device"),
        (["--out", str(_SCRIPT)], "exists .* --overwrite"),
        (["--whiten", "4"], "--whiten 4: the whitening size must be odd"),
        (["--whiten-eps", "0"], "--whiten-eps: must be a finite number > 0"),
    ],
)
def test_bad_flags_are_rejected_before_any_work(flags, match, tmp_path, capsys):
    argv = ["--results-dir", str(tmp_path), *flags]
    assert run_command(lambda: script.main(argv), argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and re.search(match, err), err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_tiny_run_writes_dictionary_pictures_and_curves(tmp_path):
    out = tmp_path / "dicts" / "mine.pt"
    flags = ["--results-dir", str(tmp_path / "res"), "--n-images", "16", "--out", str(out)]
    summary = script.main([*flags, *TINY, "--lambda-schedule", "linear:0.05:1"])
    run_dir = next((tmp_path / "res" / "patches" / "dictlearning").glob("*/*/run_1"))
    names = {p.name for p in run_dir.iterdir()}
    expected = {"feature_grid.png", "reconstructions.png", "curves.csv", "curves.png"}
    assert expected | {"summary.json", "hyperparameters.json"} <= names
    weight, config = load_dictionary(out)
    assert weight.shape == (8, 3, 5, 5) and config["kernel_size"] == 5
    torch.testing.assert_close(weight.flatten(1).norm(dim=1), torch.ones(8))
    with open(run_dir / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2  # 16 images / minibatches of 8
    lambdas = [float(r["lambda"]) for r in rows]
    assert lambdas[0] == pytest.approx(0.05) and lambdas[0] < lambdas[1] <= 0.25
    assert rows[-1]["eval_r2"] != "" and rows[0]["eval_r2"] == ""
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["heldout_r2"] == pytest.approx(summary["heldout_r2"])
    assert 0.0 < saved["heldout_frac_zero"] < 1.0


def test_npz_task_loads_the_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=rng.integers(0, 256, (60, 12, 12, 3), dtype=np.uint8), y=np.arange(60) % 3)
    flags = ["--results-dir", str(tmp_path / "res"), "--task", "npz", "--data-path", str(path)]
    summary = script.main([*flags, *TINY, "--n-images", "8"])
    weight, config = load_dictionary(summary["dictionary"])
    assert weight.shape == (8, 3, 5, 5) and config["task"] == "npz"


def test_whitened_learning_saves_the_whitening_of_the_training_images(tmp_path):
    from eplcanet.app.settings import parse_dictlearning
    from eplcanet.sparse import fit_conv_whitening, whitening_from_config

    argv = ["--results-dir", str(tmp_path / "res"), *TINY, "--n-images", "16", "--whiten", "3",
            "--whiten-eps", "0.2", "--seed", "4"]
    summary = script.main(argv)
    _, config = load_dictionary(summary["dictionary"])
    train, _ = script.load_images(parse_dictlearning(argv))
    kernel, bias = fit_conv_whitening(train, 3, 0.2, generator=torch.Generator().manual_seed(4))
    got_kernel, got_bias = whitening_from_config(config, 3)
    torch.testing.assert_close(got_kernel, kernel)
    torch.testing.assert_close(got_bias, bias)
    assert config["whitening"]["eps"] == 0.2 and "3x3 ZCA whitening" in config["preprocessing"]
