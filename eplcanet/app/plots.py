"""Figures of a run: learning curves, neural activity histograms and GDU trajectories.

Figures are drawn on ``matplotlib.figure.Figure`` objects and saved directly, without pyplot:
importing this module selects no backend, opens no window and works on headless nodes (the
PNGs are rendered by matplotlib's Agg canvas). Every function returns the paths it wrote;
missing parent directories are created.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.lines import Line2D

from ..runs import read_metrics

GDU_ESTIMATORS = ("bptt", "ep_onesided", "ep_symmetric")
# BPTT solid, the EP estimators dashed (symmetric) and dash-dotted (one-sided).
_GDU_STYLE = {"bptt": "-", "ep_symmetric": "--", "ep_onesided": "-."}
_GDU_LABEL = {"bptt": "BPTT", "ep_symmetric": "EP symmetric", "ep_onesided": "EP one-sided"}


def _target(path: str | Path, default_name: str) -> Path:
    """path itself, or path/default_name when path is an existing directory."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_curves(metrics: str | Path | list[dict[str, Any]], path: str | Path) -> Path:
    """Accuracies (train / val / test) and training loss against epoch, side by side.

    metrics: a metrics.csv (or its run directory) or rows as MetricsLog.rows() returns them:
    dicts with "epoch" and any of train_acc, val_acc, test_acc, train_loss (None = not
    measured). path: the PNG, or a directory to write train-test_acc.png into.
    """
    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else metrics
    if not isinstance(rows, list) or not rows:
        raise ValueError("metrics must be a metrics.csv path or a non-empty list of row dicts")
    if not all(isinstance(r, dict) and r.get("epoch") is not None for r in rows):
        raise ValueError("every metrics row must be a dict with an 'epoch'")

    def series(key: str) -> tuple[list[float], list[float]]:
        pairs = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pairs], [float(p[1]) for p in pairs]

    accuracies = {k: series(k) for k in ("train_acc", "val_acc", "test_acc")}
    loss = series("train_loss")
    if not loss[0] and not any(xs for xs, _ in accuracies.values()):
        raise ValueError("metrics hold no train_loss, train_acc, val_acc or test_acc values")

    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for key, (xs, ys) in accuracies.items():
        if xs:
            ax_acc.plot(xs, ys, marker="o", markersize=3, label=key.replace("_acc", ""))
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    if ax_acc.lines:
        ax_acc.legend()
    if loss[0]:
        ax_loss.plot(*loss, marker="o", markersize=3, color="tab:red")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no 1.5 ticks
    return _save(fig, _target(path, "train-test_acc.png"))


