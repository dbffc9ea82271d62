"""Tests of eplcanet.attacks: the ART classifier around the equilibrium predictor, the ART attacks
on a small trained network, and the gradient-masking checks on tables built to pass or fail."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("art")

from eplcanet import attacks as at  # noqa: E402
from eplcanet import predictor as pred
from eplcanet.data import load_task, make_loader  # noqa: E402
from eplcanet.energy.dynamics import relax  # noqa: E402
from eplcanet.energy.learning import Phases  # noqa: E402
from eplcanet.energy.networks import P_CNN  # noqa: E402
from eplcanet.app.train import evaluate, train_epoch  # noqa: E402

PREDICT, ATTACK = 10, 3
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits_net():
    """A one-conv-layer EP network trained for 3 epochs on scikit-learn's digits, its ART
    classifier, and 100 test images as pixels with their labels."""
    torch.set_num_threads(1)
    splits = load_task("digits", seed=1)
    torch.manual_seed(1)
    net = P_CNN(SHAPE, [16], [3], [1], [1], "m", [10], act="my_hard_sig", softmax=True, loss="cel")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    phases = Phases(PREDICT, 3, (0.0, 0.5), thirdphase=True)
    for epoch in range(3):
        train_epoch(net, opt, make_loader(splits.train, 32, True, seed=1, epoch=epoch), "EP",
                    phases, "cpu")
    net.eval()
    assert evaluate(net, make_loader(splits.test, 256, shuffle=False), PREDICT, "cpu") > 0.8
    pixels, labels = pred.dataset_pixels(splits.test, torch.arange(100))
    predictor = pred.EquilibriumPredictor(net, PREDICT, ATTACK)
    return net, predictor, at.art_classifier(predictor, SHAPE, 10), pixels, labels


def _clean_accuracy(classifier, pixels, labels) -> float:
    return float((classifier.predict(pixels.numpy()).argmax(1) == labels.numpy()).mean())


# --------------------------------------------------------------------------------------------
# The classifier


def test_classifier_logits_and_gradient_are_the_networks_own(digits_net):
    net, predictor, clf, pixels, labels = digits_net
    x, y = pixels[:20], labels[:20]
    with torch.no_grad():
        states = relax(net, net.input_drive(x), net.init_states(len(x)), PREDICT)
        logits = net.output(states)
    torch.testing.assert_close(torch.from_numpy(clf.predict(x.numpy())), logits)
    # ART's loss gradient is the autograd gradient of the mean cross-entropy of the truncated
    # relaxation (the last ATTACK steps), per image.
    xg = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(predictor(xg), y)
    (expected,) = torch.autograd.grad(loss, xg)
    got = torch.from_numpy(clf.loss_gradient(x.numpy(), np.eye(10)[y.numpy()]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    assert expected.abs().sum() > 0


def test_a_non_finite_candidate_scores_nan_and_is_not_relaxed(digits_net):
    # ART's L2 Square attack can propose a NaN image; its score must lose every comparison
    # (NaN) while the other images of the batch keep their own logits.
    _, _, clf, pixels, _ = digits_net
    x = pixels[:6].numpy().copy()
    x[[1, 4], 0, 2, 3] = [np.nan, np.inf]
    counter = clf.model
    counter.forwards = 0
    scores = clf.predict(x)
    assert np.isnan(scores[[1, 4]]).all() and counter.forwards == 4
    finite = [0, 2, 3, 5]
    np.testing.assert_allclose(scores[finite], clf.predict(x[finite]), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Attacks


@pytest.mark.parametrize("norm", at.NORMS)
@pytest.mark.parametrize("attack", ["pgd", "apgd-ce", "square"])
def test_epsilon_zero_changes_nothing(digits_net, attack, norm):
    _, _, clf, pixels, labels = digits_net
    x, y = pixels[:30], labels[:30]
    res = at.run_attack(clf, x, y, attack, norm, 0.0, steps=3, restarts=2)
    assert torch.equal(res.adversarial, x)
    assert res.accuracy == _clean_accuracy(clf, x, y)
    assert float(res.perturbation.max()) == 0.0


@pytest.mark.parametrize(
    "attack, norm, eps, steps, restarts",
    [
        ("pgd", "Linf", 0.3, 10, 1),
        ("pgd", "L2", 3.0, 10, 2),
        ("apgd-ce", "Linf", 0.3, 10, 1),
        ("apgd-dlr", "Linf", 0.3, 10, 1),
        ("square", "Linf", 0.3, 100, 1),
    ],
)
def test_a_large_ball_breaks_the_trained_network(digits_net, attack, norm, eps, steps, restarts):
    _, _, clf, pixels, labels = digits_net
    res = at.run_attack(clf, pixels, labels, attack, norm, eps, steps=steps, restarts=restarts)
    clean = _clean_accuracy(clf, pixels, labels)
    assert clean > 0.8
    assert res.accuracy < 0.15, (attack, res.accuracy)
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert float(res.perturbation.max()) <= eps + 1e-5
    if attack == "pgd":
        # One gradient per image, step and restart (ART attacks every image at every step).
        assert res.gradients_per_image == steps * restarts
    if attack == "square":
        assert res.gradients_per_image == 0 and res.forwards_per_image > 1


def test_art_pgd_linf_returns_the_projected_sign_gradient_ascent(digits_net):
    """From the clean image, 7 steps of x <- clip(x + 0.02 sign(grad CE), ball, [0, 1]) written
    with autograd on the predictor: ART's PGD through the classifier returns the same pixels."""
    _, predictor, clf, pixels, labels = digits_net
    x, y = pixels[:40], labels[:40]
    ours = x.clone()
    for _ in range(7):
        ours.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(predictor(ours), y)
        (grad,) = torch.autograd.grad(loss, ours)
        with torch.no_grad():
            ours = (x + (ours + 0.02 * grad.sign() - x).clamp(-0.1, 0.1)).clamp(0, 1)
    res = at.run_attack(clf, x, y, "pgd", "Linf", 0.1, steps=7, restarts=0, eps_step=0.02)
    torch.testing.assert_close(res.adversarial, ours, atol=1e-6, rtol=0)
    assert res.accuracy < _clean_accuracy(clf, x, y)


