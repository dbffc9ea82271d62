"""``main_fast.py --todo attack`` and ``--todo corrupt`` on a trained run (the study over
seeds and runs: :mod:`eplcanet.app.robustness_study`).

The attacks come from the Adversarial Robustness Toolbox (:mod:`eplcanet.attacks`) around
:class:`eplcanet.predictor.EquilibriumPredictor` (pixel inputs, step semantics there): ``--todo
attack`` runs :data:`DRIVER_ATTACKS` at every radius, writes the table (``attack.csv``, the
columns of ``attacks.RESULT_COLUMNS`` plus ``masking_flags``) and the gradient-masking checks
(``masking_checks.csv``) and prints a warning for each failed check. Rows of an earlier
``attack.csv`` that the call does not measure again are kept (:func:`with_earlier_rows`).
``--todo corrupt`` measures :mod:`eplcanet.corruptions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..corruptions import CORRUPTION_FIELDS, evaluate_corruptions
from ..energy.networks import EnergyNet
from ..predictor import EquilibriumPredictor, dataset_normalization, dataset_pixels
from ..runs import write_csv

if TYPE_CHECKING:  # the settings import this module's names for their flags
    from .settings import Settings

NORMS = ("Linf", "L2")
NORM_CHOICES = ("Linf", "L2", "both")

# Default radii in pixel units: MNIST-scale for grey images, CIFAR-scale for colour images.
_DEFAULT_EPSILONS = {
    ("Linf", 1): (0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    ("L2", 1): (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    ("Linf", 3): (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
    ("L2", 3): (0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
}


def default_epsilons(norm: str, channels: int) -> tuple[float, ...]:
    """Default radii for `norm`: MNIST-scale for 1-channel images, CIFAR-scale for 3 channels."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return _DEFAULT_EPSILONS[(norm, 3 if channels == 3 else 1)]


def _shown(values) -> str:
    return " ".join(map(str, values))


def step_pairs(cfg: Settings) -> list[tuple[int, int]]:
    """The (predict step, attack step) pairs of --todo attack: every --attack-step up to each
    --predict-step (default: the full gradient, attack step = predict step)."""
    r = cfg.robustness
    return [(p, a) for p in r.predict_step for a in (r.attack_step or [p]) if a <= p]


def run_todo(cfg: Settings, net: EnergyNet, splits, device, run_dir: Path) -> dict:
    """--todo attack / corrupt on `net`, which holds the run's trained weights (experiment.run
    loads the best model of --load-path before dispatching here).

    Attacks a seeded random subset of --attack-samples test images (default all) and writes
    attack.csv + attack.png, or corruptions.csv + corruptions.png, into the run directory.
    """
    from . import plots

    r, todo = cfg.robustness, cfg.run.todo
    net.eval()
    mean, std = dataset_normalization(splits.test)
    # never empty: the settings keep every --attack-step within the largest --predict-step
    pairs = step_pairs(cfg) if todo == "attack" else [(p, p) for p in r.predict_step]
    try:
        models = [EquilibriumPredictor(net, p, a, mean, std).to(device) for p, a in pairs]
    except ValueError as exc:
        raise SystemExit(f"error: --attack-step / --predict-step: {exc}") from None
    n_test = len(splits.test)
    n = min(r.attack_samples, n_test)
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(cfg.run.seed))
    pixels, labels = dataset_pixels(splits.test, order[:n].sort().values)
    print(
        f"{todo}: {n} of {n_test} test images, predict-step {_shown(r.predict_step)}"
        + (f", (predict, attack) steps {' '.join(f'{p}/{a}' for p, a in pairs)}"
           if todo == "attack" else "")
    )
    if todo == "attack":
        norms = NORMS if r.attack_norm == "both" else (r.attack_norm,)
        epsilons = {norm: r.epsilons if r.epsilons is not None
                    else default_epsilons(norm, pixels.shape[1]) for norm in norms}
        rows, csv_path, png = _run_attacks(cfg, models, pixels, labels, epsilons, run_dir,
                                           device)
    else:
        rows = [row for model in models for row in evaluate_corruptions(
            model, pixels, labels, r.corruptions, r.severities,
            batch_size=max(cfg.optim.mbs, 256), seed=cfg.run.seed)]
        csv_path = write_csv(rows, run_dir / "corruptions.csv", CORRUPTION_FIELDS)
        png = plots.plot_corruptions(rows, run_dir / "corruptions.png")
        for row in rows:
            print(f"{row['corruption']:>14s} severity {row['severity']}: "
                  f"{100 * row['accuracy']:.1f}%")
    print(f"wrote {csv_path} and {png}")
    return {"rows": rows, "csv": csv_path, "png": png}