def plot_neural_activity(
    states: Sequence[torch.Tensor], path: str | Path, names: list[str] | None = None
) -> Path:
    """One histogram per layer of the neurons' values (e.g. EP states after the free phase).

    states: tensors of any shape, e.g. (batch, C, H, W) or (batch, n); names: one per state
    (default "layer i"). path: the PNG, or a directory to write neural_activity.png into.
    """
    if not isinstance(states, (list, tuple)) or not states:
        raise ValueError("states must be a non-empty list of tensors")
    for i, s in enumerate(states):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"states[{i}] must be a torch.Tensor, got {type(s).__name__}")
        if s.numel() == 0:
            raise ValueError(f"states[{i}] is empty (shape {tuple(s.shape)})")
    if names is None:
        names = [f"layer {i}" for i in range(len(states))]
    if len(names) != len(states):
        raise ValueError(f"names has {len(names)} entries but states has {len(states)}")

    cols = min(len(states), 4)
    rows = math.ceil(len(states) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, state, name in zip(axes, states, names):
        values = state.detach().float().cpu().numpy().ravel()
        ax.hist(values, bins=50, color="tab:blue")
        ax.set_title(f"{name} {tuple(state.shape)}", fontsize=9)
        ax.set_xlabel("activation")
    for ax in axes[len(states) :]:
        ax.set_visible(False)
    return _save(fig, _target(path, "neural_activity.png"))


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def plot_gdu(traces: dict[str, dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Gradient trajectories of BPTT against EP (the GDU property), one PNG per parameter.

    traces[name][estimator] is an array (K, n_components) (numpy or torch; (K,) means one
    component) for estimator in GDU_ESTIMATORS, any of them missing: the chosen components of
    the parameter's gradient estimate at each of the K time steps of the nudged phase. Each
    component gets a colour; BPTT is solid, EP dashed (symmetric) or dash-dotted (one-sided).
    Writes out_dir/gdu_<name>.png (dots and other unsafe characters in name become "_") and
    returns the paths.
    """
    if not isinstance(traces, dict) or not traces:
        raise ValueError("traces must be a non-empty dict {parameter name: {estimator: array}}")
    out_dir = Path(out_dir)
    checked: dict[str, dict[str, np.ndarray]] = {}
    files: dict[str, str] = {}
    for name, per_estimator in traces.items():
        if not isinstance(per_estimator, dict) or not per_estimator:
            raise ValueError(f"traces[{name!r}] must be a non-empty dict over {GDU_ESTIMATORS}")
        unknown = set(per_estimator) - set(GDU_ESTIMATORS)
        if unknown:
            raise ValueError(
                f"traces[{name!r}] has unknown estimator(s) {sorted(unknown)}; "
                f"accepted: {GDU_ESTIMATORS}"
            )
        arrays = {k: _as_array(v) for k, v in per_estimator.items()}
        shapes = {k: a.shape for k, a in arrays.items()}
        if any(a.ndim != 2 or a.size == 0 for a in arrays.values()):
            raise ValueError(f"traces[{name!r}] must hold non-empty (K, n_components) arrays")
        if len(set(shapes.values())) != 1:
            raise ValueError(f"traces[{name!r}] arrays must share one shape, got {shapes}")
        filename = "gdu_" + re.sub(r"[^A-Za-z0-9_-]", "_", str(name)) + ".png"
        if filename in files:
            raise ValueError(f"parameters {files[filename]!r} and {name!r} both map to {filename}")
        files[filename] = name
        checked[name] = arrays

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, name in files.items():
        arrays = checked[name]
        n_components = next(iter(arrays.values())).shape[1]
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        colours = [f"C{j % 10}" for j in range(n_components)]
        for estimator in GDU_ESTIMATORS:
            if estimator not in arrays:
                continue
            steps = np.arange(arrays[estimator].shape[0])
            for j in range(n_components):
                ax.plot(
                    steps, arrays[estimator][:, j], _GDU_STYLE[estimator], color=colours[j], lw=1.2
                )
        ax.axhline(0.0, color="grey", lw=0.5)
        handles = [
            Line2D([], [], color="black", linestyle=_GDU_STYLE[k], label=_GDU_LABEL[k])
            for k in GDU_ESTIMATORS
            if k in arrays
        ]
        ax.legend(handles=handles, fontsize=8)
        ax.set(xlabel="time step t", ylabel="gradient estimate", title=str(name))
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / filename))
    return written


# --------------------------------------------------------------------------------------------
# Robustness (rows as eplcanet.app.robustness writes them to attack.csv / corruptions.csv)


def _rows_of(rows: str | Path | list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    if isinstance(rows, (str, Path)):
        from ..runs import read_rows

        rows = read_rows(rows)
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{what} must be a CSV path or a non-empty list of row dicts")
    return rows


def plot_robustness(
    curves: dict[str, str | Path | list[dict[str, Any]]],
    path: str | Path,
    title: str | None = None,
    noise: bool = True,
) -> Path:
    """Accuracy against the attack radius, one panel per norm and one colour per model.

    curves: {label: attack.csv path or its rows}; rows need "norm", "epsilon" and "accuracy",
    and may hold "accuracy_noise" (drawn dotted, same colour, when noise). path: the PNG, or a
    directory to write robustness.png into.
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must be a non-empty dict {label: attack.csv path or rows}")
    checked = {}
    for label, rows in curves.items():
        rows = _rows_of(rows, f"curves[{label!r}]")
        missing = {"norm", "epsilon", "accuracy"} - set(rows[0])
        if missing:
            raise ValueError(f"curves[{label!r}] rows lack {sorted(missing)}")
        checked[label] = rows
    found = {r["norm"] for rows in checked.values() for r in rows}
    norms = [n for n in ("Linf", "L2") if n in found] + sorted(found - {"Linf", "L2"}, key=str)
    fig = Figure(figsize=(5 * len(norms), 4))
    axes = np.atleast_1d(fig.subplots(1, len(norms)))
    for ax, norm in zip(axes, norms):
        for j, (label, rows) in enumerate(checked.items()):
            sel = sorted((r for r in rows if r["norm"] == norm), key=lambda r: float(r["epsilon"]))
            if not sel:
                continue
            eps = [float(r["epsilon"]) for r in sel]
            colour = f"C{j % 10}"
            ax.plot(eps, [float(r["accuracy"]) for r in sel], "o-", color=colour, label=label)
            if noise and all(r.get("accuracy_noise") not in (None, "") for r in sel):
                ax.plot(eps, [float(r["accuracy_noise"]) for r in sel], ":", color=colour,
                        label=f"{label}, random noise")
        ax.set(xlabel=f"epsilon ({norm}, pixels in [0, 1])", ylabel="accuracy",
               title=norm if title is None else f"{title}: {norm}", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, _target(path, "robustness.png"))


def plot_study(summary, path: str | Path) -> Path:
    """A robustness study (``robustness_study.summarise``'s DataFrame): accuracy against epsilon,
    the mean over seeds with its 95% CI as a band; one panel per (task, norm), a colour per
    model, solid for the strongest white-box attack, dashed for the score-based black-box one
    (Square), dotted for the decision-based one (HopSkipJump); a point some seed's masking check
    flagged is circled."""
    panels = list(summary.groupby(["task", "norm"], sort=True))
    if not panels:
        raise ValueError("the study summary has no rows")
    fig = Figure(figsize=(5 * len(panels), 4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    colours = {m: f"C{i % 10}" for i, m in enumerate(sorted(summary["model"].unique()))}
    for ax, ((task, norm), panel) in zip(axes, panels):
        for (model, kind), g in panel.groupby(["model", "kind"], sort=True):
            g = g.sort_values("epsilon")
            white = kind == "white_box"
            style = "-" if white else "--" if kind == "score_based" else ":"
            ax.plot(g["epsilon"], g["mean"], style, color=colours[model],
                    label=f"{model}, {kind.replace('_', '-')}")
            ax.fill_between(g["epsilon"], g["ci_low"], g["ci_high"], color=colours[model],
                            alpha=0.15 if white else 0.07, linewidth=0)
            bad = g[g["seeds_flagged"] > 0]
            ax.plot(bad["epsilon"], bad["mean"], "o", mfc="none", color=colours[model])
        # two lines: a data file's name is long enough to run past a panel
        ax.set(title=f"{task}\n{norm}, {int(panel['n_seeds'].min())}+ seeds, "
                     f"{int(panel['images'].min())}+ images",
               xlabel="epsilon (pixels in [0, 1])", ylabel="accuracy under attack",
               ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, _target(path, "study.png"))


def plot_step_study(table, path: str | Path, label: str = "") -> Path:
    """The step study of an attack table with several (predict_step, attack_step) pairs:
    accuracy under the strongest white-box attack against the attacker's relaxation steps
    (attack_step), one line per prediction's steps (predict_step), one panel per (norm, epsilon
    > 0); the clean accuracy at each predict step is the dotted line of its colour."""
    from ..attacks import WHITE_BOX

    wb = table[table["attack"].isin(WHITE_BOX)]
    best = wb.groupby(["norm", "epsilon", "predict_step", "attack_step"], as_index=False)[
        "accuracy"].min()
    attacked = best[best["epsilon"] > 0]
    panels = list(attacked.groupby(["norm", "epsilon"], sort=True))
    if not panels:
        raise ValueError("the table has no white-box attack at a radius > 0")
    fig = Figure(figsize=(4.5 * len(panels), 4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    clean = best[best["epsilon"] == 0].groupby("predict_step")["accuracy"].max()
    for ax, ((norm, eps), panel) in zip(axes, panels):
        for j, (p, g) in enumerate(panel.groupby("predict_step", sort=True)):
            g = g.sort_values("attack_step")
            ax.plot(g["attack_step"], g["accuracy"], "o-", color=f"C{j % 10}",
                    label=f"predict-step {p}")
            if p in clean.index:
                ax.axhline(clean[p], ls=":", color=f"C{j % 10}")
        ax.set(title=f"{label + ', ' if label else ''}{norm} eps {eps:g}",
               xlabel="attack-step (relaxation steps the gradient flows through)",
               ylabel="accuracy, strongest white-box attack", ylim=(-0.02, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, _target(path, "steps.png"))


def plot_corruptions(rows: str | Path | list[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy per corruption and severity: curves against severity (clean accuracy dashed)
    and a corruption x severity heatmap with the values written in.

    rows: a corruptions.csv or its rows ("corruption", "severity", "accuracy"; a row named
    "clean" is the clean accuracy). path: the PNG, or a directory for corruptions.png.
    """
    rows = _rows_of(rows, "rows")
    missing = {"corruption", "severity", "accuracy"} - set(rows[0])
    if missing:
        raise ValueError(f"corruption rows lack {sorted(missing)}")
    clean = [float(r["accuracy"]) for r in rows if r["corruption"] == "clean"]
    names = list(dict.fromkeys(r["corruption"] for r in rows if r["corruption"] != "clean"))
    if not names:
        raise ValueError("rows hold no corruption other than 'clean'")
    severities = sorted({int(r["severity"]) for r in rows if r["corruption"] != "clean"})
    grid = np.full((len(names), len(severities)), np.nan)
    for r in rows:
        if r["corruption"] != "clean":
            grid[names.index(r["corruption"]), severities.index(int(r["severity"]))] = float(
                r["accuracy"]
            )
    fig = Figure(figsize=(12, 4.5))
    ax_line, ax_map = fig.subplots(1, 2)
    for i, name in enumerate(names):
        ax_line.plot(severities, grid[i], "o-", color=f"C{i % 10}", label=name)
    if clean:
        ax_line.axhline(clean[0], color="black", ls="--", lw=1, label="clean")
    ax_line.set(xlabel="severity", ylabel="accuracy", title="Accuracy under corruptions",
                xticks=severities, ylim=(-0.02, 1.02))
    ax_line.grid(alpha=0.3)
    ax_line.legend(fontsize=8)
    image = ax_map.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax_map.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 0.6 else "black")
    ax_map.set(xticks=range(len(severities)), xticklabels=severities, yticks=range(len(names)),
               yticklabels=names, xlabel="severity", title="Accuracy (cells in %)")
    fig.colorbar(image, ax=ax_map)
    return _save(fig, _target(path, "corruptions.png"))


# --------------------------------------------------------------------------------------------
# Comparing runs and looking at sparse codes (eval_lcanet.ipynb)


def plot_runs(runs: dict[str, str | Path | list[dict[str, Any]]], path: str | Path) -> Path:
    """Learning curves of several runs on shared axes: test accuracy solid, train dashed (left),
    training loss (right), one colour per run.

    runs: {label: metrics.csv, its run directory, or rows}. path: the PNG, or a directory to
    write runs.png into.
    """
    if not isinstance(runs, dict) or not runs:
        raise ValueError("runs must be a non-empty dict {label: metrics.csv / run dir / rows}")
    fig = Figure(figsize=(11, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for j, (label, metrics) in enumerate(runs.items()):
        rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else metrics
        colour = f"C{j % 10}"
        for key, style, suffix in (("test_acc", "-", "test"), ("train_acc", "--", "train")):
            pairs = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pairs:
                ax_acc.plot(*zip(*pairs), style, color=colour, marker="o", markersize=3,
                            label=f"{label} ({suffix})")
        pairs = [(r["epoch"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        if pairs:
            ax_loss.plot(*zip(*pairs), color=colour, marker="o", markersize=3, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy (test solid, train dashed)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, _target(path, "runs.png"))


def _as_image(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> an (H, W) or (H, W, 3) array scaled to [0, 1] for display."""
    a = t.detach().float().cpu().numpy()
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def plot_reconstructions(
    inputs: torch.Tensor, recons: torch.Tensor, path: str | Path, n: int = 8
) -> Path:
    """Inputs (top row) against their reconstructions D(a) (bottom row), each image scaled to
    its own range. inputs, recons: (B, C, H, W) of the same shape, C in 1 or 3. path: the PNG,
    or a directory to write reconstructions.png into."""
    if inputs.shape != recons.shape or inputs.dim() != 4 or inputs.shape[1] not in (1, 3):
        raise ValueError(
            f"inputs and recons must share a (B, C, H, W) shape with C in 1 or 3, got "
            f"{tuple(inputs.shape)} and {tuple(recons.shape)}"
        )
    n = min(n, inputs.shape[0])
    if n < 1:
        raise ValueError("need at least one image")
    fig = Figure(figsize=(1.4 * n, 3.2))
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        for row, (batch, name) in enumerate(((inputs, "input"), (recons, "reconstruction"))):
            ax = axes[row, i]
            ax.imshow(_as_image(batch[i]), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
    return _save(fig, _target(path, "reconstructions.png"))


def plot_code_histograms(codes: torch.Tensor, path: str | Path, tol: float = 1e-8) -> Path:
    """Sparsity of codes a (B, F, ...) or (B, F): the values of the active coefficients
    (|a| > tol, log counts) and the fraction of active coefficients per sample. path: the PNG,
    or a directory to write code_sparsity.png into."""
    if not isinstance(codes, torch.Tensor) or codes.dim() < 2 or codes.numel() == 0:
        raise ValueError("codes must be a non-empty (batch, features, ...) tensor")
    flat = codes.detach().float().cpu().flatten(1)
    active = flat.abs() > tol
    fraction = active.float().mean(1).numpy()
    fig = Figure(figsize=(10, 3.8))
    ax_val, ax_frac = fig.subplots(1, 2)
    values = flat[active].numpy()
    if values.size:
        ax_val.hist(values, bins=60, color="tab:purple", log=True)
    ax_val.set(xlabel="coefficient value", ylabel="count (log)",
               title=f"Active coefficients ({100 * active.float().mean().item():.2f}% active)")
    ax_frac.hist(fraction, bins=30, color="tab:green")
    ax_frac.set(xlabel="fraction of active coefficients", ylabel="samples",
                title="Activity per sample")
    for ax in (ax_val, ax_frac):
        ax.grid(alpha=0.3)
    return _save(fig, _target(path, "code_sparsity.png"))