def test_hopskipjump_finds_minimal_examples_read_at_each_radius(digits_net):
    _, _, clf, pixels, labels = digits_net
    x, y = pixels[:4], labels[:4]
    specs = [at.AttackSpec("hopskipjump", "L2", steps=2, restarts=1, max_eval=50)]
    table = at.attack_table(clf, x, y, specs, {"L2": [0.0, 1e-3, 10.0]}, PREDICT, ATTACK)
    assert list(table.columns) == list(at.RESULT_COLUMNS)
    acc = table["accuracy"].tolist()
    assert acc[0] == _clean_accuracy(clf, x, y)
    # Every example it returns is misclassified, so in a ball holding the whole pixel cube
    # (L2 diameter 8 for 8x8 images) nothing is left; tiny balls hold none of them.
    assert acc[2] == 0.0 and acc[1] == acc[0]
    assert table["gradients_per_image"].eq(0).all() and table["forwards_per_image"].gt(10).all()


def test_attack_table_runs_every_spec_at_every_radius(digits_net):
    _, _, clf, pixels, labels = digits_net
    specs = [at.AttackSpec("pgd", "Linf", steps=2), at.AttackSpec("square", "Linf", steps=5)]
    table = at.attack_table(clf, pixels[:10], labels[:10], specs, {"Linf": [0.0, 0.2]}, 10, 3)
    assert table[["attack", "epsilon"]].values.tolist() == [
        ["pgd", 0.0], ["pgd", 0.2], ["square", 0.0], ["square", 0.2]
    ]
    assert (table["predict_step"] == 10).all() and (table["n"] == 10).all()


