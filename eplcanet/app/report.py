"""Multi-seed studies: mean, standard deviation and 95% confidence interval per configuration.

    python -m eplcanet.app.report RUN_DIR... [--out DIR] [--metrics NAME...] [--curves NAME...]
                                  [--per-seed NAME...]

Each RUN_DIR is a run directory (metrics.csv + hyperparameters.json, as ``main_fast.py --save``
writes) or a directory above runs (every run below it is read). Runs are grouped into
configurations by every hyperparameter that differs between them, except the seed and
bookkeeping (IGNORED_HPARAMS: paths, device, the command line); within a configuration the
runs are the seeds. ``--per-seed NAME`` names hyperparameters that change with the seed by
design (e.g. lca_dict when every seed learns its dictionary on its own training split): they
never split a configuration. For each configuration and metric the report gives the number of seeds n,
the mean, the sample standard deviation (ddof=1) and the 95% confidence interval of the mean,
mean +- t_{0.975, n-1} * std / sqrt(n) (Student t). With one seed, std and the interval are
undefined: the tables say so ("n/a (1 seed)") and a warning names the configuration.

Written to --out (default ./results/report):

    runs.csv       one row per run: its configuration, seed and metrics
    summary.csv    one row per (configuration, metric): n, seeds, mean, std, ci_low, ci_high
    summary.md     the same as a Markdown table, accuracies in percent (also printed)
    curves.png     learning curves per configuration: mean over seeds, 95% CI band

Metrics are data-driven: the final-epoch accuracies, the best validation accuracy and the test
accuracy at that epoch, plus whatever robustness summaries the runs hold (attack.csv,
corruptions.csv; see eplcanet.app.analysis.run_summary), so robustness studies use the same
command. Every input is checked before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .analysis import find_runs, run_summary
from .entry import Parser
from ..runs import atomic_write_text, load_hyperparameters, read_metrics, write_csv

# Hyperparameters that never make two runs different configurations: the seed (the runs of a
# configuration are its seeds) and bookkeeping that does not change what is computed.
IGNORED_HPARAMS = frozenset(
    {"seed", "command", "results_dir", "save", "device", "load_path", "data_dir", "data_path"}
)
# Per-run scalars of run_summary that are not metrics.
_NOT_METRICS = frozenset({"run", "epochs_done", "best_epoch"})
# Reported unless --metrics says otherwise; robustness summaries are added when runs have them.
DEFAULT_METRICS = ("final_test_acc", "test_acc_at_best", "best_val_acc")
# A test-selected number (the best test accuracy over epochs) is never reported by default.
_TEST_SELECTED = frozenset({"max_test_acc"})
CURVE_METRICS = ("train_acc", "val_acc", "test_acc", "train_loss")
CONFIDENCE = 0.95


class ReportError(ValueError):
    """Run directories that cannot be reported on, with the reason and the runs concerned."""


@dataclass
class Study:
    """Runs read by load_study.

    table: one row per run: "run", one column per key, "config" (a label such as
        "T1=12 lrs=[0.1]", "all runs" when every run has the same configuration), "seed",
        "epochs_done", then one column per metric.
    keys: the hyperparameters that differ between runs (seed and IGNORED_HPARAMS aside).
    metrics: the metric columns of table that hold at least one value.
    curves: metrics.csv of each run (by its "run" path) as a DataFrame indexed by epoch.
    """

    table: pd.DataFrame
    keys: list[str]
    metrics: list[str]
    curves: dict[str, pd.DataFrame]

    def default_metrics(self) -> list[str]:
        """DEFAULT_METRICS plus the robustness summaries present (never a test-selected one)."""
        robust = [m for m in self.metrics
                  if m.startswith(("whitebox_", "blackbox_", "corruption_"))]
        return [m for m in DEFAULT_METRICS if m in self.metrics] + robust


# --------------------------------------------------------------------------------------------
# Statistics


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """n, mean, sample std (ddof=1) and the Student-t confidence interval of the mean.

    values: the per-seed numbers (NaN entries are dropped). With n < 2, std, ci_low, ci_high
    and ci_half are NaN: one seed says nothing about the spread.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    out = {"n": n, "mean": float(x.mean()) if n else math.nan}
    if n < 2:
        return {**out, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "ci_half": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return {**out, "std": std, "ci_low": out["mean"] - half, "ci_high": out["mean"] + half,
            "ci_half": half}


# --------------------------------------------------------------------------------------------
# Reading runs


def _hashable(value: Any) -> Any:
    """A hyperparameter value as a comparable, printable cell (lists as JSON text)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def task_of(hp: dict[str, Any]) -> str:
    """What a run was trained on: the task, and the data file's name for task npz."""
    task = str(hp.get("task", "?"))
    if hp.get("data_path"):
        task += f" ({Path(str(hp['data_path'])).name})"
    return task


def load_study(run_dirs: Iterable[str | Path], allow_incomplete: bool = False,
               per_seed: Iterable[str] = ()) -> Study:
    """Read run directories (or directories above runs) into a Study; the hyperparameters in
    per_seed vary with the seed by design and never split a configuration.

    The metrics are run_summary's (final and best-validation accuracies, robustness
    summaries). Raises ReportError, naming the runs, for: no run found, a run
    without metrics.csv, hyperparameters.json or any finished epoch, an unreadable metrics
    file, runs of different tasks, a run with fewer epochs than it was started for (unless
    allow_incomplete), and two runs of one configuration with the same seed.
    """
    given = [Path(p) for p in run_dirs]
    if not given:
        raise ReportError("no run directories given: pass run directories or folders above them")
    missing = [str(p) for p in given if not p.is_dir()]
    if missing:
        raise ReportError(f"not a directory: {', '.join(missing)}")
    runs: list[Path] = []
    for path in given:
        found = find_runs([path])
        if not found:
            raise ReportError(f"{path}: no run directory (metrics.csv, hyperparameters.json) in it")
        runs += [r for r in found if r not in runs]

    hparams: dict[Path, dict[str, Any]] = {}
    curves: dict[str, pd.DataFrame] = {}
    problems: list[str] = []
    for run in runs:
        if not (run / "hyperparameters.json").is_file():
            problems.append(f"{run}: no hyperparameters.json")
            continue
        if not (run / "metrics.csv").is_file():
            problems.append(f"{run}: no metrics.csv")
            continue
        try:
            hparams[run] = load_hyperparameters(run)
            rows = read_metrics(run)
        except ValueError as exc:
            problems.append(f"{run}: {exc}")
            continue
        if not rows:
            problems.append(f"{run}: metrics.csv holds no finished epoch")
            continue
        planned = hparams[run].get("epochs")
        if not allow_incomplete and isinstance(planned, int) and rows[-1]["epoch"] < planned:
            problems.append(
                f"{run}: {rows[-1]['epoch']} of {planned} epochs done (still running or stopped; "
                "--allow-incomplete reports it as it is)"
            )
        curves[str(run)] = pd.DataFrame(rows).set_index("epoch")
    if problems:
        raise ReportError("cannot report on these runs:\n  " + "\n  ".join(problems))

    names = set().union(*(hp.keys() for hp in hparams.values()))
    per_seed = set(per_seed)
    unknown = sorted(per_seed - names)
    if unknown:
        raise ReportError(f"--per-seed {' '.join(unknown)}: no run has such a hyperparameter")
    tasks = {run: task_of(hp) for run, hp in hparams.items()}
    if len(set(tasks.values())) > 1:
        listing = "\n  ".join(f"{task}: {run}" for run, task in tasks.items())
        raise ReportError(f"runs of different tasks cannot be compared:\n  {listing}")

    keys = sorted(
        k
        for k in names
        if k not in IGNORED_HPARAMS and k not in per_seed
        and len({_hashable(hp.get(k)) for hp in hparams.values()}) > 1
    )
    records, metrics = [], []
    for run, hp in hparams.items():
        summary = run_summary(run)
        record: dict[str, Any] = {"run": str(run)}
        record.update({k: _hashable(hp.get(k)) for k in keys})
        record["config"] = " ".join(f"{k}={_hashable(hp.get(k))}" for k in keys) or "all runs"
        record["seed"] = hp.get("seed")
        record["epochs_done"] = summary["epochs_done"]
        scores = {k: v for k, v in summary.items() if k not in _NOT_METRICS and k not in hp}
        metrics += [k for k, v in scores.items() if v is not None and k not in metrics]
        record.update(scores)
        records.append(record)
    table = pd.DataFrame(records)

    dup = table[table.duplicated(["config", "seed"], keep=False)]
    if len(dup):
        listing = "\n  ".join(f"{r.config} seed {r.seed}: {r.run}" for r in dup.itertuples())
        raise ReportError(
            "runs of one configuration share a seed (they are not independent samples; pass "
            f"each run once):\n  {listing}"
        )
    return Study(table, keys, metrics, curves)


# --------------------------------------------------------------------------------------------
# Summaries


def summarise(study: Study, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (configuration, metric): config, metric, n, seeds, mean, std, ci_low,
    ci_high, ci_half (see mean_ci), in the configurations' order of first appearance."""
    unknown = [m for m in metrics if m not in study.metrics]
    if unknown:
        raise ReportError(f"unknown metric(s) {unknown}; these runs have {study.metrics}")
    rows = []
    for config, group in study.table.groupby("config", sort=False):
        for metric in metrics:
            have = group[group[metric].notna()]
            seeds = " ".join(str(s) for s in sorted(have["seed"]))
            rows.append({"config": config, "metric": metric, "seeds": seeds,
                         **mean_ci(have[metric].to_numpy(dtype=float))})
    columns = ["config", "metric", "n", "seeds", "mean", "std", "ci_low", "ci_high", "ci_half"]
    return pd.DataFrame(rows, columns=columns)


def _is_fraction(metric: str) -> bool:
    return "acc" in metric


def _cell(row: pd.Series) -> tuple[str, str, str]:
    """(mean, std, 95% CI) as Markdown text; accuracies in percent."""
    scale, unit = (100.0, "%") if _is_fraction(row["metric"]) else (1.0, "")
    if row["n"] == 0:
        return "no value", "", ""
    mean = f"{scale * row['mean']:.2f}{unit}"
    if row["n"] < 2:
        return mean, "n/a (1 seed)", "n/a (1 seed)"
    return (mean, f"{scale * row['std']:.2f}",
            f"{scale * row['ci_low']:.2f} .. {scale * row['ci_high']:.2f}"
            f" (+-{scale * row['ci_half']:.2f})")


def to_markdown(summary: pd.DataFrame) -> str:
    """summary as a Markdown table: configuration, metric, n, seeds, mean, std, 95% CI."""
    header = ["configuration", "metric", "n", "seeds", "mean", "std", "95% CI (Student t)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [row["config"].replace("|", "\\|"), row["metric"], str(row["n"]), row["seeds"],
                 *_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_bands(study: Study, metric: str) -> dict[str, pd.DataFrame]:
    """{config: DataFrame indexed by epoch with n, mean, std, ci_low, ci_high, ci_half} of one
    metrics.csv column, over the seeds that logged that epoch."""
    bands = {}
    for config, group in study.table.groupby("config", sort=False):
        logged = {run: study.curves[run][metric] for run in group["run"]
                  if metric in study.curves[run]}
        if not logged:
            continue
        wide = pd.concat(logged, axis=1).dropna(how="all")
        if wide.empty:
            continue
        bands[config] = pd.DataFrame(
            [mean_ci(wide.loc[e].to_numpy(dtype=float)) for e in wide.index], index=wide.index
        )
    return bands


def plot_curves(study: Study, metrics: Sequence[str], path: Path) -> Path:
    """One panel per curve metric: the mean over seeds of each configuration against epoch,
    with its 95% CI band (no band where one seed logged the epoch)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    bands = {metric: curve_bands(study, metric) for metric in metrics}
    configs = list(dict.fromkeys(c for b in bands.values() for c in b))
    # One legend below the panels: configuration labels name every differing flag and can be
    # long, so they get the figure's width and a line each.
    legend_in = 0.2 * len(configs) + 0.2
    fig = Figure(figsize=(5 * len(metrics), 4 + legend_in))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    lines = {}
    for ax, metric in zip(axes, metrics):
        for config, band in bands[metric].items():
            colour = f"C{configs.index(config) % 10}"
            n = int(band["n"].max())
            lines[config] = ax.plot(band.index, band["mean"], color=colour, marker="o",
                                    markersize=3, label=f"{config} (n={n})")[0]
            ax.fill_between(band.index, band["ci_low"], band["ci_high"], color=colour,
                            alpha=0.2, linewidth=0)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric}: mean, 95% CI band")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if lines:
        fig.legend([lines[c] for c in configs if c in lines],
                   [lines[c].get_label() for c in configs if c in lines],
                   loc="lower center", fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, legend_in / (4 + legend_in), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m eplcanet.app.report",
        description="Mean, std and 95%% confidence interval (Student t) over seeds, per "
        "configuration, of runs written by main_fast.py --save; learning curves with bands.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run directories, or folders above them")
    p.add_argument("--out", default="./results/report", help="where the tables and plot go")
    p.add_argument("--metrics", nargs="+", default=None,
                   help=f"metrics to summarise (default: {' '.join(DEFAULT_METRICS)} and any "
                   "robustness summaries the runs hold)")
    p.add_argument("--curves", nargs="+", default=None,
                   help="metrics.csv columns drawn as learning curves (default: "
                   f"{' '.join(CURVE_METRICS)})")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="report runs that stopped before their --epochs, as they are")
    p.add_argument("--per-seed", nargs="+", default=[], metavar="NAME",
                   help="hyperparameters (as in hyperparameters.json) that change with the seed "
                   "by design, e.g. lca_dict for a dictionary learned per seed: they never "
                   "split a configuration")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the report command; returns the exit status (2 for input that cannot be reported)."""
    args = build_parser().parse_args(argv)
    try:
        study = load_study(args.run_dirs, allow_incomplete=args.allow_incomplete,
                           per_seed=args.per_seed)
        metrics = args.metrics if args.metrics is not None else study.default_metrics()
        summary = summarise(study, metrics)
        curves = args.curves if args.curves is not None else list(CURVE_METRICS)
        logged = sorted(set().union(*(c.columns for c in study.curves.values())))
        unknown = [c for c in curves if c not in logged]
        if unknown:
            raise ReportError(f"unknown curve(s) {unknown}; these runs log {logged}")
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for config, group in study.table.groupby("config", sort=False):
        if len(group) < 2:
            print(f"warning: configuration '{config}' has a single seed: its std and confidence "
                  "interval are undefined (n/a in the tables, empty in summary.csv); run more "
                  "seeds", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(study.table, out / "runs.csv")
    write_csv(summary, out / "summary.csv")
    differing = ", ".join(study.keys) if study.keys else "none (one configuration)"
    markdown = (
        f"{len(study.table)} runs; configurations differ in: {differing}.\n"
        f"95% CI of the mean over seeds (Student t); accuracies in percent.\n\n"
        + to_markdown(summary)
    )
    atomic_write_text(markdown, out / "summary.md")
    plot_curves(study, curves, out / "curves.png")
    print(markdown)
    print(f"written: {out / 'runs.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}, "
          f"{out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
