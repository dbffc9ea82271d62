"""Looking at finished runs: find run directories, tabulate them, reload their models.

What ``eval_lcanet.ipynb`` uses, kept in the package so that it is tested and reusable:

    find_runs(["./results/**/run_*"])   run directories (those holding metrics.csv)
    run_label(run)                      "<alg> <model> <run name>", for legends
    run_table(runs)                     a pandas DataFrame: final / best accuracies, hyperparameters
    strongest_attacks(rows)             per (norm, epsilon) of an attack.csv: the min accuracy over
                                        the white-box attacks, and over the black-box ones
    load_run(run)                       (flags, network with its best weights, data splits)
    free_states(net, x, steps)          the free-phase states of every layer
    find_coder(net)                     the sparse-coding frontend of an LCA-CNN, or None
    gdu_check(loaded, out_dir)          the GDU check on a few samples, figures in out_dir
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..energy.dynamics import relax
from ..energy.networks import EnergyNet
from ..runs import load_hyperparameters, read_metrics
from .settings import Settings, settings_of_record

# Hyperparameters shown in the run table, when a run has them; the LCA ones for LCACNN runs only
# (every run records the LCA flags' defaults).
TABLE_HPARAMS = (
    "model",
    "task",
    "alg",
    "channels",
    "fc",
    "act",
    "T1",
    "T2",
    "betas",
    "thirdphase",
    "loss",
    "optim",
    "lrs",
    "mbs",
    "epochs",
    "seed",
)
LCA_HPARAMS = ("dict_training", "lca_feats", "lca_ksize", "lca_stride", "lca_lambda", "lca_iters")


def find_runs(patterns: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run directories matching glob pattern(s) (``**`` recurses), sorted, without duplicates.

    A run directory is one holding metrics.csv or hyperparameters.json; a pattern naming a
    directory above runs (e.g. ./results) finds every run below it.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found: set[Path] = set()
    for pattern in patterns:
        for match in glob.glob(str(pattern), recursive=True):
            path = Path(match)
            if not path.is_dir():
                continue
            if _is_run(path):
                found.add(path)
            else:
                found.update(p.parent for p in path.rglob("metrics.csv"))
                found.update(p.parent for p in path.rglob("hyperparameters.json"))
    return sorted(found)


def run_label(run_dir: str | Path) -> str:
    """A short legend label: "<alg> <model> <run name>" from hyperparameters.json, else the
    run directory's last two path parts."""
    run_dir = Path(run_dir)
    if (run_dir / "hyperparameters.json").is_file():
        hp = load_hyperparameters(run_dir)
        return f"{hp.get('alg', '?')} {hp.get('model', '?')} {run_dir.name}"
    return "/".join(run_dir.parts[-2:])


def _is_run(path: Path) -> bool:
    return (path / "metrics.csv").is_file() or (path / "hyperparameters.json").is_file()


