"""``main_fast.py --todo attack`` and ``--todo corrupt`` on a trained run, and the command
``python -m eplcanet.app.robustness study | plot``.

The attacks come from the Adversarial Robustness Toolbox (:mod:`eplcanet.attacks`) around
:class:`eplcanet.predictor.EquilibriumPredictor` (pixel inputs, step semantics there): ``--todo
attack`` runs :data:`DRIVER_ATTACKS` at every radius, writes the table (``attack.csv``, the
columns of ``attacks.RESULT_COLUMNS`` plus ``masking_flags``) and the gradient-masking checks
(``masking_checks.csv``) and prints a warning for each failed check. ``--todo corrupt`` measures
:mod:`eplcanet.corruptions`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..corruptions import CORRUPTION_FIELDS, CORRUPTIONS, SEVERITIES, evaluate_corruptions
from ..energy.networks import EnergyNet
from ..predictor import EquilibriumPredictor, dataset_normalization, dataset_pixels
from ..runs import read_rows, write_rows
from .entry import Parser, run_command

ROBUSTNESS_TODOS = ("attack", "corrupt")
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



# --------------------------------------------------------------------------------------------
# main_fast.py --todo attack / corrupt


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate the robustness flags (before any data is loaded); fill their defaults.

    Raises SystemExit naming the flag and the accepted values.
    """
    if not args.load_path:
        raise SystemExit(f"error: --todo {args.todo} needs --load-path RUN_DIR (a trained run)")
    if args.attack_norm not in NORM_CHOICES:
        raise SystemExit(
            f"error: --attack-norm must be one of {', '.join(NORM_CHOICES)}, "
            f"got {args.attack_norm!r}"
        )
    if args.epsilons is not None:
        if args.attack_norm == "both":
            raise SystemExit(
                "error: --epsilons needs --attack-norm Linf or L2 (Linf and L2 radii "
                "have different scales; leave --epsilons out for both defaults)"
            )
        if not args.epsilons or any(not e >= 0 for e in args.epsilons):
            raise SystemExit(f"error: --epsilons must be numbers >= 0, got {args.epsilons}")
    # Several values of either make a step study (step_pairs); a run saved before the flags took
    # lists holds one number.
    args.predict_step = _steps(args.predict_step, [args.T1])
    args.attack_step = _steps(args.attack_step, None)
    if min(args.predict_step) < 1:
        raise SystemExit(f"error: --predict-step must be >= 1, got {_shown(args.predict_step)}")
    if args.attack_step is not None:
        top = max(args.predict_step)
        bad = [a for a in args.attack_step if not 1 <= a <= top]
        if bad:
            raise SystemExit(f"error: --attack-step must be in [1, --predict-step ({top})], got "
                             f"{_shown(bad)}")
    names = (*dict.fromkeys(name for name, _, _ in DRIVER_ATTACKS), "hopskipjump")
    if args.attacks is not None:
        bad = [a for a in args.attacks if a not in names]
        if bad or not args.attacks:
            raise SystemExit(f"error: unknown --attacks {bad}; accepted: {', '.join(names)}")
    if args.pgd_steps < 1:
        raise SystemExit(f"error: --pgd-steps must be >= 1, got {args.pgd_steps}")
    if args.attack_samples is not None and args.attack_samples < 1:
        raise SystemExit(f"error: --attack-samples must be >= 1, got {args.attack_samples}")
    bad = [c for c in args.corruptions if c not in CORRUPTIONS]
    if bad:
        raise SystemExit(f"error: unknown --corruptions {bad}; accepted: {', '.join(CORRUPTIONS)}")
    bad = [s for s in args.severities if s not in SEVERITIES]
    if bad:
        raise SystemExit(f"error: --severities must be among 1 2 3 4 5, got {bad}")
    return args


def _steps(value, default):
    """A step flag as a sorted list without repeats (None: the default)."""
    if value is None:
        return default
    return sorted(set([value] if isinstance(value, int) else value))


