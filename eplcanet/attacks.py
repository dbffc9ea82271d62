"""Adversarial attacks on energy-based networks, from the Adversarial Robustness Toolbox (ART),
and the checks that tell robustness from gradient masking.

The classifier. :func:`art_classifier` wraps an :class:`~eplcanet.predictor.EquilibriumPredictor`
(pixels in [0, 1] -> logits of the free equilibrium after ``predict_step`` steps, the gradient
flowing through the last ``attack_step`` of them) in ART's ``PyTorchClassifier`` with clip values
[0, 1], so every ART attack runs on pixels and perturbs what a reader would call the image.
The wrapper counts the images it relaxes (with and without a gradient), so each attack reports
its cost in relaxations per image.

The attacks (:data:`ATTACKS`), all untargeted:

- ``pgd``: projected gradient descent on the cross-entropy (Madry et al., 2018), Linf or L2, with
  ``restarts`` random starts (the best one per image is kept; 0 starts at the clean image);
- ``apgd-ce`` / ``apgd-dlr``: AutoPGD (Croce & Hein, 2020) with the cross-entropy or the
  difference-of-logits-ratio loss, step size adapted per image: no step size to tune, and DLR is
  invariant to the scale of the logits (a saturated softmax cannot hide the gradient from it);
- ``square``: the Square attack (Andriushchenko et al., 2020), score-based black-box: it only
  reads the logits, never a gradient, so it is not fooled by masked gradients;
- ``hopskipjump``: HopSkipJump (Chen et al., 2020), decision-based black-box: it only reads the
  predicted class. It finds a minimal perturbation rather than one inside a ball, so one run gives
  the accuracy at every radius: an image counts as broken at eps when its adversarial example
  lies within eps.

Randomness. ART draws its random starts and proposals from NumPy's global generator; every attack
here runs under :func:`seeded`, which seeds NumPy and torch and restores their states afterwards,
so a result is reproducible from its seed and nothing outside changes.

Gradient masking (Athalye et al., 2018; Carlini et al., 2019). A white-box attack that leaves a
network accurate is only evidence of robustness if its gradients were informative. The checks
below read a table of results (one row per attack, norm, epsilon, steps, restarts and
relaxation steps, see :data:`RESULT_COLUMNS`) and return a :class:`Check`: a verdict, a message
and the numbers it used. A failed check is a warning about the white-box numbers, never hidden:
:func:`masking_checks` warns for each and :func:`mark_flags` names them in the table.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .predictor import EquilibriumPredictor

ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "square", "hopskipjump")
WHITE_BOX = ("pgd", "apgd-ce", "apgd-dlr")
BLACK_BOX = ("square", "hopskipjump")
NORMS = ("Linf", "L2")
_ART_NORM = {"Linf": np.inf, "L2": 2}
_NO_ZERO_EPS = ("apgd-ce", "apgd-dlr", "square")

RESULT_COLUMNS = (
    "attack",
    "norm",
    "epsilon",
    "accuracy",
    "n",
    "steps",
    "restarts",
    "predict_step",
    "attack_step",
    "forwards_per_image",
    "gradients_per_image",
)


# --------------------------------------------------------------------------------------------
# The classifier


class _CountingPredictor(nn.Module):
    """The predictor, counting the images it relaxes: ``forwards`` all of them, ``gradients``
    those relaxed with a graph back to the pixels (each followed by one backward pass)."""

    def __init__(self, predictor: EquilibriumPredictor) -> None:
        super().__init__()
        self.predictor = predictor
        self.forwards = 0
        self.gradients = 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Some ART attacks (HopSkipJump) query in float64: relax in the network's own dtype.
        pixels = pixels.to(next(self.parameters(), pixels).dtype)
        finite = torch.isfinite(pixels.flatten(1)).all(1)
        if not bool(finite.all()):
            # ART's L2 Square attack can propose a NaN candidate (0/0 when its window and the
            # remaining budget are both empty). A NaN score is never an improvement to ART, so
            # the candidate is dropped; relaxing it would stop the attack (the LCA refuses NaN).
            logits = pixels.new_full((pixels.shape[0], self.predictor.net.n_classes), float("nan"))
            if bool(finite.any()):
                logits[finite] = self.forward(pixels[finite])
            return logits
        self.forwards += pixels.shape[0]
        if torch.is_grad_enabled() and pixels.requires_grad:
            self.gradients += pixels.shape[0]
        return self.predictor(pixels)


def art_classifier(
    predictor: EquilibriumPredictor,
    input_shape: tuple[int, int, int],
    n_classes: int,
    device: str | torch.device = "cpu",
):
    """ART ``PyTorchClassifier`` on pixels (C, H, W) in [0, 1] around ``predictor``.

    The predictor fixes the relaxation: ``predict_step`` free steps for every prediction, the
    gradient through the last ``attack_step`` of them. Its logits feed ``nn.CrossEntropyLoss``.
    ``classifier.model`` is a counter of relaxed images (see :func:`run_attack`).
    """
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(predictor, EquilibriumPredictor):
        raise TypeError(
            f"predictor must be an EquilibriumPredictor, got {type(predictor).__name__}"
        )
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    device = torch.device(device)
    return PyTorchClassifier(
        model=_CountingPredictor(predictor).to(device),
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=n_classes,
        clip_values=(0.0, 1.0),
        channels_first=True,
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


# --------------------------------------------------------------------------------------------
# Attacks


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's and torch's global generators (ART draws from them), restore them on exit."""
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


