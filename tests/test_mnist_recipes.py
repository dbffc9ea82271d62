"""run/mnist_mlp_ep.sh, run/mnist_mlp_cep.sh and run/mnist_cnn_ep.sh: each trains with the
reference's recipe flags (Laborieux et al. 2021's README and check scripts, restated here), with
DATA_PATH / EPOCHS / SEED(S) / OUT from the environment and the flags given after the recipe's
winning over them. Each runs for real, shrunk by those flags, on 100 random 28x28 images."""

import json
import os
import subprocess

import numpy as np
import pytest

from helpers import ROOT

# script: (the reference's settings, the flags that shrink the run, what they override)
RECIPES = {
    "mnist_mlp_ep.sh": (
        {"model": "MLP", "act": "mysig", "loss": "mse", "softmax": False, "alg": "EP",
         "thirdphase": False, "betas": [0.0, 0.1], "T2": 10, "optim": "sgd", "mmt": 0.0,
         "lrs": [0.08, 0.04], "mbs": 50},
        ["--archi", "784", "8", "10", "--T1", "3"], {"archi": [784, 8, 10], "T1": 3}),
    "mnist_mlp_cep.sh": (
        {"model": "MLP", "act": "mysig", "loss": "mse", "softmax": False, "alg": "CEP",
         "thirdphase": False, "betas": [0.0, 0.2], "T1": 40, "optim": "sgd", "mmt": 0.0,
         "lrs": [0.0056, 0.0028], "mbs": 20},
        ["--archi", "784", "8", "10", "--T2", "2"], {"archi": [784, 8, 10], "T2": 2}),
    "mnist_cnn_ep.sh": (
        {"model": "CNN", "kernels": [5, 5], "strides": [1, 1],
         "paddings": [0, 0], "pools": "mm", "fc": [10], "act": "hard_sigmoid", "loss": "mse",
         "softmax": False, "alg": "EP", "thirdphase": False, "random_sign": False,
         "betas": [0.0, 0.4], "T2": 10, "optim": "adam", "lrs": [5e-5, 1e-5, 8e-6], "mbs": 100},
        ["--channels", "2", "3", "--T1", "3"], {"channels": [2, 3], "T1": 3}),
}


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
             y=np.repeat(np.arange(10), 10))
    return path


@pytest.mark.parametrize("script", sorted(RECIPES))
def test_mnist_recipe_script_trains_with_the_reference_flags(script, tiny_mnist, tmp_path):
    recipe, shrink, overridden = RECIPES[script]
    out = tmp_path / "out"
    env = {**os.environ, "DATA_PATH": str(tiny_mnist), "SEED": "5", "OUT": str(out),
           "OMP_NUM_THREADS": "1"}
    if script == "mnist_mlp_cep.sh":  # the default of 100 epochs, overridden by a flag instead
        flags = ["--epochs", "1"]
    else:
        env["EPOCHS"], flags = "1", []
    done = subprocess.run(["bash", str(ROOT / "run" / script), "--device", "cpu", *shrink, *flags],
                          env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (record,) = out.glob("**/hyperparameters.json")  # one run, below OUT
    hp = json.loads(record.read_text())
    assert {k: hp[k] for k in recipe} == recipe
    assert {k: hp[k] for k in overridden} == overridden
    assert hp["task"] == "npz" and hp["data_path"] == str(tiny_mnist)
    assert hp["seed"] == 5 and hp["epochs"] == 1 and hp["device"] == "cpu"
    rows = (record.parent / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")  # the header and one trained epoch
    assert record.is_relative_to(out / "seed_5")  # a folder per seed, then the report over them
    assert (out / "report" / "summary.csv").is_file()