def _shown(values) -> str:
    return " ".join(map(str, values))


def step_pairs(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The (predict step, attack step) pairs of --todo attack: every --attack-step up to each
    --predict-step (default: the full gradient, attack step = predict step)."""
    return [(p, a) for p in args.predict_step for a in (args.attack_step or [p]) if a <= p]


def run_todo(args: argparse.Namespace, net: EnergyNet, splits, device, run_dir: Path) -> dict:
    """--todo attack / corrupt on `net`, which holds the run's trained weights (experiment.run
    loads the best model of --load-path before dispatching here).

    Attacks a seeded random subset of --attack-samples test images (default all) and writes
    attack.csv + attack.png, or corruptions.csv + corruptions.png, into the run directory.
    """
    from . import plots

    check_args(args)
    net.eval()
    mean, std = dataset_normalization(splits.test)
    # never empty: check_args keeps every --attack-step within the largest --predict-step
    pairs = step_pairs(args) if args.todo == "attack" else [(p, p) for p in args.predict_step]
    try:
        models = [EquilibriumPredictor(net, p, a, mean, std).to(device) for p, a in pairs]
    except ValueError as exc:
        raise SystemExit(f"error: --attack-step / --predict-step: {exc}") from None
    n_test = len(splits.test)
    n = n_test if args.attack_samples is None else min(args.attack_samples, n_test)
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(args.seed))
    pixels, labels = dataset_pixels(splits.test, order[:n].sort().values)
    print(
        f"{args.todo}: {n} of {n_test} test images, predict-step {_shown(args.predict_step)}"
        + (f", (predict, attack) steps {' '.join(f'{p}/{a}' for p, a in pairs)}"
           if args.todo == "attack" else "")
    )
    if args.todo == "attack":
        norms = NORMS if args.attack_norm == "both" else (args.attack_norm,)
        epsilons = {
            norm: args.epsilons
            if args.epsilons is not None
            else default_epsilons(norm, pixels.shape[1])
            for norm in norms
        }
        rows, csv_path, png = _run_attacks(args, models, pixels, labels, epsilons, run_dir,
                                           device)
    else:
        rows = [r for model in models for r in evaluate_corruptions(
            model,
            pixels,
            labels,
            args.corruptions,
            args.severities,
            batch_size=max(args.mbs, 256),
            seed=args.seed,
        )]
        csv_path = write_rows(rows, CORRUPTION_FIELDS, run_dir / "corruptions.csv")
        png = plots.plot_corruptions(rows, run_dir / "corruptions.png")
        for r in rows:
            print(f"{r['corruption']:>14s} severity {r['severity']}: {100 * r['accuracy']:.1f}%")
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
# HopSkipJump, decision-based (it reads predicted labels only), runs once per norm on the first
# --hsj-samples attacked images: --pgd-steps iterations of HSJ_EVALS predictions per gradient
# estimate (ART's default, 10000, is out of reach through a relaxation), read at every radius.
HSJ_EVALS = 100


def _run_attacks(args, models, pixels, labels, epsilons, run_dir: Path, device):
    """The ART attacks of DRIVER_ATTACKS on each predictor (one per (predict, attack) steps
    pair): attack.csv (with masking_flags), masking_checks.csv (one row per comparison of each
    check) and attack.png; with several pairs also steps.png (plots.plot_step_study)."""
    import warnings

    import pandas as pd

    from .. import attacks
    from . import plots
    from ..runs import atomic_write_text

    specs = [
        attacks.AttackSpec(name, norm, factor * args.pgd_steps, restarts)
        for norm in epsilons
        for name, factor, restarts in DRIVER_ATTACKS
        if args.attacks is None or name in args.attacks
    ]
    wanted = args.attacks is None or "hopskipjump" in args.attacks
    hsj = min(args.hsj_samples, len(pixels)) if wanted else 0
    decision = [attacks.AttackSpec("hopskipjump", norm, args.pgd_steps, 1, HSJ_EVALS)
                for norm in epsilons]
    tables = []
    for model in models:
        classifier = attacks.art_classifier(
            model, tuple(pixels.shape[1:]), model.net.n_classes, device
        )
        tables.append(attacks.attack_table(
            classifier, pixels, labels, specs, epsilons, model.predict_step, model.attack_step,
            seed=args.seed, batch_size=args.mbs, progress=True,
        ))
        if hsj:
            tables.append(attacks.attack_table(
                classifier, pixels[:hsj], labels[:hsj], decision, epsilons, model.predict_step,
                model.attack_step, seed=args.seed, batch_size=args.mbs, progress=True,
            ))
    table = pd.concat(tables, ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks = attacks.masking_checks(table)
    for w in caught:
        print(f"WARNING: {w.message}")
    table = attacks.mark_flags(table, checks)
    csv_path = Path(run_dir) / "attack.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table.to_csv(index=False, lineterminator="\n"), csv_path)
    numbers = [
        c.numbers.assign(check=c.name, passed=c.passed, message=c.message)
        for c in checks
        if not c.numbers.empty
    ]
    # convert_dtypes keeps integer columns integers where other checks' rows leave them empty.
    summary = pd.concat(numbers, ignore_index=True).convert_dtypes() if numbers else pd.DataFrame(
        columns=["check", "passed", "message"]
    )
    atomic_write_text(
        summary.to_csv(index=False, lineterminator="\n"), csv_path.with_name("masking_checks.csv")
    )
    rows = table.to_dict("records")
    label = _run_label(args)
    deployed = attacks.deployed_rows(table, args.T1).to_dict("records")
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


def _run_label(args: argparse.Namespace) -> str:
    return f"{args.alg} {args.model}"


def main(argv: list[str] | None = None) -> None:
    """``python -m eplcanet.app.robustness plot OUT.png LABEL=RUN_DIR ...``: one figure of the
    attack.csv curves of several runs (e.g. EP vs BPTT vs LCA-CNN);
    ``python -m eplcanet.app.robustness study ROOT... --out DIR``: the multi-seed table and figure of
    the attacked runs below ROOT (eplcanet.app.robustness_study)."""
    p = Parser(prog="python -m eplcanet.app.robustness")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("study", help="mean and 95%% CI over seeds of the attacked runs below "
                        "ROOT: study_points.csv, study.csv, study.png")
    st.add_argument("roots", nargs="+", metavar="ROOT", help="folders holding run directories")
    st.add_argument("--out", required=True, help="folder for the three files")
    pl = sub.add_parser("plot", help="accuracy vs epsilon of several runs in one figure")
    pl.add_argument("out", help="the PNG to write")
    pl.add_argument(
        "runs",
        nargs="+",
        metavar="LABEL=RUN_DIR",
        help="a legend label and a run directory holding attack.csv",
    )
    pl.add_argument("--title", default=None)
    args = p.parse_args(argv)
    if args.command == "study":
        from .robustness_study import format_summary, write_study

        missing = [r for r in args.roots if not Path(r).is_dir()]
        if missing:
            p.error(f"ROOT {', '.join(missing)}: no such folder")
        files, summary = write_study(args.roots, args.out)
        print(format_summary(summary))
        print("wrote " + ", ".join(str(f) for f in files.values()))
        return
    from . import plots

    curves = {}
    for item in args.runs:
        label, sep, run = item.partition("=")
        if not sep or not label or not run:
            p.error(f"runs must be LABEL=RUN_DIR, got {item!r}")
        csv_path = Path(run) / "attack.csv"
        if not csv_path.is_file():
            p.error(f"{csv_path} not found: run main_fast.py --todo attack --load-path {run}")
        curves.update(attack_curves(label, read_rows(csv_path)))
    print(plots.plot_robustness(curves, args.out, title=args.title or "ART attacks"))


if __name__ == "__main__":
    sys.exit(run_command(main))