@dataclass(frozen=True)
class AttackResult:
    """What one attack found on pixels (N, C, H, W) with labels (N,).

    adversarial: (N, C, H, W) pixels in [0, 1]; accuracy: the fraction of images classified
    correctly both clean and attacked (for ``hopskipjump``, at radius ``epsilon``);
    perturbation: ||adversarial - pixels|| per image in the attack's norm, (N,);
    forwards_per_image / gradients_per_image: relaxations the attack ran per image, all of them
    and those with a backward pass.
    """

    attack: str
    norm: str
    epsilon: float
    adversarial: torch.Tensor
    accuracy: float
    perturbation: torch.Tensor
    steps: int
    restarts: int
    forwards_per_image: float
    gradients_per_image: float

    def row(self, predict_step: int, attack_step: int) -> dict:
        """One row of a results table (:data:`RESULT_COLUMNS`)."""
        return {
            "attack": self.attack,
            "norm": self.norm,
            "epsilon": self.epsilon,
            "accuracy": self.accuracy,
            "n": int(self.perturbation.shape[0]),
            "steps": self.steps,
            "restarts": self.restarts,
            "predict_step": predict_step,
            "attack_step": attack_step,
            "forwards_per_image": self.forwards_per_image,
            "gradients_per_image": self.gradients_per_image,
        }


