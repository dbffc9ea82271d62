"""Tests of eplcanet.app.robustness_study: the per-seed strongest attacks and their mean and 95%
confidence interval, checked against a hand computation with Student-t quantiles from a printed
table; bad input; and the study script's quick variant end to end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eplcanet.app import robustness_study as rs
from eplcanet.attacks import RESULT_COLUMNS
from eplcanet.app.robustness_study import main as robustness_main
from eplcanet.runs import save_hyperparameters
from helpers import ROOT, hand_stats



def _attacked_run(root: Path, name: str, hp: dict, accs: dict, flagged=()) -> Path:
    """A run directory with hyperparameters.json and an attack.csv: accs maps (attack, norm,
    epsilon) to accuracy; flagged lists the keys whose row a masking check marked."""
    run = root / name
    run.mkdir(parents=True)
    save_hyperparameters(run, hp, ["main_fast.py"])
    rows = [{"attack": a, "norm": norm, "epsilon": eps, "accuracy": acc,
             "n": 10 if a == "hopskipjump" else 100, "steps": 5,
             "restarts": 1, "predict_step": 10, "attack_step": 10, "forwards_per_image": 5,
             "gradients_per_image": 5, "masking_flags": "accuracy_vanishes"
             if (a, norm, eps) in flagged else ""}
            for (a, norm, eps), acc in accs.items()]
    pd.DataFrame(rows, columns=[*RESULT_COLUMNS, "masking_flags"]).to_csv(run / "attack.csv",
                                                                          index=False)
    return run


@pytest.fixture
def study(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    for model, alg in (("CNN", "EP"), ("FFCNN", "BP")):
        for seed in range(3):
            accs = {(a, "Linf", eps): float(rng.uniform(0, 1))
                    for eps in (0.1, 0.2)
                    for a in ("pgd", "apgd-ce", "apgd-dlr", "square", "hopskipjump")}
            accs[("pgd", "Linf", 0.0)] = 0.9 + 0.01 * seed
            flagged = [("apgd-ce", "Linf", 0.2)] if seed == 1 and model == "CNN" else []
            _attacked_run(tmp_path / model, f"seed_{seed}/run_1",
                          {"model": model, "alg": alg, "task": "digits", "seed": seed}, accs,
                          flagged)
    return tmp_path


def test_each_seed_gives_its_strongest_attack_and_the_summary_its_mean_and_ci(study):
    points = rs.study_points(sorted(study.glob("*/seed_*/run_1")))
    # models x seeds x (white-box at eps 0 .1 .2; score- and decision-based at .1 .2)
    assert len(points) == 2 * 3 * (3 + 2 + 2)
    for run in sorted(study.glob("*/seed_*/run_1")):
        table = pd.read_csv(run / "attack.csv")
        for kind, names in (("white_box", ["pgd", "apgd-ce", "apgd-dlr"]),
                            ("score_based", ["square"]), ("decision_based", ["hopskipjump"])):
            want = table[table["attack"].isin(names)].groupby("epsilon")["accuracy"].min()
            mine = points[(points["run"] == str(run)) & (points["kind"] == kind)]
            assert mine.set_index("epsilon")["accuracy"].to_dict() == pytest.approx(want.to_dict())
    summary = rs.summarise(points)
    for _, row in summary.iterrows():
        per_seed = points[(points["model"] == row["model"]) & (points["epsilon"] == row["epsilon"])
                          & (points["kind"] == row["kind"])]["accuracy"].tolist()
        mean, _, half = hand_stats(per_seed)
        assert row["n_seeds"] == 3
        assert row["images"] == (10 if row["kind"] == "decision_based" else 100)
        assert row["mean"] == pytest.approx(mean)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half))
    flagged = summary[summary["seeds_flagged"] > 0]
    assert flagged[["model", "epsilon", "kind"]].values.tolist() == [["EP CNN", 0.2, "white_box"]]
    clean = summary[(summary["epsilon"] == 0) & (summary["model"] == "BP FFCNN")].iloc[0]
    assert clean["mean"] == pytest.approx(0.91) and clean["attacks"] == "pgd:3"


def test_the_command_writes_the_tables_and_figure(study, tmp_path, capsys):
    robustness_main(["study", str(study), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "EP CNN Linf eps 0.2" in out and "FLAGGED in 1 seed(s)" in out
    for name in ("study.csv", "study_points.csv", "study.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "out" / "study.csv")) == 2 * (3 + 2 + 2)


def test_bad_input_is_refused(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    save_hyperparameters(old, {"model": "CNN", "alg": "EP"}, ["main_fast.py"])
    pd.DataFrame({"norm": ["Linf"], "epsilon": [0.1], "accuracy": [0.5], "n": [10]}).to_csv(
        old / "attack.csv", index=False)
    with pytest.raises(ValueError, match="no attack column"):
        rs.study_points([old])
    odd = _attacked_run(tmp_path, "odd", {"model": "CNN", "alg": "EP"},
                        {("fgsm", "Linf", 0.1): 0.5})
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['fgsm'\]"):
        rs.study_points([odd])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no run with an attack.csv below"):
        rs.write_study([empty], tmp_path / "out")
    with pytest.raises(SystemExit):
        robustness_main(["study", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_the_quick_study_script_trains_attacks_and_aggregates(tmp_path):
    env = {**os.environ, "QUICK": "1", "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "run" / "robustness_study.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "study" / "study.csv")
    assert set(summary["model"]) == {"EP CNN", "BPTT CNN", "EP LCACNN", "BP FFCNN"}
    assert (summary["n_seeds"] == 2).all()
    hsj = summary["kind"] == "decision_based"  # HopSkipJump on the first 8 images
    assert (summary[hsj]["images"] == 8).all() and (summary[~hsj]["images"] == 64).all()
    assert set(summary["kind"]) == {"white_box", "score_based", "decision_based"}
    wb = summary[summary["kind"] == "white_box"].set_index(["model", "epsilon"])["mean"]
    for model in ("EP CNN", "BP FFCNN"):  # trained well above chance, broken by a large ball
        assert wb[(model, 0.0)] > 0.3 and wb[(model, 0.3)] < wb[(model, 0.0)]
    # a second run finds everything done: nothing is trained or attacked again
    again = subprocess.run(["bash", str(ROOT / "run" / "robustness_study.sh")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "epoch 1:" not in again.stdout
    assert "relaxations per image" not in again.stdout