# What --todo attack runs at every radius of each norm: (attack, steps as a multiple of
# --pgd-steps, restarts). The second PGD (twice the steps and restarts) feeds the check that more
# effort never raises accuracy; Square (score-based, no gradient) feeds the black-box check.
DRIVER_ATTACKS = (
    ("pgd", 1, 1),
    ("pgd", 2, 2),
    ("apgd-ce", 1, 1),
    ("apgd-dlr", 1, 1),
    ("square", 10, 1),
)
# The names --attacks accepts.
ATTACK_NAMES = (*dict.fromkeys(name for name, _, _ in DRIVER_ATTACKS), "hopskipjump")
# HopSkipJump, decision-based (it reads predicted labels only), runs once per norm on the first
# --hsj-samples attacked images: --pgd-steps iterations of HSJ_EVALS predictions per gradient
# estimate (ART's default, 10000, is out of reach through a relaxation), read at every radius.
HSJ_EVALS = 100


def _run_attacks(cfg: Settings, models, pixels, labels, epsilons, run_dir: Path, device):
    """The ART attacks of DRIVER_ATTACKS on each predictor (one per (predict, attack) steps
    pair): attack.csv (with masking_flags), masking_checks.csv (one row per comparison of each
    check) and attack.png; with several pairs also steps.png (plots.plot_step_study)."""
    import warnings

    import pandas as pd

    from .. import attacks
    from . import plots

    r = cfg.robustness
    specs = [
        attacks.AttackSpec(name, norm, factor * r.pgd_steps, restarts)
        for norm in epsilons
        for name, factor, restarts in DRIVER_ATTACKS
        if r.attacks is None or name in r.attacks
    ]
    wanted = r.attacks is None or "hopskipjump" in r.attacks
    hsj_images = min(r.hsj_samples, len(pixels))  # HopSkipJump's subset, run or not
    hsj = hsj_images if wanted else 0
    decision = [attacks.AttackSpec("hopskipjump", norm, r.pgd_steps, 1, HSJ_EVALS)
                for norm in epsilons]
    tables = []
    for model in models:
        classifier = attacks.art_classifier(
            model, tuple(pixels.shape[1:]), model.net.n_classes, device
        )
        tables.append(attacks.attack_table(
            classifier, pixels, labels, specs, epsilons, model.predict_step, model.attack_step,
            seed=cfg.run.seed, batch_size=cfg.optim.mbs, progress=True,
        ))
        if hsj:
            tables.append(attacks.attack_table(
                classifier, pixels[:hsj], labels[:hsj], decision, epsilons, model.predict_step,
                model.attack_step, seed=cfg.run.seed, batch_size=cfg.optim.mbs, progress=True,
            ))
    table = with_earlier_rows(pd.concat(tables, ignore_index=True), Path(run_dir) / "attack.csv",
                              len(pixels), hsj_images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks = attacks.masking_checks(table)
    for w in caught:
        print(f"WARNING: {w.message}")
    table = attacks.mark_flags(table, checks)
    csv_path = write_csv(table, Path(run_dir) / "attack.csv")
    numbers = [
        c.numbers.assign(check=c.name, passed=c.passed, message=c.message)
        for c in checks
        if not c.numbers.empty
    ]
    # convert_dtypes keeps integer columns integers where other checks' rows leave them empty.
    summary = pd.concat(numbers, ignore_index=True).convert_dtypes() if numbers else pd.DataFrame(
        columns=["check", "passed", "message"]
    )
    write_csv(summary, csv_path.with_name("masking_checks.csv"))
    rows = table.to_dict("records")
    label = _run_label(cfg)
    deployed = attacks.deployed_rows(table, cfg.estimator.T1).to_dict("records")
    png = plots.plot_robustness(
        attack_curves(label, deployed), Path(run_dir) / "attack.png",
        title=f"ART attacks, predict-step {deployed[0]['predict_step']}"
    )
    if len(models) > 1:
        print(f"wrote {plots.plot_step_study(table, Path(run_dir) / 'steps.png', label)}")
    for r in rows:
        print(
            f"{r['predict_step']:>3d}/{r['attack_step']:<3d} "
            f"{r['norm']:>4s} eps {r['epsilon']:.4g} {r['attack']:>11s} "
            f"{r['steps']}x{r['restarts']}: "
            f"{100 * r['accuracy']:.1f}% ({r['forwards_per_image']:.0f} relaxations per image)"
            + (f" FLAGGED {r['masking_flags']}" if r["masking_flags"] else "")
        )
    return rows, csv_path, png


# What makes two attack.csv rows the same measurement (the run's seed fixes the images).
ATTACK_KEY = ("attack", "norm", "epsilon", "steps", "restarts", "predict_step", "attack_step")


def with_earlier_rows(table, csv_path: Path, n_images: int, n_decision: int):
    """The new rows plus those of the run's earlier attack.csv that this call did not measure
    again, so that adding an attack (say --attacks hopskipjump) to an attacked run keeps the
    others and the masking checks see them all. The earlier rows are kept only if they attacked
    the same images as this call (the run's seed, and n equal to this call's --attack-samples, or
    --hsj-samples for HopSkipJump); otherwise the earlier file is moved to attack_earlier.csv."""
    import pandas as pd

    if not csv_path.is_file():
        return table
    try:
        earlier = pd.read_csv(csv_path, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        earlier = pd.DataFrame()
    columns = [*ATTACK_KEY, "n"]
    if not set(columns) <= set(earlier.columns):
        return _set_aside(table, csv_path, "it is not a table of this version's attacks")
    expected = (earlier["attack"] == "hopskipjump").map({True: n_decision, False: n_images})
    if (earlier["n"] != expected).any():
        counts = _shown(sorted(set(earlier["n"])))
        return _set_aside(table, csv_path, f"it attacked other images (n {counts}; this call: "
                          f"{n_images}, HopSkipJump {n_decision})")
    done = pd.MultiIndex.from_frame(table[list(ATTACK_KEY)])
    kept = earlier[~pd.MultiIndex.from_frame(earlier[list(ATTACK_KEY)]).isin(done)]
    if kept.empty:
        return table
    print(f"attack.csv: kept {len(kept)} rows of the earlier attacks not run again "
          f"({_shown(dict.fromkeys(kept['attack']))})")
    kept = kept[[c for c in table.columns if c in kept.columns]]
    return pd.concat([kept, table], ignore_index=True)


def _set_aside(table, csv_path: Path, why: str):
    aside = csv_path.with_name("attack_earlier.csv")
    csv_path.replace(aside)
    print(f"attack.csv: the earlier table cannot be merged ({why}); moved to {aside}")
    return table


def attack_curves(label: str, rows: list[dict]) -> dict[str, list[dict]]:
    """An attack.csv's rows as one curve per attack run, {"LABEL, ATTACK STEPSxRESTARTS": rows},
    for plots.plot_robustness; the (predict, attack) relaxation steps join the name when the
    rows hold several (a step study)."""
    pairs = {(r.get("predict_step"), r.get("attack_step")) for r in rows}

    def run(r: dict) -> tuple:
        return (r["attack"], r["steps"], r["restarts"], r.get("predict_step"),
                r.get("attack_step"))

    def name(a, s, n, p, q) -> str:
        return f"{label}, {a} {s}x{n}" + (f", steps {p}/{q}" if len(pairs) > 1 else "")

    runs = dict.fromkeys(run(r) for r in rows)
    return {name(*key): [r for r in rows if run(r) == key] for key in runs}


def _run_label(cfg: Settings) -> str:
    return f"{cfg.estimator.alg} {cfg.model.model}"