def perturbation_sizes(delta: np.ndarray | torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image size of delta (N, ...) in ``norm``, (N,)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    flat = torch.as_tensor(delta).flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


def _check_attack_args(attack: str, norm: str, eps: float, steps: int, restarts: int) -> None:
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not (isinstance(eps, (int, float)) and np.isfinite(eps) and eps >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {eps!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(restarts, int) or restarts < 0:
        raise ValueError(f"restarts must be an int >= 0, got {restarts!r}")
    if restarts == 0 and attack not in ("pgd", "apgd-ce", "apgd-dlr"):
        raise ValueError("restarts=0 (start at the clean image) applies to PGD and AutoPGD only")


def _make_attack(
    classifier, attack, norm, eps, steps, restarts, batch_size, eps_step, max_eval, progress
):
    from art.attacks.evasion import (
        AutoProjectedGradientDescent,
        HopSkipJump,
        ProjectedGradientDescent,
        SquareAttack,
    )

    art_norm = _ART_NORM[norm]
    # ART refuses a zero step; at eps 0 the projection cancels any step, so its size is moot.
    positive_eps = eps if eps > 0 else 1.0
    if attack == "pgd":
        return ProjectedGradientDescent(
            classifier,
            norm=art_norm,
            eps=eps,
            eps_step=eps_step if eps_step is not None else 2.5 * positive_eps / steps,
            max_iter=steps,
            num_random_init=restarts,
            batch_size=batch_size,
            verbose=progress,
        )
    if attack in ("apgd-ce", "apgd-dlr"):
        return AutoProjectedGradientDescent(
            classifier,
            norm=art_norm,
            eps=eps,
            # ART starts the adaptive step at 2 * eps_step: 2 eps, as Croce & Hein do.
            eps_step=eps_step if eps_step is not None else positive_eps,
            max_iter=steps,
            nb_random_init=restarts,
            batch_size=batch_size,
            loss_type="cross_entropy" if attack == "apgd-ce" else "difference_logits_ratio",
            verbose=progress,
        )
    if attack == "square":
        return SquareAttack(
            classifier,
            norm=art_norm,
            eps=eps,
            max_iter=steps,
            nb_restarts=restarts,
            batch_size=batch_size,
            verbose=progress,
        )
    return HopSkipJump(
        classifier,
        norm=art_norm,
        max_iter=steps,
        max_eval=max_eval,
        init_eval=min(100, max_eval),
        batch_size=batch_size,
        verbose=progress,
    )


def run_attack(
    classifier,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    attack: str,
    norm: str,
    epsilon: float,
    *,
    steps: int = 20,
    restarts: int = 1,
    eps_step: float | None = None,
    max_eval: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> AttackResult:
    """Run one ART attack on pixels (N, C, H, W) in [0, 1] with labels (N,).

    steps: iterations (PGD, AutoPGD, Square queries, HopSkipJump's max_iter); restarts: random
    starts (the best one per image is kept; 0 starts PGD / AutoPGD at the clean image);
    eps_step: PGD's step (default 2.5 eps / steps, Madry et al.) or AutoPGD's initial half-step
    (default eps); max_eval: HopSkipJump's queries per gradient estimate (ART's default is
    10000). For ``hopskipjump`` epsilon is only the radius its accuracy is read at.
    """
    _check_attack_args(attack, norm, epsilon, steps, restarts)
    pixels = torch.as_tensor(pixels, dtype=torch.float32)
    labels = torch.as_tensor(labels)
    if pixels.dim() != 4 or pixels.shape[1:] != tuple(classifier.input_shape):
        raise ValueError(
            f"pixels must have shape (N, {', '.join(map(str, classifier.input_shape))}), "
            f"got {tuple(pixels.shape)}"
        )
    if labels.shape != (pixels.shape[0],) or pixels.shape[0] == 0:
        raise ValueError(
            f"labels must have shape ({pixels.shape[0]},) with N > 0, got {tuple(labels.shape)}"
        )
    if bool((pixels < 0).any()) or bool((pixels > 1).any()) or not bool(pixels.isfinite().all()):
        raise ValueError("pixels must lie in [0, 1] (convert with eplcanet.predictor.to_pixels)")
    x = pixels.cpu().numpy()
    y = labels.cpu().numpy().astype(np.int64)
    counter = classifier.model
    counter.forwards = counter.gradients = 0
    with seeded(seed):
        clean_pred = classifier.predict(x, batch_size=batch_size).argmax(1)
        forwards0 = counter.forwards
        if epsilon == 0 and attack in _NO_ZERO_EPS:
            # ART refuses eps 0 for these; the ball is the image itself.
            adv = x.copy()
        else:
            att = _make_attack(
                classifier, attack, norm, float(epsilon), steps, restarts, batch_size, eps_step,
                max_eval, progress,
            )
            # Untargeted HopSkipJump takes no labels: it starts from images of another class.
            adv = att.generate(x=x, y=None if attack == "hopskipjump" else y)
            if not np.isfinite(adv).all():
                raise RuntimeError(f"ART's {attack} ({norm}, eps {epsilon}) returned non-finite "
                                   "adversarial examples; its numbers would be meaningless")
        adv_pred = classifier.predict(adv, batch_size=batch_size).argmax(1)
    n = len(y)
    forwards = (counter.forwards - forwards0 - n) / n
    gradients = counter.gradients / n
    size = perturbation_sizes(adv - x, norm)
    correct = (clean_pred == y) & (adv_pred == y)
    if attack == "hopskipjump":
        # A minimal-perturbation attack: broken at eps when its example lies within eps.
        correct = (clean_pred == y) & ((adv_pred == y) | (size.numpy() > epsilon))
    return AttackResult(
        attack=attack,
        norm=norm,
        epsilon=float(epsilon),
        adversarial=torch.from_numpy(adv),
        accuracy=float(correct.mean()),
        perturbation=size,
        steps=steps,
        restarts=restarts,
        forwards_per_image=forwards,
        gradients_per_image=gradients,
    )


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration of a study: run at every epsilon of its norm."""

    attack: str
    norm: str = "Linf"
    steps: int = 20
    restarts: int = 1
    max_eval: int = 1000  # HopSkipJump only

    def __post_init__(self) -> None:
        _check_attack_args(self.attack, self.norm, 0.0, self.steps, self.restarts)


def attack_table(
    classifier,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    specs: Sequence[AttackSpec],
    epsilons: dict[str, Sequence[float]],
    predict_step: int,
    attack_step: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> pd.DataFrame:
    """Every spec at every epsilon of its norm: a DataFrame with :data:`RESULT_COLUMNS`.

    predict_step / attack_step are the classifier's relaxation steps, recorded in each row so
    that tables of several classifiers concatenate into one study. HopSkipJump runs once per
    spec and is read at every epsilon.
    """
    for spec in specs:
        if spec.norm not in epsilons:
            raise ValueError(f"no epsilons given for norm {spec.norm!r} (attack {spec.attack})")
    rows = []
    for spec in specs:
        eps_list = [float(e) for e in epsilons[spec.norm]]
        if spec.attack == "hopskipjump":
            res = run_attack(
                classifier, pixels, labels, spec.attack, spec.norm, 0.0, steps=spec.steps,
                restarts=spec.restarts, max_eval=spec.max_eval, seed=seed, batch_size=batch_size,
                progress=progress,
            )
            for eps in eps_list:
                row = res.row(predict_step, attack_step)
                row["epsilon"] = eps
                row["accuracy"] = _hsj_accuracy(classifier, pixels, labels, res, eps, batch_size)
                rows.append(row)
            continue
        for eps in eps_list:
            res = run_attack(
                classifier, pixels, labels, spec.attack, spec.norm, eps, steps=spec.steps,
                restarts=spec.restarts, seed=seed, batch_size=batch_size, progress=progress,
            )
            rows.append(res.row(predict_step, attack_step))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _hsj_accuracy(classifier, pixels, labels, res: AttackResult, eps: float, batch_size) -> float:
    x = torch.as_tensor(pixels, dtype=torch.float32).numpy()
    y = torch.as_tensor(labels).numpy()
    clean = classifier.predict(x, batch_size=batch_size).argmax(1) == y
    adv = classifier.predict(res.adversarial.numpy(), batch_size=batch_size).argmax(1) == y
    return float((clean & (adv | (res.perturbation.numpy() > eps))).mean())


# --------------------------------------------------------------------------------------------
# Gradient-masking checks


@dataclass(frozen=True)
class Check:
    """A gradient-masking check's verdict: passed, a one-line message, the numbers it compared
    (a DataFrame, one row per comparison, with a ``flagged`` column), and the index labels of
    the table rows it flags."""

    name: str
    passed: bool
    message: str
    numbers: pd.DataFrame
    flagged_rows: tuple = field(default=())


def deployed_rows(table: pd.DataFrame, predict_step: int | None) -> pd.DataFrame:
    """The rows that attack the classifier as it is used: at ``predict_step`` (the run's --T1)
    when the table has it, else at the table's largest predict step; every attack step of it.

    A step study's table holds several classifiers (a prediction after 5 relaxation steps is
    another function than after 20): a minimum over attacks is an upper bound on one
    classifier's robust accuracy only within one predict step. Tables without the column (one
    classifier) come back whole."""
    if "predict_step" not in table.columns or table.empty:
        return table
    steps = set(table["predict_step"])
    chosen = predict_step if predict_step in steps else max(steps)
    return table[table["predict_step"] == chosen]


def strongest_per_point(table: pd.DataFrame, kinds: dict[str, Sequence[str]],
                        full_only: bool = False) -> pd.DataFrame:
    """At each (norm, epsilon) and kind (a name -> the attacks it groups), the lowest accuracy
    over the kind's rows and the attack that reached it: columns norm, epsilon, kind, accuracy,
    attack, n (the fewest images among those rows) and flagged (a masking check flagged one of
    them; False without a masking_flags column). Every attack's accuracy bounds the robust
    accuracy from above, so the minimum is the tightest bound the table holds; kinds are kept
    apart because they measure different attackers. ``full_only``: only the rows that saw as
    many images as the point's largest attack (HopSkipJump on a subset is not comparable).
    Attacks outside every kind are a ValueError."""
    columns = ["norm", "epsilon", "kind", "accuracy", "attack", "n", "flagged"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    _require(table, ["attack", "norm", "epsilon", "accuracy", "n"])
    known = [a for names in kinds.values() for a in names]
    unknown = sorted(set(table["attack"]) - set(known))
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; known: {', '.join(known)}")
    flags = (table["masking_flags"].fillna("").astype(str) if "masking_flags" in table
             else pd.Series("", index=table.index))
    table = table.assign(epsilon=table["epsilon"].astype(float), flagged=flags.str.len() > 0)
    if full_only:
        most = table.groupby(["norm", "epsilon"])["n"].transform("max")
        table = table[table["n"] >= most]
    out = []
    for kind, names in kinds.items():
        part = table[table["attack"].isin(names)]
        for (norm, eps), g in part.groupby(["norm", "epsilon"], sort=True):
            best = g.loc[g["accuracy"].idxmin()]
            out.append({"norm": norm, "epsilon": float(eps), "kind": kind,
                        "accuracy": float(best["accuracy"]), "attack": best["attack"],
                        "n": int(g["n"].min()), "flagged": bool(g["flagged"].any())})
    return pd.DataFrame(out, columns=columns)


def _require(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the results table lacks columns {missing}; it needs {list(columns)}")


_SETTING = ["attack", "norm", "steps", "restarts", "predict_step", "attack_step"]


def check_accuracy_vanishes(table: pd.DataFrame, tol: float = 0.05) -> Check:
    """Every white-box curve must fall to accuracy <= tol at its largest epsilon, and never rise
    with epsilon by more than tol: an attack with informative gradients breaks any network once
    the ball is large enough (at eps 1 in Linf every image can be made any other)."""
    _require(table, _SETTING + ["epsilon", "accuracy"])
    rows, flagged = [], []
    wb = table[table["attack"].isin(WHITE_BOX)]
    for key, g in wb.groupby(_SETTING, sort=True):
        g = g.sort_values("epsilon")
        acc = g["accuracy"].to_numpy()
        rise = float(np.max(np.diff(acc))) if len(acc) > 1 else 0.0
        bad = bool(acc[-1] > tol or rise > tol)
        rows.append(
            dict(zip(_SETTING, key), largest_epsilon=float(g["epsilon"].iloc[-1]),
                 accuracy_at_largest=float(acc[-1]), largest_rise=rise, flagged=bad)
        )
        if bad:
            flagged.extend(g.index.tolist())
    numbers = pd.DataFrame(rows)
    passed = not flagged
    msg = (
        f"every white-box curve falls to <= {tol:.0%}"
        if passed
        else f"{int(numbers['flagged'].sum())} white-box curve(s) stay above {tol:.0%} at their "
        f"largest epsilon or rise with epsilon: gradients may be masked (or the radii too small)"
    )
    return Check("accuracy_vanishes", passed, msg, numbers, tuple(flagged))


def check_more_effort_never_helps(table: pd.DataFrame, slack: float = 0.01) -> Check:
    """A stronger run of the same white-box attack (at least as many steps and restarts, more of
    one) must never leave the accuracy higher than a weaker one by more than ``slack``: if it
    does, the weaker run's optimisation had not converged or its gradients mislead it."""
    _require(table, _SETTING + ["epsilon", "accuracy"])
    keys = ["attack", "norm", "epsilon", "predict_step", "attack_step"]
    rows, flagged = [], []
    wb = table[table["attack"].isin(WHITE_BOX)]
    for key, g in wb.groupby(keys, sort=True):
        for i, weak in g.iterrows():
            for j, strong in g.iterrows():
                more = (strong["steps"], strong["restarts"]) != (weak["steps"], weak["restarts"])
                if not (more and strong["steps"] >= weak["steps"]
                        and strong["restarts"] >= weak["restarts"]):
                    continue
                bad = float(strong["accuracy"]) > float(weak["accuracy"]) + slack
                rows.append(
                    dict(zip(keys, key), weaker=f"{weak['steps']}x{weak['restarts']}",
                         stronger=f"{strong['steps']}x{strong['restarts']}",
                         accuracy_weaker=float(weak["accuracy"]),
                         accuracy_stronger=float(strong["accuracy"]), flagged=bad)
                )
                if bad:
                    flagged.append(j)
    numbers = pd.DataFrame(rows)
    flagged = tuple(dict.fromkeys(flagged))
    passed = not flagged
    if numbers.empty:
        msg = "no weaker / stronger runs of the same attack: nothing compared"
    elif passed:
        msg = f"more steps / restarts never raised accuracy by more than {slack:.1%}"
    else:
        msg = (
            f"{len(flagged)} stronger run(s) left accuracy higher than a weaker one: the "
            f"white-box optimisation is unreliable here"
        )
    return Check("more_effort_never_helps", passed, msg, numbers, flagged)


def check_black_box_not_better(table: pd.DataFrame, slack: float = 0.01) -> Check:
    """At each (norm, epsilon, relaxation steps), the strongest white-box attack must leave
    accuracy no higher than the best black-box attack on the same images + ``slack``. A
    black-box attack sees no gradient; when it does better, the white-box numbers are flagged as
    masked."""
    _require(table, ["attack", "norm", "epsilon", "accuracy", "predict_step", "attack_step"])
    keys = ["norm", "epsilon", "predict_step", "attack_step"]
    rows, flagged = [], []
    for key, g in table.groupby(keys, sort=True):
        wb, bb = g[g["attack"].isin(WHITE_BOX)], g[g["attack"].isin(BLACK_BOX)]
        if "n" in g.columns and not wb.empty:
            # only black-box runs on the same images (HopSkipJump runs on a subset: its
            # accuracy there differs from the full set's by sampling alone)
            bb = bb[bb["n"] == wb["n"].max()]
        if wb.empty or bb.empty:
            continue
        w, b = float(wb["accuracy"].min()), float(bb["accuracy"].min())
        bad = w > b + slack
        rows.append(
            dict(zip(keys, key), white_box_accuracy=w, black_box_accuracy=b,
                 best_black_box=bb.loc[bb["accuracy"].idxmin(), "attack"], flagged=bad)
        )
        if bad:
            flagged.extend(wb.index.tolist())
    numbers = pd.DataFrame(rows)
    passed = not flagged
    if numbers.empty:
        msg = "no point has both a white-box and a black-box attack: nothing compared"
    elif passed:
        msg = "no black-box attack beat the white-box attacks"
    else:
        msg = (
            f"a black-box attack beat every white-box attack at {int(numbers['flagged'].sum())} "
            f"point(s): the white-box numbers there are masked"
        )
    return Check("black_box_not_better", passed, msg, numbers, tuple(flagged))


def check_full_gradient_not_weaker(table: pd.DataFrame, slack: float = 0.01) -> Check:
    """Full gradient (attack_step == predict_step) against truncated (attack_step <
    predict_step), same attack and prediction: the full gradient is the exact one and must do at
    least as well (accuracy no higher + ``slack``). When a truncated gradient does better, the
    full gradient through the relaxation is masked (vanishing or exploding through the steps)
    and the full-gradient rows are flagged. The numbers also show how much truncation
    overestimates robustness."""
    _require(table, _SETTING + ["epsilon", "accuracy"])
    keys = ["attack", "norm", "epsilon", "steps", "restarts", "predict_step"]
    rows, flagged = [], []
    wb = table[table["attack"].isin(WHITE_BOX)]
    for key, g in wb.groupby(keys, sort=True):
        full = g[g["attack_step"] == g["predict_step"]]
        trunc = g[g["attack_step"] < g["predict_step"]]
        if full.empty or trunc.empty:
            continue
        f = float(full["accuracy"].min())
        for _, t in trunc.iterrows():
            bad = f > float(t["accuracy"]) + slack
            rows.append(
                dict(zip(keys, key), attack_step=int(t["attack_step"]), accuracy_full=f,
                     accuracy_truncated=float(t["accuracy"]),
                     truncation_overestimate=float(t["accuracy"]) - f, flagged=bad)
            )
            if bad:
                flagged.extend(full.index.tolist())
    numbers = pd.DataFrame(rows)
    flagged = tuple(dict.fromkeys(flagged))
    passed = not flagged
    if numbers.empty:
        msg = "no full-gradient / truncated pair: nothing compared"
    elif passed:
        msg = "the full gradient did at least as well as every truncation"
    else:
        msg = "a truncated gradient beat the full gradient: the full-gradient numbers are masked"
    return Check("full_gradient_not_weaker", passed, msg, numbers, flagged)


MASKING_CHECKS = (
    check_accuracy_vanishes,
    check_more_effort_never_helps,
    check_black_box_not_better,
    check_full_gradient_not_weaker,
)


def masking_checks(table: pd.DataFrame, warn: bool = True) -> list[Check]:
    """Run every gradient-masking check on a results table; each failed one is also issued as a
    ``UserWarning`` (``warn=False`` only returns them)."""
    _require(table, RESULT_COLUMNS[:4])
    checks = [check(table) for check in MASKING_CHECKS]
    if warn:
        for c in checks:
            if not c.passed:
                warnings.warn(f"gradient masking check {c.name}: {c.message}", stacklevel=2)
    return checks


def mark_flags(table: pd.DataFrame, checks: Sequence[Check]) -> pd.DataFrame:
    """A copy of the table with a ``masking_flags`` column: the names of the checks that flag
    each row, ';'-separated ('' where none does)."""
    flags = {i: [] for i in table.index}
    for c in checks:
        for i in c.flagged_rows:
            flags[i].append(c.name)
    out = table.copy()
    out["masking_flags"] = [";".join(flags[i]) for i in table.index]
    return out
