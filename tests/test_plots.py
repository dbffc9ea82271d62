"""Tests of eplcanet.app.plots: figures are written as PNGs, bad input is refused clearly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from eplcanet.app.plots import plot_curves, plot_gdu, plot_neural_activity
from eplcanet.runs import MetricsLog
from helpers import is_png

def _rows(n: int = 5) -> list[dict]:
    keys = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "seconds")
    return [
        dict(zip(keys, (e, 1 / e, 0.5 + e / 20, 0.4 + e / 20, None if e % 2 else 0.5, 1.0)))
        for e in range(1, n + 1)
    ]


def test_importing_and_plotting_never_loads_pyplot(tmp_path):
    # pyplot would select a (possibly GUI) backend as a global side effect.
    code = (
        "import sys, torch; from eplcanet.app.plots import plot_neural_activity; "
        f"plot_neural_activity([torch.rand(3)], {str(tmp_path)!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert is_png(tmp_path / "neural_activity.png")


def test_curves_from_rows_csv_and_run_dir(tmp_path):
    assert plot_curves(_rows(), tmp_path / "a.png") == tmp_path / "a.png"
    assert is_png(tmp_path / "a.png")
    log = MetricsLog(tmp_path)
    for row in _rows(3):
        log.append(**row)
    assert is_png(plot_curves(tmp_path / "metrics.csv", tmp_path / "nested" / "b.png"))
    assert plot_curves(str(tmp_path), tmp_path) == tmp_path / "train-test_acc.png"
    assert is_png(tmp_path / "train-test_acc.png")


def test_curves_reject_empty_or_bad_metrics(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        plot_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="epoch"):
        plot_curves([{"train_acc": 0.5}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no train_loss"):
        plot_curves([{"epoch": 1, "seconds": 2.0}], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        plot_curves(tmp_path / "metrics.csv", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_neural_activity(tmp_path):
    states = [torch.rand(8, 4, 6, 6), torch.rand(8, 16, requires_grad=True), torch.rand(8, 10)]
    path = plot_neural_activity(states, tmp_path, names=["conv1", "fc1", "out"])
    assert path == tmp_path / "neural_activity.png" and is_png(path)
    with pytest.raises(ValueError, match="names has 1 entries but states has 3"):
        plot_neural_activity(states, tmp_path / "n.png", names=["a"])
    with pytest.raises(ValueError, match="non-empty"):
        plot_neural_activity([], tmp_path / "n.png")
    with pytest.raises(ValueError, match=r"states\[1\] is empty"):
        plot_neural_activity([torch.rand(2), torch.zeros(0)], tmp_path / "n.png")
    with pytest.raises(TypeError, match=r"states\[0\]"):
        plot_neural_activity([np.zeros(3)], tmp_path / "n.png")


def test_gdu_one_png_per_parameter(tmp_path):
    k, n = 20, 5
    t = np.linspace(0, 1, k)[:, None]
    traces = {
        "synapses.0.weight": {
            "bptt": np.sin(t + np.arange(n)),
            "ep_onesided": np.sin(t + np.arange(n)) + 0.05,
            "ep_symmetric": torch.from_numpy(np.sin(t + np.arange(n))),
        },
        "synapses.1.bias": {"bptt": np.cos(t[:, 0]), "ep_symmetric": np.cos(t[:, 0]) * 1.01},
    }
    paths = plot_gdu(traces, tmp_path / "gdu")
    assert [p.name for p in paths] == ["gdu_synapses_0_weight.png", "gdu_synapses_1_bias.png"]
    assert all(is_png(p) for p in paths)


@pytest.mark.parametrize(
    "traces, match",
    [
        ({}, "non-empty"),
        ({"w": {}}, r"traces\['w'\] must be a non-empty dict"),
        ({"w": {"bptt": np.zeros((4, 2)), "ep": np.zeros((4, 2))}}, "unknown estimator"),
        ({"w": {"bptt": np.zeros((4, 2)), "ep_symmetric": np.zeros((5, 2))}}, "one shape"),
        ({"w": {"bptt": np.zeros((4, 2, 2))}}, r"\(K, n_components\)"),
        ({"a.b": {"bptt": np.zeros(3)}, "a_b": {"bptt": np.zeros(3)}}, "both map to"),
    ],
)
def test_gdu_rejects_bad_traces(tmp_path, traces, match):
    with pytest.raises(ValueError, match=match):
        plot_gdu(traces, tmp_path)
    assert list(tmp_path.iterdir()) == []
