"""Tests of eplcanet.app.report: grouping of runs into configurations and the per-seed statistics,
checked against a hand computation with numpy and Student-t quantiles from a table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eplcanet.app import report
from eplcanet.corruptions import CORRUPTION_FIELDS
from eplcanet.runs import write_csv
from eplcanet.runs import MetricsLog, save_hyperparameters
from helpers import ROOT, hand_stats

BASE = {"model": "CNN", "task": "npz", "data_path": "/data/a/mnist.npz", "T1": 12,
        "lrs": [0.1, 0.05], "epochs": 3, "device": "cpu"}


def make_run(root: Path, name: str, rows: list[dict], **hparams) -> Path:
    """A run directory as main_fast.py --save writes it: hyperparameters and metrics.csv."""
    run = root / name
    run.mkdir(parents=True)
    hp = {**BASE, "results_dir": str(root), **hparams}
    save_hyperparameters(run, hp, ["main_fast.py", "--seed", str(hp.get("seed"))])
    log = MetricsLog(run)
    for row in rows:
        log.append(**row)
    return run


def curve(val: list[float], test: list[float]) -> list[dict]:
    return [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "train_acc": v, "val_acc": v,
             "test_acc": t, "seconds": 1.0} for e, (v, t) in enumerate(zip(val, test))]


# Two learning rates, 3 and 4 seeds; devices and result folders differ (bookkeeping).
VALS = {
    ("0.1", 0): ([0.90, 0.95, 0.93], [0.89, 0.94, 0.95]),
    ("0.1", 1): ([0.91, 0.92, 0.96], [0.90, 0.93, 0.94]),
    ("0.1", 2): ([0.88, 0.97, 0.90], [0.87, 0.96, 0.91]),
    ("0.3", 0): ([0.70, 0.80, 0.85], [0.71, 0.79, 0.83]),
    ("0.3", 1): ([0.75, 0.82, 0.81], [0.74, 0.80, 0.84]),
    ("0.3", 2): ([0.60, 0.78, 0.86], [0.61, 0.77, 0.88]),
    ("0.3", 5): ([0.72, 0.84, 0.83], [0.70, 0.85, 0.82]),
}


@pytest.fixture
def study_dir(tmp_path) -> Path:
    for i, ((lr, seed), (val, test)) in enumerate(VALS.items()):
        make_run(tmp_path / f"study_{lr}", f"run_{seed}", curve(val, test), seed=seed,
                 lrs=[float(lr), 0.05], device="cpu" if i % 2 else "cuda:0")
    return tmp_path


def test_groups_by_differing_flags_only(study_dir):
    study = report.load_study([study_dir])
    assert study.keys == ["lrs"]  # device, results_dir, data_path, seed never split a config
    assert sorted(study.table["config"].unique()) == ["lrs=[0.1,0.05]", "lrs=[0.3,0.05]"]
    counts = study.table.groupby("config")["seed"].apply(sorted).to_dict()
    assert counts == {"lrs=[0.1,0.05]": [0, 1, 2], "lrs=[0.3,0.05]": [0, 1, 2, 5]}
    # One configuration: every run in one group, labelled so.
    one = report.load_study([study_dir / "study_0.1"])
    assert one.keys == [] and set(one.table["config"]) == {"all runs"}


def test_per_seed_hyperparameters_never_split_a_configuration(tmp_path):
    # Each seed's LCA-RCNN loads the dictionary learned on its own split; plain EP has none.
    for seed in (0, 1, 2):
        make_run(tmp_path, f"lca_{seed}", curve([0.4, 0.5, 0.5], [0.4, 0.5, 0.5]), seed=seed, model="LCACNN",
                 lca_dict=f"dicts/seed_{seed}.pt")
        make_run(tmp_path, f"cnn_{seed}", curve([0.5, 0.6, 0.6], [0.5, 0.6, 0.6]), seed=seed)
    split = report.load_study([tmp_path])  # without it every seed is its own configuration
    assert split.keys == ["lca_dict", "model"] and split.table["config"].nunique() == 4
    study = report.load_study([tmp_path], per_seed=["lca_dict"])
    assert study.keys == ["model"]
    counts = study.table.groupby("config")["seed"].apply(sorted).to_dict()
    assert counts == {"model=CNN": [0, 1, 2], "model=LCACNN": [0, 1, 2]}
    with pytest.raises(report.ReportError, match="--per-seed lca_dictt: no run has"):
        report.load_study([tmp_path], per_seed=["lca_dictt"])


def test_statistics_match_a_hand_computation(study_dir):
    study = report.load_study([study_dir])
    summary = report.summarise(study, ["final_test_acc", "best_val_acc", "test_acc_at_best"])
    for lr in ("0.1", "0.3"):
        runs = [v for (l, _), v in VALS.items() if l == lr]
        expected = {
            "final_test_acc": [test[-1] for _, test in runs],
            "best_val_acc": [max(val) for val, _ in runs],
            "test_acc_at_best": [test[int(np.argmax(val))] for val, test in runs],
        }
        for metric, values in expected.items():
            row = summary[(summary.config == f"lrs=[{lr},0.05]") & (summary.metric == metric)]
            assert len(row) == 1
            row = row.iloc[0]
            mean, std, half = hand_stats(values)
            assert row["n"] == len(values)
            assert row["mean"] == pytest.approx(mean, abs=1e-12)
            assert row["std"] == pytest.approx(std, abs=1e-12)
            assert row["ci_half"] == pytest.approx(half, rel=1e-8)
            assert row["ci_low"] == pytest.approx(mean - half, rel=1e-8)
            assert row["ci_high"] == pytest.approx(mean + half, rel=1e-8)


def test_curve_bands_match_a_hand_computation(study_dir):
    bands = report.curve_bands(report.load_study([study_dir]), "val_acc")
    band = bands["lrs=[0.3,0.05]"]
    assert list(band.index) == [1, 2, 3]
    for epoch in (1, 2, 3):
        values = [val[epoch - 1] for (lr, _), (val, _) in VALS.items() if lr == "0.3"]
        mean, _, half = hand_stats(values)
        assert band.loc[epoch, "mean"] == pytest.approx(mean, abs=1e-12)
        assert band.loc[epoch, "ci_high"] - band.loc[epoch, "mean"] == pytest.approx(half, rel=1e-8)


def test_command_writes_tables_and_curves(study_dir, capsys):
    out = study_dir / "report"
    assert report.main([str(study_dir / "study_0.1"), str(study_dir / "study_0.3"),
                        "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.metric) == set(report.DEFAULT_METRICS)  # no test-selected max_test_acc
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(VALS)
    assert (out / "curves.png").stat().st_size > 0
    md = (out / "summary.md").read_text()
    assert md in printed
    # final test accuracy of lrs 0.1 in percent: mean 93.33, CI half-width by hand.
    mean, std, half = hand_stats([0.95, 0.94, 0.91])
    line = next(ln for ln in md.splitlines() if "lrs=[0.1,0.05] | final_test_acc" in ln)
    assert f"{100 * mean:.2f}%" in line and f"(+-{100 * half:.2f})" in line
    assert f"| {100 * std:.2f} |" in line


def test_single_seed_says_ci_is_undefined(tmp_path, capsys):
    make_run(tmp_path, "run_1", curve([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]), seed=0)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "run_1"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "single seed" in captured.err and "undefined" in captured.err
    assert "n/a (1 seed)" in (out / "summary.md").read_text()
    assert "nan" not in (out / "summary.md").read_text().lower()
    row = pd.read_csv(out / "summary.csv").query("metric == 'final_test_acc'").iloc[0]
    assert row["n"] == 1 and row["mean"] == pytest.approx(0.6) and np.isnan(row["ci_half"])


def test_robustness_summaries_are_reported(tmp_path):
    for seed, accs in ((0, (0.5, 0.7)), (1, (0.6, 0.6)), (2, (0.4, 0.9))):
        run = make_run(tmp_path, f"run_{seed}", curve([0.8, 0.9, 0.9], [0.8, 0.85, 0.9]),
                       seed=seed)
        rows = [{"corruption": "clean", "severity": 0, "accuracy": 0.9, "n": 10,
                 "predict_step": 12}]
        rows += [{"corruption": c, "severity": 1, "accuracy": a, "n": 10, "predict_step": 12}
                 for c, a in zip(("contrast", "jpeg"), accs)]
        write_csv(rows, run / "corruptions.csv", CORRUPTION_FIELDS)
    study = report.load_study([tmp_path])
    assert "corruption_mean_acc" in study.default_metrics()
    row = report.summarise(study, ["corruption_mean_acc"]).iloc[0]
    mean, std, _ = hand_stats([0.6, 0.6, 0.65])  # the mean over the corruptions of each run
    assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)


def test_attack_summaries_are_the_strongest_attack_per_kind(tmp_path):
    from eplcanet.app.analysis import strongest_attacks
    from eplcanet.attacks import BLACK_BOX, RESULT_COLUMNS, WHITE_BOX

    rng = np.random.default_rng(0)
    rows = [{"attack": a, "norm": norm, "epsilon": eps, "accuracy": float(rng.uniform()),
             "n": 10, "steps": 5, "restarts": 1, "predict_step": 12, "attack_step": 12,
             "forwards_per_image": 1, "gradients_per_image": 1}
            for norm, radii in (("Linf", (0.0, 0.1, 0.2)), ("L2", (0.5, 1.0)))
            for eps in radii for a in ("pgd", "apgd-ce", "apgd-dlr", "square")]
    run = make_run(tmp_path, "run_0", curve([0.8] * 3, [0.8] * 3), seed=0)
    write_csv(rows, run / "attack.csv", RESULT_COLUMNS)
    # the reference: pandas' minimum per (norm, epsilon) within each kind of attack
    table = pd.DataFrame(rows)
    for kind, names in (("white_box", WHITE_BOX), ("black_box", BLACK_BOX)):
        best = table[table["attack"].isin(names)].groupby(["norm", "epsilon"])["accuracy"].min()
        for p in strongest_attacks(rows):
            assert p[f"{kind}_accuracy"] == pytest.approx(best[(p["norm"], p["epsilon"])])
            assert table.loc[(table["norm"] == p["norm"]) & (table["epsilon"] == p["epsilon"])
                             & (table["attack"] == p[f"{kind}_attack"]), "accuracy"].item() \
                == pytest.approx(p[f"{kind}_accuracy"])
    study = report.load_study([tmp_path])
    metrics = study.default_metrics()
    assert {"whitebox_Linf_acc@0.2", "blackbox_Linf_acc@0.2", "whitebox_L2_acc@1",
            "blackbox_L2_acc@1"} <= set(metrics)
    wb = table[table["attack"].isin(WHITE_BOX)]
    top = wb[(wb["norm"] == "Linf") & (wb["epsilon"] == 0.2)]["accuracy"].min()
    assert study.table["whitebox_Linf_acc@0.2"].iloc[0] == pytest.approx(top)
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['fgsm'\]"):
        strongest_attacks([dict(rows[0], attack="fgsm")])


def _refused(args: list[str], capsys, *needles: str) -> None:
    assert report.main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "report"
    _refused(["--out", str(out)], capsys, "no run directories given")
    _refused([str(tmp_path / "absent"), "--out", str(out)], capsys, "not a directory")
    (tmp_path / "empty").mkdir()
    _refused([str(tmp_path / "empty"), "--out", str(out)], capsys, "no run directory")

    good = make_run(tmp_path / "a", "run_0", curve([0.5] * 3, [0.5] * 3), seed=0)
    no_metrics = tmp_path / "a" / "run_1"
    no_metrics.mkdir()
    save_hyperparameters(no_metrics, {**BASE, "seed": 1}, ["main_fast.py"])
    _refused([str(tmp_path / "a"), "--out", str(out)], capsys, f"{no_metrics}: no metrics.csv")

    half = make_run(tmp_path / "b", "run_0", curve([0.5] * 3, [0.5] * 3), seed=0)
    with open(half / "metrics.csv", "a") as f:
        f.write("4,0.3,0.5\n")  # a row cut short
    _refused([str(half), "--out", str(out)], capsys, str(half), "expected 6 fields")

    short = make_run(tmp_path / "c", "run_0", curve([0.5] * 2, [0.5] * 2), seed=0)
    _refused([str(short), "--out", str(out)], capsys, "2 of 3 epochs done")

    other = make_run(tmp_path / "d", "run_0", curve([0.5] * 3, [0.5] * 3), seed=1,
                     data_path="/data/cifar.npz")
    _refused([str(good), str(other), "--out", str(out)], capsys, "different tasks",
             "mnist.npz", "cifar.npz")

    twin = make_run(tmp_path / "e", "run_0", curve([0.6] * 3, [0.6] * 3), seed=0)
    _refused([str(good), str(twin), "--out", str(out)], capsys, "share a seed")

    _refused([str(good), "--metrics", "nope", "--out", str(out)], capsys, "unknown metric",
             "final_test_acc")
    _refused([str(good), "--curves", "val_acc", "nope", "--out", str(out)], capsys,
             "unknown curve", "test_acc")
    assert not out.exists()
    # The runs themselves are untouched and a complete one still reports.
    assert report.main([str(short), "--allow-incomplete", "--out", str(out)]) == 0


def test_module_entry_point(study_dir):
    out = study_dir / "cli_report"
    result = subprocess.run(
        [sys.executable, "-m", "eplcanet.app.report", str(study_dir), "--out", str(out),
         "--metrics", "best_val_acc", "--curves", "val_acc"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "best_val_acc" in result.stdout
    assert set(pd.read_csv(out / "summary.csv").metric) == {"best_val_acc"}


@pytest.mark.parametrize("script, shape", [("mnist_14k.sh", (28, 28)),
                                           ("cifar_4k.sh", (32, 32, 3))])
def test_seed_scripts_run_each_seed_then_report(tmp_path, script, shape):
    """run/mnist_14k.sh and run/cifar_4k.sh: one run directory per seed of SEEDS, extra flags
    passed through (and winning over the recipe's), and the report over them (here on 100
    random images for one short epoch)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=rng.integers(0, 256, (100, *shape), dtype=np.uint8),
             y=np.repeat(np.arange(10), 10))
    out = tmp_path / "study"
    env = {**os.environ, "DATA_PATH": str(data), "SEEDS": "3 4", "OUT": str(out)}
    result = subprocess.run(
        ["bash", str(ROOT / "run" / script), "--epochs", "1", "--T1", "2", "--T2", "1",
         "--channels", "2", "4"],
        env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert sorted(runs["seed"]) == [3, 4] and set(runs["config"]) == {"all runs"}
    assert (runs["epochs_done"] == 1).all()
    assert {p.name for p in out.glob("seed_*")} == {"seed_3", "seed_4"}
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert (summary["n"] == 2).all()
    missing = subprocess.run(["bash", str(ROOT / "run" / script)], capture_output=True,
                             text=True, env={k: v for k, v in env.items() if k != "DATA_PATH"})
    assert missing.returncode != 0 and "DATA_PATH" in missing.stderr