def _short(value: Any) -> Any:
    """Lists as compact strings, so that table cells stay one line."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """One row of the run table: the run's path, epochs done, final and best accuracies, the
    robustness summaries it holds and its main hyperparameters."""
    run_dir = Path(run_dir)
    row: dict[str, Any] = {"run": str(run_dir)}
    hp: dict[str, Any] = {}
    if (run_dir / "hyperparameters.json").is_file():
        hp = load_hyperparameters(run_dir)
    rows = read_metrics(run_dir) if (run_dir / "metrics.csv").is_file() else []
    row["epochs_done"] = rows[-1]["epoch"] if rows else 0
    last = rows[-1] if rows else {}
    for key in ("train_acc", "val_acc", "test_acc"):
        row[f"final_{key}"] = last.get(key)
    scored = [r for r in rows if r.get("val_acc") is not None]
    if scored:
        best = max(scored, key=lambda r: r["val_acc"])  # the first epoch reaching the best
        row.update(
            best_val_acc=best["val_acc"],
            best_epoch=best["epoch"],
            test_acc_at_best=best.get("test_acc"),
        )
    else:
        row.update(best_val_acc=None, best_epoch=None, test_acc_at_best=None)
    row["max_test_acc"] = max(
        (r["test_acc"] for r in rows if r.get("test_acc") is not None), default=None
    )
    row.update(_robustness_summary(run_dir))
    keys = TABLE_HPARAMS + (LCA_HPARAMS if hp.get("model") == "LCACNN" else ())
    for key in keys:
        if key in hp:
            row[key] = _short(hp[key])
    return row


def strongest_attacks(rows: list[dict]) -> list[dict]:
    """The strongest attack at each (norm, epsilon) of an attack.csv's rows: one dict per point
    with the minimum accuracy over the white-box attacks (``attacks.WHITE_BOX``) and over the
    black-box ones (``attacks.BLACK_BOX``, None where none ran) that saw as many images as the
    point's largest attack (HopSkipJump on a subset does not count), and which attack reached
    each (``attacks.strongest_per_point``). Rows without an ``attack`` column (tables written
    before the ART attacks, PGD only) count as PGD."""
    import pandas as pd

    from ..attacks import BLACK_BOX, WHITE_BOX, strongest_per_point

    table = pd.DataFrame(rows)
    if not table.empty and "attack" not in table:
        table = table.assign(attack="pgd")
    best = strongest_per_point(table, {"white_box": WHITE_BOX, "black_box": BLACK_BOX},
                               full_only=True)
    points = []
    for (norm, eps), g in best.groupby(["norm", "epsilon"], sort=True):
        point = {"norm": norm, "epsilon": float(eps)}
        for kind in ("white_box", "black_box"):
            hit = g[g["kind"] == kind]
            point[f"{kind}_accuracy"] = float(hit["accuracy"].iloc[0]) if len(hit) else None
            point[f"{kind}_attack"] = hit["attack"].iloc[0] if len(hit) else None
        points.append(point)
    return points


def _robustness_summary(run_dir: Path) -> dict[str, Any]:
    """Accuracy at the largest radius of each norm (attack.csv, the classifier at the run's --T1
    steps: ``attacks.deployed_rows``): the strongest white-box attack's
    (``whitebox_<norm>_acc@<eps>``) and, when the table has one, the strongest black-box
    attack's (``blackbox_<norm>_acc@<eps>``); and the mean accuracy over the corruptions
    (corruptions.csv), when the run has them."""
    import pandas as pd

    from ..attacks import deployed_rows
    from ..runs import read_rows
    from ..runs import load_hyperparameters

    out: dict[str, Any] = {}
    if (run_dir / "attack.csv").is_file():
        rows = pd.DataFrame(read_rows(run_dir / "attack.csv"))
        t1 = load_hyperparameters(run_dir).get("T1") if (run_dir / "hyperparameters.json"
                                                         ).is_file() else None
        points = strongest_attacks(deployed_rows(rows, t1).to_dict("records"))
        for norm in dict.fromkeys(p["norm"] for p in points):
            top = max((p for p in points if p["norm"] == norm), key=lambda p: p["epsilon"])
            for kind in ("white_box", "black_box"):
                if top[f"{kind}_accuracy"] is not None:
                    name = kind.replace("_", "")
                    out[f"{name}_{norm}_acc@{top['epsilon']:.3g}"] = top[f"{kind}_accuracy"]
    if (run_dir / "corruptions.csv").is_file():
        rows = [r for r in read_rows(run_dir / "corruptions.csv") if r["corruption"] != "clean"]
        if rows:
            out["corruption_mean_acc"] = sum(r["accuracy"] for r in rows) / len(rows)
    return out


def run_table(run_dirs: Iterable[str | Path]):
    """A pandas DataFrame with one :func:`run_summary` row per run (columns absent from a run
    are NaN). Accuracies are fractions in [0, 1]."""
    import pandas as pd

    return pd.DataFrame([run_summary(r) for r in run_dirs])


@dataclass
class LoadedRun:
    """A run directory with its settings, its network (best weights, eval mode) and its data."""

    run_dir: Path
    settings: Settings
    net: EnergyNet
    splits: Any
    device: torch.device


def load_run(run_dir: str | Path, device: str = "cpu", **overrides: Any) -> LoadedRun:
    """Rebuild a run's network from hyperparameters.json and load its best weights.

    Flags the run did not record take main_fast.py's defaults; ``overrides`` replace recorded
    flags (e.g. data_path="..." when the data moved). The data splits are loaded as the run did.
    """
    from ..data import load_task
    from .build import build_model

    run_dir = Path(run_dir)
    # As --todo evaluate --load-path RUN: the weights come from the run, never from --lca-dict.
    cfg = settings_of_record(load_hyperparameters(run_dir), todo="evaluate",
                             load_path=str(run_dir), **overrides)
    d = cfg.data
    splits = load_task(d.task, data_dir=d.data_dir, data_path=d.data_path, download=False,
                       val_fraction=d.val_fraction, seed=cfg.run.seed, image_size=d.image_size)
    in_shape = (splits.in_channels, splits.image_size, splits.image_size)
    dev = torch.device(device)
    net = build_model(cfg, in_shape, splits.n_classes).to(dev)
    from ..runs import load_state_dict

    best = run_dir / "best.pt"
    load_state_dict(best if best.is_file() else run_dir / "checkpoint.pt", net, map_location=dev)
    net.eval()
    return LoadedRun(run_dir, cfg, net, splits, dev)


def sample_batch(dataset, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n items of a dataset drawn at random (seeded): (x (n, C, H, W), y (n,))."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    items = [dataset[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


@torch.no_grad()
def free_states(net: EnergyNet, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The states of every layer after `steps` free steps from zero: one (batch, ...) each."""
    return relax(net, net.input_drive(x), net.init_states(x.shape[0]), steps)


def find_coder(net: torch.nn.Module):
    """The sparse coder (an eplcanet.sparse.SparseCoder) inside net, or None (e.g. a plain CNN)."""
    from ..sparse.base import SparseCoder

    return next((m for m in net.modules() if isinstance(m, SparseCoder)), None)


@torch.no_grad()
def codes_and_reconstructions(net: EnergyNet, x: torch.Tensor):
    """(inputs the coder sees, codes a, reconstructions D(a)) of images x, or None without a
    coder. Inputs are x as the network's frontend prepares it (an LCA-CNN codes per-sample
    standardised, perhaps whitened, images); all three are tensors with a batch dimension."""
    coder = find_coder(net)
    if coder is None:
        return None
    from ..energy.lcacnn import LCA_CNN

    if isinstance(net, LCA_CNN):
        seen, codes = net.coder_input(x), net.encode(x)
    else:
        seen, codes = x, coder.code(x)
    recon = coder.decode(codes, output_size=tuple(seen.shape[-2:]))
    return seen, codes, recon


def gdu_check(loaded: LoadedRun, out_dir: str | Path) -> dict:
    """The GDU check of main_fast.py --todo gducheck on the loaded run (--gdu-batch training
    samples): gdu.json and one gdu_<parameter>.png per parameter in out_dir; returns the metrics
    (per parameter and EP variant: cosine, relative RMSE and sign agreement with BPTT)."""
    from .gducheck import gducheck

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # gducheck writes into the directory it is given as the run directory.
    result = gducheck(loaded.settings, loaded.net, loaded.splits, loaded.device, out_dir)
    loaded.net.eval()
    return result
