"""Tests of eplcanet.app.robustness: the differentiable predictor, PGD's sanity properties on a small
trained network, the corruptions, the robustness flags and main_fast.py --todo attack / corrupt."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from eplcanet import predictor as pred
from eplcanet import corruptions as corr
from eplcanet import runs as run_files
from eplcanet.app import robustness as rb
from eplcanet.app.settings import parse_settings
from eplcanet.data import CIFAR_MEAN, CIFAR_STD, ImageDataset, load_task, make_loader
from eplcanet.energy.dynamics import relax
from eplcanet.energy.learning import Phases
from eplcanet.energy.networks import P_CNN
from eplcanet.app.experiment import run
from eplcanet.app.plots import plot_corruptions, plot_robustness
from eplcanet.app.train import evaluate, train_epoch
from helpers import DIGITS_CNN, copy_results, is_png

T1, T2 = 10, 3


def _small_net(in_shape=(1, 8, 8), seed: int = 0) -> P_CNN:
    torch.manual_seed(seed)
    return P_CNN(
        in_shape, [16], [3], [1], [1], "m", [10], act="my_hard_sig", softmax=True, loss="cel"
    )


@pytest.fixture(scope="module")
def trained():
    """A one-conv-layer EP network trained on scikit-learn's digits (about 90% test accuracy),
    and 200 test images as pixels."""
    torch.set_num_threads(1)
    splits = load_task("digits", seed=0)
    net = _small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    phases = Phases(T1, T2, (0.0, 0.5), thirdphase=True)
    for epoch in range(1, 5):
        loader = make_loader(splits.train, 32, shuffle=True, seed=0, epoch=epoch)
        train_epoch(net, opt, loader, "EP", phases, "cpu")
    net.eval()
    acc = evaluate(net, make_loader(splits.test, 256, shuffle=False), T1, "cpu")
    assert acc > 0.8, f"the fixture network did not learn (test accuracy {acc:.3f})"
    pixels, labels = pred.dataset_pixels(splits.test, torch.arange(200))
    return net, pixels, labels


# --------------------------------------------------------------------------------------------
# The predictor


def test_predictor_gives_the_free_equilibrium_logits_in_any_grad_mode():
    net = _small_net((3, 8, 8))
    pixels = torch.rand(5, 3, 8, 8)
    x = (pixels - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    with torch.no_grad():
        expected = net.output(relax(net, net.input_drive(x), net.init_states(5), T1))
    for attack_step in (1, T2, T1):
        model = pred.EquilibriumPredictor(net, T1, attack_step, CIFAR_MEAN, CIFAR_STD)
        with torch.no_grad():
            torch.testing.assert_close(model(pixels), expected)
        torch.testing.assert_close(model(pixels.requires_grad_(True)), expected)


def test_predictor_gradient_is_bptt_through_the_last_attack_steps():
    torch.manual_seed(1)
    net = P_CNN(
        (1, 8, 8), [8], [3], [1], [1], "m", [32, 10], act="my_hard_sig", softmax=True, loss="cel"
    ).double()  # two layers of neurons, then the readout
    pixels = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])

    def grad_of(model_fn):
        p = pixels.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model_fn(p), y).backward()
        return p.grad

    def truncated(p, k):
        with torch.no_grad():
            s = relax(net, net.input_drive(p), net.init_states(4), T1 - k)
        return net.output(relax(net, net.input_drive(p), s, k))

    for k in (2, T1):
        model = pred.EquilibriumPredictor(net, T1, k)
        g = grad_of(model)
        torch.testing.assert_close(g, grad_of(lambda p, k=k: truncated(p, k)))
        assert g.abs().sum() > 0
    # Fewer unrolled steps give a different (truncated) gradient.
    assert not torch.allclose(
        grad_of(pred.EquilibriumPredictor(net, T1, 2)), grad_of(pred.EquilibriumPredictor(net, T1, T1))
    )
    # One step cannot carry the gradient from the output back through two layers.
    with pytest.raises(ValueError, match="number of layers"):
        pred.EquilibriumPredictor(net, T1, 1)


def test_to_pixels_undoes_the_dataset_normalisation():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    ds = ImageDataset(images, torch.zeros(6, dtype=torch.long), mean=CIFAR_MEAN, std=CIFAR_STD)
    x = torch.stack([ds[i][0] for i in range(6)])
    mean, std = pred.dataset_normalization(ds)
    torch.testing.assert_close(pred.to_pixels(x, mean, std), images.float() / 255, atol=1e-6, rtol=0)
    pixels, _ = pred.dataset_pixels(ds)
    assert torch.equal(pixels, images.float() / 255)
    assert pred.dataset_normalization(ImageDataset(images, torch.zeros(6, dtype=torch.long))) == (
        None,
        None,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"predict_step": 0, "attack_step": 1}, "predict_step"),
        ({"predict_step": 5, "attack_step": 6}, "attack_step"),
        ({"predict_step": 5, "attack_step": 0}, "attack_step"),
        ({"predict_step": 5, "attack_step": 2, "mean": (0.5,)}, "together"),
    ],
)
def test_predictor_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pred.EquilibriumPredictor(_small_net(), **kwargs)


# --------------------------------------------------------------------------------------------
# Attacks


# --------------------------------------------------------------------------------------------
# Corruptions


@pytest.mark.parametrize("channels", [1, 3])
def test_corruptions_grow_with_severity_and_stay_in_range(channels):
    torch.manual_seed(0)
    # Smooth images (JPEG keeps noise-like images almost as badly at every quality).
    low = torch.rand(16, channels, 4, 4)
    x = torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear") * 0.8 + 0.1
    for name in corr.CORRUPTIONS:
        errors = []
        for s in corr.SEVERITIES:
            out = corr.corrupt(x, name, s, generator=torch.Generator().manual_seed(s))
            assert out.shape == x.shape and out.dtype == x.dtype, name
            assert out.min() >= 0 and out.max() <= 1, name
            errors.append((out - x).abs().mean().item())
        assert errors[0] > 0, name
        assert errors[-1] > errors[0] * 1.3, (name, errors)
        if name != "jpeg":  # JPEG's error at nearby qualities may wobble
            assert all(b >= a for a, b in itertools.pairwise(errors)), (name, errors)


def test_corruptions_by_their_definition():
    torch.manual_seed(0)
    grey = torch.rand(4, 1, 8, 8)
    c = corr.SEVERITY_PARAMS["brightness"][2]
    torch.testing.assert_close(corr.corrupt(grey, "brightness", 3), (grey + c).clamp(0, 1))
    rgb = torch.rand(4, 3, 8, 8) * 0.5
    out = corr.corrupt(rgb, "brightness", 3)
    # Hue and saturation are kept: the colour is scaled, its value raised by c.
    torch.testing.assert_close(out.amax(1), rgb.amax(1) + c)
    torch.testing.assert_close(out / out.amax(1, keepdim=True), rgb / rgb.amax(1, keepdim=True))
    k = corr.SEVERITY_PARAMS["contrast"][4]
    out = corr.corrupt(rgb, "contrast", 5)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), rgb.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), k * rgb.std(dim=(1, 2, 3)))
    flat = torch.full((2, 1, 8, 8), 0.5)
    torch.testing.assert_close(corr.corrupt(flat, "gaussian_blur", 5), flat)
    noisy = corr.corrupt(flat, "impulse_noise", 5, generator=torch.Generator().manual_seed(0))
    changed = noisy != 0.5
    assert set(noisy[changed].tolist()) <= {0.0, 1.0}
    assert abs(changed.float().mean().item() - corr.SEVERITY_PARAMS["impulse_noise"][4]) < 0.05
    g = corr.corrupt(flat, "gaussian_noise", 5, generator=torch.Generator().manual_seed(0))
    assert abs((g - flat).std().item() - corr.SEVERITY_PARAMS["gaussian_noise"][4]) < 0.02
    a = corr.corrupt(grey, "shot_noise", 2, generator=torch.Generator().manual_seed(3))
    b = corr.corrupt(grey, "shot_noise", 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_corrupt_refuses_bad_arguments():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="gaussian_noise"):
        corr.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corr.corrupt(x, "contrast", 6)
    with pytest.raises(ValueError, match="shape"):
        corr.corrupt(x[0], "contrast", 1)


def test_evaluate_corruptions_rows(trained):
    net, pixels, labels = trained
    model = pred.EquilibriumPredictor(net, T1, T2)
    rows = corr.evaluate_corruptions(
        model, pixels, labels, ["gaussian_noise", "contrast"], [1, 5], progress=False
    )
    clean = int((pred.predict(model, pixels) == labels).sum()) / len(labels)
    assert rows[0] == {
        "corruption": "clean",
        "severity": 0,
        "accuracy": clean,
        "n": 200,
        "predict_step": T1,
    }
    assert [(r["corruption"], r["severity"]) for r in rows[1:]] == [
        ("gaussian_noise", 1),
        ("gaussian_noise", 5),
        ("contrast", 1),
        ("contrast", 5),
    ]
    contrast5 = rows[-1]["accuracy"]
    assert contrast5 < clean  # a contrast of 0.15 costs the digits network accuracy


def test_robustness_plots(tmp_path):
    rows = [
        {"norm": n, "epsilon": e, "accuracy": 1 - e / 4, "accuracy_noise": 1 - e / 8}
        for n in ("Linf", "L2")
        for e in (0.0, 0.5, 1.0)
    ]
    assert is_png(plot_robustness({"a": rows, "b": rows[:3]}, tmp_path / "r.png"))
    path = run_files.write_csv(
        [dict(r, n=1) for r in rows],
        tmp_path / "attack.csv",
        ("norm", "epsilon", "accuracy", "accuracy_noise", "n"),
    )
    assert run_files.read_rows(path)[1] == {
        "norm": "Linf",
        "epsilon": 0.5,
        "accuracy": 0.875,
        "accuracy_noise": 0.9375,
        "n": 1,
    }
    assert is_png(plot_robustness({"csv": path}, tmp_path))
    assert (tmp_path / "robustness.png").is_file()
    crows = [{"corruption": "clean", "severity": 0, "accuracy": 0.9}] + [
        {"corruption": c, "severity": s, "accuracy": 0.9 - 0.1 * s}
        for c in ("jpeg", "contrast")
        for s in (1, 2, 3)
    ]
    assert is_png(plot_corruptions(crows, tmp_path / "c.png"))
    with pytest.raises(ValueError, match="non-empty"):
        plot_robustness({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="lack"):
        plot_robustness({"a": [{"norm": "L2"}]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="other than 'clean'"):
        plot_corruptions(crows[:1], tmp_path / "x.png")


# --------------------------------------------------------------------------------------------
# main_fast.py flags and --todo attack / corrupt


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--todo", "attack"], "--load-path"),
        (["--todo", "attack", "--load-path", "r", "--epsilons", "0.1"], "--attack-norm Linf or L2"),
        (
            ["--todo", "attack", "--load-path", "r", "--attack-norm", "L2", "--epsilons", "-1"],
            ">= 0",
        ),
        (["--todo", "attack", "--load-path", "r", "--attack-step", "30"], "--attack-step"),
        (["--todo", "corrupt", "--load-path", "r", "--predict-step", "0"], "--predict-step"),
        (["--todo", "attack", "--load-path", "r", "--pgd-steps", "0"], "--pgd-steps"),
        (["--todo", "attack", "--load-path", "r", "--attacks", "pgd", "fgsm"], "--attacks"),
        (["--todo", "corrupt", "--load-path", "r", "--attack-samples", "0"], "--attack-samples"),
    ],
)
def test_robustness_flags_are_checked_before_any_work(extra, match, capsys):
    # a value argparse's type refuses exits 2 with the message on stderr; a combination
    # validate refuses exits with the message itself
    with pytest.raises(SystemExit) as err:
        parse_settings(extra)
    assert err.value.code != 0
    assert re.search(match, f"{err.value.code} {capsys.readouterr().err}")


def test_robustness_flag_defaults_and_choices(capsys):
    args = parse_settings(["--todo", "attack", "--load-path", "r", "--T1", "12", "--T2", "5"])
    r = args.robustness
    assert (r.predict_step, r.attack_step, r.attack_norm) == ((12,), None, "both")
    assert rb.step_pairs(args) == [(12, 12)]  # the full gradient by default
    args = parse_settings(["--todo", "corrupt", "--load-path", "r", "--predict-step", "3"])
    assert (args.robustness.predict_step, args.robustness.attack_step) == ((3,), None)
    args = parse_settings(["--todo", "attack", "--load-path", "r", "--predict-step", "8", "4", "8",
                       "--attack-step", "2", "6"])
    assert rb.step_pairs(args) == [(4, 2), (8, 2), (8, 6)]  # sorted, no repeats, a <= p
    r = args.robustness
    assert r.corruptions == corr.CORRUPTIONS and r.severities == (1, 2, 3, 4, 5)
    for bad in (["--corruptions", "fog"], ["--severities", "6"], ["--attack-norm", "L1"]):
        with pytest.raises(SystemExit):
            parse_settings(["--todo", "corrupt", "--load-path", "r", *bad])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_main_fast_attack_and_corrupt_write_csv_and_png(tmp_path, digits_cnn_results):
    results = copy_results(digits_cnn_results, tmp_path / "results")  # the attack writes into it
    (run_dir,) = results.glob("digits/EP/CNN/*/run_1")
    out = run(
        parse_settings(
            [
                *DIGITS_CNN,
                "--todo",
                "attack",
                "--load-path",
                str(run_dir),
                "--attack-samples",
                "40",
                "--pgd-steps",
                "3",
                "--attack-norm",
                "Linf",
                "--epsilons",
                "0",
                "0.3",
                "--hsj-samples",
                "8",
            ]
        ),
        argv=[],
    )
    import pandas as pd

    from eplcanet.attacks import RESULT_COLUMNS

    table = pd.read_csv(run_dir / "attack.csv", keep_default_na=False)
    assert list(table.columns) == [*RESULT_COLUMNS, "masking_flags"]
    runs = [(a, s * 3, r) for a, s, r in rb.DRIVER_ATTACKS] + [("hopskipjump", 3, 1)]
    assert list(zip(table["attack"], table["steps"], table["restarts"], table["epsilon"])) == [
        (*run, eps) for run in runs for eps in (0.0, 0.3)
    ]
    hsj = table["attack"] == "hopskipjump"  # on the first 8 of the 40 attacked images
    assert (table[~hsj]["n"] == 40).all() and (table[hsj]["n"] == 8).all()
    assert (table["norm"] == "Linf").all()
    assert (table["predict_step"] == 6).all() and (table["attack_step"] == 6).all()
    at0, at3 = table[table["epsilon"] == 0], table[table["epsilon"] == 0.3]
    # eps 0: every attack leaves the clean accuracy (of its images)
    assert at0[~hsj]["accuracy"].nunique() == 1
    assert (at3["accuracy"].to_numpy() <= at0["accuracy"].to_numpy()).all()
    curves = rb.attack_curves("EP", run_files.read_rows(run_dir / "attack.csv"))
    assert [len(c) for c in curves.values()] == [2] * len(runs)
    assert list(curves) == [f"EP, {a} {s}x{r}" for a, s, r in runs]
    checks = pd.read_csv(run_dir / "masking_checks.csv")
    assert set(checks["check"]) <= {"accuracy_vanishes", "more_effort_never_helps",
                                     "black_box_not_better", "full_gradient_not_weaker"}
    assert "accuracy_vanishes" in set(checks["check"])
    assert is_png(run_dir / "attack.png") and out["csv"] == run_dir / "attack.csv"
    run(
        parse_settings(
            [
                *DIGITS_CNN,
                "--todo",
                "corrupt",
                "--load-path",
                str(run_dir),
                "--attack-samples",
                "40",
                "--corruptions",
                "jpeg",
                "impulse_noise",
                "--severities",
                "1",
                "5",
            ]
        ),
        argv=[],
    )
    rows = run_files.read_rows(run_dir / "corruptions.csv")
    assert [(r["corruption"], r["severity"]) for r in rows] == [
        ("clean", 0),
        ("jpeg", 1),
        ("jpeg", 5),
        ("impulse_noise", 1),
        ("impulse_noise", 5),
    ]
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 40 for r in rows)
    assert rows[0]["accuracy"] * 40 == round(rows[0]["accuracy"] * 40)  # a count / n
    assert is_png(run_dir / "corruptions.png")


def test_predictor_differentiates_through_the_lca_frontend():
    from eplcanet.app.build import build_model

    args = parse_settings(
        [
            "--model",
            "LCACNN",
            "--dict_training",
            "learn",
            "--lca_feats",
            "6",
            "--lca_ksize",
            "3",
            "--lca_stride",
            "1",
            "--lca_iters",
            "15",
            "--lca_tau",
            "5",
            "--lca_lambda",
            "0.1",
            "--channels",
            "8",
        ]
    )
    torch.manual_seed(0)
    net = build_model(args, (1, 8, 8), 10).eval()
    model = pred.EquilibriumPredictor(net, 8, 4)
    pixels = torch.rand(3, 1, 8, 8, requires_grad=True)
    logits = model(pixels)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), logits)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), pixels)
    # The code a is the only path from the pixels to the logits: a non-zero gradient went
    # through the LCA solver.
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_deployed_rows_keep_the_classifier_as_used():
    import pandas as pd

    from eplcanet.attacks import deployed_rows

    table = pd.DataFrame({"predict_step": [3, 3, 6, 6], "attack_step": [3, 2, 6, 3],
                          "accuracy": [0.1, 0.2, 0.5, 0.6]})
    assert deployed_rows(table, 6)["accuracy"].tolist() == [0.5, 0.6]  # the run's --T1
    assert deployed_rows(table, 3)["accuracy"].tolist() == [0.1, 0.2]
    assert deployed_rows(table, 10)["accuracy"].tolist() == [0.5, 0.6]  # else the largest
    assert len(deployed_rows(table.drop(columns="predict_step"), 6)) == 4


@pytest.mark.slow
def test_step_study_attacks_every_pair_and_the_summary_keeps_the_deployed_one(tmp_path,
                                                                             digits_cnn_results):
    import pandas as pd

    from eplcanet.app.analysis import run_summary

    results = copy_results(digits_cnn_results, tmp_path / "results")  # the attacks write into it
    (run_dir,) = results.glob("digits/EP/CNN/*/run_1")
    attack = ["--todo", "attack", "--load-path", str(run_dir), "--attacks", "pgd",
              "--attack-samples", "32", "--pgd-steps", "3", "--attack-norm", "Linf",
              "--epsilons", "0", "0.2", "--device", "cpu"]
    run(parse_settings([*attack, "--predict-step", "6"]), argv=[])
    alone = pd.read_csv(run_dir / "attack.csv")
    run(parse_settings([*attack, "--predict-step", "3", "6", "--attack-step", "3", "6"]), argv=[])
    study = pd.read_csv(run_dir / "attack.csv")
    pairs = sorted(set(zip(study["predict_step"], study["attack_step"])))
    assert pairs == [(3, 3), (6, 3), (6, 6)]
    assert (run_dir / "steps.png").stat().st_size > 0
    # the full-gradient rows at the run's T1 are the single-classifier attack, number for number
    full = study[(study["predict_step"] == 6) & (study["attack_step"] == 6)]
    assert full["accuracy"].tolist() == alone["accuracy"].tolist()
    at_t1 = study[(study["predict_step"] == 6) & (study["epsilon"] == 0.2)]["accuracy"].min()
    assert run_summary(run_dir)["whitebox_Linf_acc@0.2"] == pytest.approx(at_t1)
    # another attack on the attacked run joins the table; what was measured stays as it was
    added = [*attack, "--attacks", "square", "--predict-step", "6"]
    run(parse_settings(added), argv=[])
    merged = pd.read_csv(run_dir / "attack.csv", keep_default_na=False)
    assert merged[merged["attack"] == "pgd"].drop(columns="masking_flags").reset_index(
        drop=True).equals(study.drop(columns="masking_flags"))
    assert set(merged[merged["attack"] == "square"]["epsilon"]) == {0.0, 0.2}
    # a table holding HopSkipJump keeps it when a later call runs other attacks only
    run(parse_settings([*attack, "--attacks", "hopskipjump", "--hsj-samples", "4",
                        "--predict-step", "6"]), argv=[])
    run(parse_settings([*added, "--hsj-samples", "4"]), argv=[])
    merged = pd.read_csv(run_dir / "attack.csv", keep_default_na=False)
    assert set(merged["attack"]) == {"pgd", "square", "hopskipjump"}
    assert not (run_dir / "attack_earlier.csv").exists()
    # other images cannot share one table: the earlier one is set aside, not lost
    run(parse_settings([*added, "--attack-samples", "16"]), argv=[])
    assert pd.read_csv(run_dir / "attack_earlier.csv", keep_default_na=False).equals(merged)
    alone16 = pd.read_csv(run_dir / "attack.csv")
    assert set(alone16["attack"]) == {"square"} and (alone16["n"] == 16).all()


def test_what_is_not_a_classifier_or_not_pixels_is_refused(tmp_path):
    dictionary_run = tmp_path / "dictlearning_run"
    dictionary_run.mkdir()
    (dictionary_run / "hyperparameters.json").write_text('{"lca_feats": 64, "lca_iters": 100}')
    with pytest.raises(SystemExit, match="is not a main_fast.py run"):
        parse_settings(["--todo", "attack", "--load-path", str(dictionary_run)])
    scaled = ImageDataset(torch.full((4, 1, 8, 8), 3.0), torch.arange(4))  # not in [0, 1]
    with pytest.raises(ValueError, match=r"not pixels in \[0, 1\] \(range \[3, 3\]\)"):
        pred.dataset_pixels(scaled)
    pixels, _ = pred.dataset_pixels(ImageDataset(torch.full((4, 1, 8, 8), 255, dtype=torch.uint8),
                                               torch.arange(4)))
    assert pixels.max() == 1.0  # uint8 images are scaled