def test_bad_arguments_are_refused_before_any_work(digits_net):
    net, _, clf, pixels, labels = digits_net
    x, y = pixels[:2], labels[:2]
    with pytest.raises(ValueError, match="attack must be one of"):
        at.run_attack(clf, x, y, "fgsm", "Linf", 0.1)
    with pytest.raises(ValueError, match="norm must be one of"):
        at.run_attack(clf, x, y, "pgd", "L1", 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        at.run_attack(clf, x, y, "pgd", "Linf", -0.1)
    with pytest.raises(ValueError, match="epsilon"):
        at.run_attack(clf, x, y, "pgd", "Linf", float("nan"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        at.run_attack(clf, x * 255, y, "pgd", "Linf", 0.1)
    with pytest.raises(ValueError, match="shape"):
        at.run_attack(clf, x[:, :, :4], y, "pgd", "Linf", 0.1)
    with pytest.raises(ValueError, match="restarts=0"):
        at.run_attack(clf, x, y, "square", "Linf", 0.1, restarts=0)
    with pytest.raises(TypeError, match="EquilibriumPredictor"):
        at.art_classifier(net, SHAPE, 10)
    with pytest.raises(ValueError, match="no epsilons"):
        at.attack_table(clf, x, y, [at.AttackSpec("pgd", "L2")], {"Linf": [0.1]}, 10, 3)


# --------------------------------------------------------------------------------------------
# Gradient-masking checks on synthetic tables


def _table(rows) -> pd.DataFrame:
    base = dict(n=100, steps=20, restarts=1, predict_step=20, attack_step=20,
                forwards_per_image=0.0, gradients_per_image=0.0)
    return pd.DataFrame([{**base, **r} for r in rows], columns=list(at.RESULT_COLUMNS))


def _curve(attack, accs, eps=(0.0, 0.1, 0.3), **kw):
    rows = zip(eps, accs, strict=True)
    return [dict(attack=attack, norm="Linf", epsilon=e, accuracy=a, **kw) for e, a in rows]


def test_check_accuracy_vanishes():
    good = at.check_accuracy_vanishes(_table(_curve("pgd", [0.9, 0.4, 0.01])))
    assert good.passed and not good.flagged_rows
    assert good.numbers["accuracy_at_largest"].tolist() == [0.01]
    stuck = at.check_accuracy_vanishes(_table(_curve("pgd", [0.9, 0.6, 0.5])))
    assert not stuck.passed and stuck.flagged_rows == (0, 1, 2)
    rising = at.check_accuracy_vanishes(_table(_curve("pgd", [0.9, 0.2, 0.4, 0.0],
                                                      eps=(0, 0.1, 0.2, 0.3))))
    assert not rising.passed and rising.numbers["largest_rise"].iloc[0] == pytest.approx(0.2)
    # A black-box curve is not the white-box attack's business.
    assert at.check_accuracy_vanishes(_table(_curve("square", [0.9, 0.8, 0.7]))).passed


def test_check_more_effort_never_helps():
    rows = [dict(attack="pgd", norm="Linf", epsilon=0.1, accuracy=a, steps=s, restarts=r)
            for a, s, r in [(0.5, 10, 1), (0.4, 50, 1), (0.38, 50, 5)]]
    # Compared: 10x1 < 50x1, 10x1 < 50x5, 50x1 < 50x5.
    good = at.check_more_effort_never_helps(_table(rows))
    assert good.passed and len(good.numbers) == 3
    rows[1]["accuracy"] = 0.6  # 50 steps left more images correct than 10 steps
    bad = at.check_more_effort_never_helps(_table(rows))
    assert not bad.passed and bad.flagged_rows == (1,)
    flagged = bad.numbers[bad.numbers["flagged"]]
    assert flagged[["weaker", "stronger"]].values.tolist() == [["10x1", "50x1"]]
    # Steps and restarts raised together count as a stronger run too.
    both = [dict(rows[0]), dict(rows[2], accuracy=0.7)]
    res = at.check_more_effort_never_helps(_table(both))
    assert not res.passed and res.flagged_rows == (1,)
    # Different radii or attacks are never compared.
    other = [dict(rows[0]), dict(rows[1], epsilon=0.2), dict(rows[2], attack="apgd-ce")]
    assert at.check_more_effort_never_helps(_table(other)).numbers.empty


def test_check_black_box_not_better():
    good = _table(_curve("pgd", [0.9, 0.3, 0.0]) + _curve("square", [0.9, 0.5, 0.1]))
    res = at.check_black_box_not_better(good)
    assert res.passed and res.numbers["white_box_accuracy"].tolist() == [0.9, 0.3, 0.0]
    bad = _table(_curve("pgd", [0.9, 0.6, 0.4]) + _curve("apgd-ce", [0.9, 0.55, 0.4])
                 + _curve("square", [0.9, 0.3, 0.0]))
    res = at.check_black_box_not_better(bad)
    assert not res.passed
    # Both white-box curves are flagged at the two radii where Square did better.
    assert sorted(res.flagged_rows) == [1, 2, 4, 5]
    assert res.numbers["best_black_box"].tolist() == ["square"] * 3


def test_check_black_box_compares_the_same_images_only():
    """HopSkipJump on a subset of the images is not compared with white-box numbers on all of
    them (the subset's accuracy differs by sampling alone); Square on the same images is."""
    wb = _curve("pgd", [0.9, 0.6, 0.4], n=100)
    subset = _curve("hopskipjump", [0.9, 0.1, 0.0], n=10)
    assert at.check_black_box_not_better(_table(wb + subset)).passed
    res = at.check_black_box_not_better(_table(wb + subset + _curve("square", [0.9, 0.3, 0.1],
                                                                      n=100)))
    assert not res.passed and res.numbers["best_black_box"].tolist() == ["square"] * 3


def test_check_full_gradient_not_weaker():
    full = _curve("pgd", [0.9, 0.3, 0.0], predict_step=20, attack_step=20)
    trunc = _curve("pgd", [0.9, 0.5, 0.1], predict_step=20, attack_step=4)
    res = at.check_full_gradient_not_weaker(_table(full + trunc))
    assert res.passed
    assert res.numbers["truncation_overestimate"].tolist() == pytest.approx([0.0, 0.2, 0.1])
    res = at.check_full_gradient_not_weaker(_table(trunc + full))  # row order is irrelevant
    assert res.passed
    masked = _curve("pgd", [0.9, 0.6, 0.3], predict_step=20, attack_step=20)
    res = at.check_full_gradient_not_weaker(_table(masked + trunc))
    assert not res.passed and sorted(res.flagged_rows) == [1, 2]


def test_masking_checks_warn_and_mark_the_flagged_rows():
    table = _table(_curve("pgd", [0.9, 0.6, 0.5]) + _curve("square", [0.9, 0.2, 0.0]))
    with pytest.warns(UserWarning, match="black_box_not_better"):
        checks = at.masking_checks(table)
    by_name = {c.name: c for c in checks}
    assert not by_name["accuracy_vanishes"].passed
    assert not by_name["black_box_not_better"].passed
    assert by_name["more_effort_never_helps"].passed
    marked = at.mark_flags(table, checks)
    assert marked["masking_flags"].tolist() == [
        "accuracy_vanishes",
        "accuracy_vanishes;black_box_not_better",
        "accuracy_vanishes;black_box_not_better",
        "", "", "",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        at.masking_checks(_table(_curve("pgd", [0.9, 0.1, 0.0])), warn=True)
    with pytest.raises(ValueError, match="lacks columns"):
        at.masking_checks(table.drop(columns=["epsilon"]))
    assert np.isclose(marked["accuracy"].sum(), table["accuracy"].sum())


def test_strongest_per_point_is_the_minimum_per_kind_and_can_skip_subsets():
    import pandas as pd

    from eplcanet.attacks import strongest_per_point

    table = pd.DataFrame([
        {"attack": "pgd", "norm": "Linf", "epsilon": 0.1, "accuracy": 0.40, "n": 10,
         "masking_flags": ""},
        {"attack": "apgd-ce", "norm": "Linf", "epsilon": 0.1, "accuracy": 0.30, "n": 10,
         "masking_flags": "square_beats_white_box"},
        {"attack": "square", "norm": "Linf", "epsilon": 0.1, "accuracy": 0.20, "n": 10,
         "masking_flags": ""},
        {"attack": "hopskipjump", "norm": "Linf", "epsilon": 0.1, "accuracy": 0.10, "n": 5,
         "masking_flags": ""},
    ])
    kinds = {"white_box": ("pgd", "apgd-ce"), "black_box": ("square", "hopskipjump")}
    every = strongest_per_point(table, kinds).set_index("kind")
    assert every.loc["white_box", ["attack", "accuracy", "n", "flagged"]].tolist() == \
        ["apgd-ce", 0.30, 10, True]
    assert every.loc["black_box", ["attack", "accuracy", "n"]].tolist() == ["hopskipjump", 0.10, 5]
    full = strongest_per_point(table, kinds, full_only=True).set_index("kind")
    assert full.loc["black_box", ["attack", "accuracy", "n", "flagged"]].tolist() == \
        ["square", 0.20, 10, False]
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['square'\]"):
        strongest_per_point(table, {"white_box": ("pgd", "apgd-ce", "hopskipjump")})
