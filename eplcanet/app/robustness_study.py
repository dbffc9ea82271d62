"""Robustness over training seeds: the table and the figure of a robustness study.

Each model of a study is trained with several seeds and attacked with ``main_fast.py --todo
attack`` (attack.csv in each run directory). At every norm and radius, each run contributes the
accuracy of its strongest white-box attack (the minimum over PGD and AutoPGD: each is an upper
bound on the robust accuracy) and of its strongest black-box one; over the seeds of a model this
gives the mean and the 95% Student-t confidence interval (``report.mean_ci``), beside the number
of seeds whose point a gradient-masking check flagged (``attacks.masking_checks``): a flagged
point is reported, never dropped.

    study_points(run_dirs)      one row per (run, norm, epsilon, kind): the per-seed numbers
    summarise(points)           one row per (task, model, norm, epsilon, kind): n seeds, mean,
                                std, CI, seeds flagged, images per seed, the attacks that won
    plots.plot_study(summary, path)   accuracy vs epsilon with CI bands, a panel per (task, norm)
    python -m eplcanet.app.robustness_study study ROOT... [--out DIR]   both files for the runs below ROOT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import pandas as pd

from . import plots
from .analysis import find_runs
from ..attacks import BLACK_BOX, WHITE_BOX, deployed_rows, strongest_per_point
from .report import mean_ci, task_of
from ..runs import load_hyperparameters, read_rows, write_csv
from .entry import Parser, run_command
from .robustness import attack_curves

# Black-box attacks split by what they read: Square the scores, HopSkipJump only the decision;
# HopSkipJump runs on a subset of the images (--hsj-samples), so its accuracy is never mixed into
# another kind's minimum.
KINDS = {"white_box": WHITE_BOX, "score_based": ("square",), "decision_based": ("hopskipjump",)}
assert set(KINDS["score_based"] + KINDS["decision_based"]) == set(BLACK_BOX)
POINT_COLUMNS = ("run", "task", "model", "seed", "norm", "epsilon", "kind", "accuracy", "attack",
                 "n", "flagged")
SUMMARY_COLUMNS = ("task", "model", "norm", "epsilon", "kind", "n_seeds", "mean", "std",
                   "ci_low", "ci_high", "seeds_flagged", "images", "attacks")


def model_label(hp: dict) -> str:
    """How a run appears in the study: its estimator and model, e.g. 'EP CNN', 'BP FFCNN'."""
    return f"{hp.get('alg', '?')} {hp.get('model', '?')}"


def study_points(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """The per-seed numbers: for every run with an attack.csv, at each (norm, epsilon), the
    accuracy of the strongest attack of each kind on the classifier as used (its --T1 relaxation
    steps; ``attacks.deployed_rows``), which attack it was, the images attacked and whether a
    masking check flagged any of the point's rows of that kind. Runs without
    attack.csv are skipped; a run whose attack.csv has no attack column (PGD only, written before
    the ART attacks) is refused, since its strongest attack cannot be told."""
    rows = []
    for run in map(Path, run_dirs):
        path = run / "attack.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path, keep_default_na=False)
        missing = {"attack", "norm", "epsilon", "accuracy", "n"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: no {', '.join(sorted(missing))} column(s); attack the run "
                             f"again with main_fast.py --todo attack --load-path {run}")
        hp = load_hyperparameters(run)
        try:
            points = strongest_per_point(deployed_rows(table, hp.get("T1")), KINDS)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        about = {"run": str(run), "task": task_of(hp), "model": model_label(hp),
                 "seed": hp.get("seed")}
        rows += [{**about, **point} for point in points.to_dict("records")]
    return pd.DataFrame(rows, columns=list(POINT_COLUMNS))


def summarise(points: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% confidence interval over the seeds at each (task, model, norm, epsilon,
    kind); ``images`` is the fewest images any seed attacked, ``attacks`` the strongest attacks
    over the seeds (e.g. 'apgd-ce:2 pgd:1')."""
    out = []
    keys = ["task", "model", "norm", "epsilon", "kind"]
    for key, g in points.groupby(keys, sort=True):
        stats = mean_ci(g["accuracy"].tolist())
        won = g["attack"].value_counts()
        out.append({**dict(zip(keys, key)), "n_seeds": stats["n"], "mean": stats["mean"],
                    "std": stats["std"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
                    "seeds_flagged": int(g["flagged"].sum()), "images": int(g["n"].min()),
                    "attacks": " ".join(f"{a}:{c}" for a, c in won.items())})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as aligned text: mean +- CI half-width in %, seeds, flagged seeds."""
    lines = []
    for _, r in summary.iterrows():
        half = (r["ci_high"] - r["ci_low"]) / 2
        spread = f" +- {100 * half:4.1f}" if pd.notna(half) else " (one seed: no CI)"
        flag = f", FLAGGED in {r['seeds_flagged']} seed(s)" if r["seeds_flagged"] else ""
        lines.append(f"{r['task']:>12s} {r['model']:>12s} {r['norm']:>4s} eps {r['epsilon']:<6.4g}"
                     f" {r['kind']:>9s}: {100 * r['mean']:5.1f}%{spread} ({r['n_seeds']} seeds, "
                     f"{r['images']} images; {r['attacks']}){flag}")
    return "\n".join(lines)


def write_study(roots: Iterable[str | Path],
                out: str | Path) -> tuple[dict[str, Path], pd.DataFrame]:
    """study_points.csv, study.csv (the summary) and study.png for the runs below ``roots``
    into ``out``; returns the files and the summary. Raises ValueError when no run below them
    has an attack.csv."""
    roots = list(roots)
    points = study_points(find_runs(roots))
    if points.empty:
        raise ValueError(f"no run with an attack.csv below {', '.join(map(str, roots))}: run "
                         f"main_fast.py --todo attack --load-path RUN first")
    summary = summarise(points)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"points": out / "study_points.csv", "summary": out / "study.csv"}
    write_csv(points, files["points"])
    write_csv(summary, files["summary"])
    files["figure"] = plots.plot_study(summary, out / "study.png")
    return files, summary


def main(argv: list[str] | None = None) -> None:
    """``python -m eplcanet.app.robustness_study plot OUT.png LABEL=RUN_DIR ...``: one figure of the
    attack.csv curves of several runs (e.g. EP vs BPTT vs LCA-CNN);
    ``python -m eplcanet.app.robustness_study study ROOT... --out DIR``: the multi-seed table and figure of
    the attacked runs below ROOT (eplcanet.app.robustness_study)."""
    p = Parser(prog="python -m eplcanet.app.robustness_study")
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
        missing = [r for r in args.roots if not Path(r).is_dir()]
        if missing:
            p.error(f"ROOT {', '.join(missing)}: no such folder")
        files, summary = write_study(args.roots, args.out)
        print(format_summary(summary))
        print("wrote " + ", ".join(str(f) for f in files.values()))
        return
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
