"""Learn a convolutional LCA dictionary with the Hebbian rule (the LCA-RCNN's frontend).

For every minibatch: settle the sparse codes a of the images x with an LCAConv2D layer, then move
the atoms along a (x) (x - D(a)) / (times_active + 1) and renormalise them. Every epoch the
dictionary is evaluated on held-out images (R^2 of the reconstruction, fraction of zero codes,
energy). The run directory receives:

    dictionary.pt        the learned atoms + config (eplcanet.sparse.io format; --out elsewhere)
    feature_grid.png     the atoms, each rescaled for display
    reconstructions.png  held-out images (top) and their reconstructions (bottom)
    curves.csv/.png      energy, sparsity and R^2 per training step and per epoch
    summary.json         the final figures and the command that produced them
    hyperparameters.json the flags

Examples:
    python cifar_dictlearning.py                      # photographs (offline), a few minutes on CPU
    python cifar_dictlearning.py --task npz --data-path ../shared/data/cifar10-train-4k.npz
    python cifar_dictlearning.py --task CIFAR10 --data-dir ./data --epochs 5 --device cuda
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import load_task, natural_image_patches
from ..runs import atomic_write_text, make_run_dir, save_hyperparameters, write_csv
from ..sparse import (
    LCAConv2D,
    conv_whiten,
    fit_conv_whitening,
    frac_active,
    preprocessing_note,
    r_squared,
    save_dictionary,
    save_feature_grid,
    standardise,
    whitening_entry,
)
from .entry import resolve_device
from .settings import DictLearningSettings, lambda_start, parse_dictlearning

def cpu_threads() -> int:
    """torch's thread count, or 1 on busy shared cores.

    Every elementwise step of the solver is an OpenMP parallel region; when another process
    holds a core, waking its thread costs milliseconds per region, and one thread is several
    times faster than two (measured: 29 vs 131 ms per FISTA iteration on a loaded 2-core VM).
    """
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if busy >= cores / 2 else torch.get_num_threads()


def load_images(cfg: DictLearningSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held_out) float32 images (N, C, H, W)."""
    if cfg.data.task == "patches":
        n_train = cfg.data.n_images or 512
        x = natural_image_patches(32, n_train + cfg.data.n_eval, seed=cfg.run.seed)
        return x[:n_train], x[n_train:]
    splits = load_task(
        cfg.data.task,
        data_dir=cfg.data.data_dir,
        data_path=cfg.data.data_path,
        download=cfg.data.download,
        seed=cfg.run.seed,
    )

    def stack(dataset, limit):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        return torch.stack([dataset[i][0] for i in range(n)])

    return stack(splits.train, cfg.data.n_images), stack(splits.val, cfg.data.n_eval)


Prepare = Callable[[torch.Tensor], torch.Tensor]


def preparation(cfg: DictLearningSettings, train: torch.Tensor) -> tuple[Prepare, dict | None]:
    """(what the coder sees of a batch of images, the dictionary file's whitening entry): per
    image standardisation, then with --whiten K the ZCA of K x K patches of the training images
    (fitted once, from 50,000 patches drawn with --seed)."""
    if not cfg.learning.whiten:
        return standardise, None
    gen = torch.Generator().manual_seed(cfg.run.seed)
    kernel, bias = fit_conv_whitening(train, cfg.learning.whiten, cfg.learning.whiten_eps,
                                      generator=gen)
    entry = whitening_entry(kernel, bias, eps=cfg.learning.whiten_eps)
    return (lambda x: conv_whiten(x, kernel, bias)), entry  # conv_whiten moves them to x


@torch.no_grad()
def evaluate(layer: LCAConv2D, images: torch.Tensor, iters: int, mbs: int,
             prepare: Prepare = standardise) -> dict[str, float]:
    """Held-out figures: R^2 of the reconstruction, fraction of zero codes, energy, L1."""
    budget = layer.lca_iters
    layer.lca_iters = iters
    acts_all, err, x_all = [], [], []
    try:
        for x in images.split(mbs):
            x = prepare(x.to(layer.weights.device))
            acts, errors = layer(x)
            acts_all.append(acts)
            err.append(errors)
            x_all.append(x)
    finally:
        layer.lca_iters = budget
    acts, errors, x = torch.cat(acts_all), torch.cat(err), torch.cat(x_all)
    energy = layer.energy(x, acts).mean()
    return {
        "r2": float(r_squared(x, x - errors)),
        "frac_zero": 1.0 - float(frac_active(acts)),
        "energy": float(energy),
        "l1": float(acts.abs().flatten(1).sum(1).mean()),
    }


def save_reconstructions(layer: LCAConv2D, images: torch.Tensor, path: Path, n: int = 8,
                         prepare: Prepare = standardise) -> None:
    """Held-out images as the coder sees them (top row) above their reconstructions, each
    rescaled to [0, 1]."""
    import matplotlib.pyplot as plt

    with torch.no_grad():
        x = prepare(images[:n].to(layer.weights.device))
        _, errors = layer(x)
        pairs = [x.cpu(), (x - errors).cpu()]
    fig, axes = plt.subplots(2, len(x), figsize=(1.5 * len(x), 3.2), squeeze=False)
    for row, batch in enumerate(pairs):
        for col, img in enumerate(batch):
            img = img.permute(1, 2, 0).numpy()
            img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
            axes[row, col].imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
            axes[row, col].axis("off")
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_curves(steps: list[dict], epochs: list[dict], run_dir: Path) -> None:
    """curves.csv (one row per step, held-out figures on epoch ends) and curves.png."""
    import matplotlib.pyplot as plt

    fields = [
        "step",
        "epoch",
        "lambda",
        "eta",
        "energy",
        "frac_zero",
        "r2",
        "eval_energy",
        "eval_frac_zero",
        "eval_r2",
    ]
    by_step = {e["step"]: e for e in epochs}
    rows = [{**row, **{f"eval_{k}": v for k, v in by_step.get(row["step"], {}).items()
                       if k != "step"}} for row in steps]
    write_csv(rows, run_dir / "curves.csv", fields)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(
        axes, ("energy", "frac_zero", "r2"), ("energy per image", "fraction of zero codes", "R^2")
    ):
        ax.plot([s["step"] for s in steps], [s[key] for s in steps], lw=0.8, label="train batch")
        ax.plot([e["step"] for e in epochs], [e[key] for e in epochs], "o-", label="held out")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run dictionary learning with command-line flags ``argv``; returns the summary."""
    command = [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]
    cfg = parse_dictlearning(argv)
    device = resolve_device(cfg.run.device)
    lam_start, warmup_epochs = lambda_start(cfg)
    threads = cfg.run.threads or cpu_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed)
    train, held_out = load_images(cfg)
    channels, size = train.shape[1], train.shape[2]
    if size < cfg.coder.lca_stride:
        raise ValueError(f"images of size {size} are smaller than --lca_stride")
    if size < cfg.learning.whiten:
        raise SystemExit(f"error: --whiten {cfg.learning.whiten}: the images are {size} pixels "
                         "wide; the whitened patches must fit in them")
    prepare, whitening = preparation(cfg, train)

    model = f"lca_F{cfg.coder.lca_feats}_k{cfg.coder.lca_ksize}_s{cfg.coder.lca_stride}"
    run_dir = make_run_dir(cfg.run.results_dir, cfg.data.task, "dictlearning", model)
    save_hyperparameters(run_dir, cfg.flat(), command)
    print(
        f"{len(train)} training and {len(held_out)} held-out images {tuple(train.shape[1:])}, "
        f"device {device}, {threads} CPU thread(s), run directory {run_dir}"
    )

    layer = LCAConv2D(
        out_neurons=cfg.coder.lca_feats,
        in_neurons=channels,
        kernel_size=cfg.coder.lca_ksize,
        stride=cfg.coder.lca_stride,
        lambda_=lam_start,
        tau=cfg.coder.lca_tau,
        eta=cfg.coder.lca_eta,
        lca_iters=cfg.coder.lca_iters,
        solver=cfg.coder.lca_solver,
        pad="same",
        return_vars=("acts", "recon_errors"),
        input_zero_mean=False,
        input_unit_var=False,
    ).to(device)

    steps_per_epoch = -(-len(train) // cfg.learning.mbs)
    total_steps = steps_per_epoch * cfg.learning.epochs
    gen = torch.Generator().manual_seed(cfg.run.seed)
    steps, epochs = [], []
    step, t0 = 0, time.perf_counter()
    for epoch in range(1, cfg.learning.epochs + 1):
        order = torch.randperm(len(train), generator=gen)
        bar = tqdm(order.split(cfg.learning.mbs), desc=f"epoch {epoch}/{cfg.learning.epochs}",
                   unit="batch")
        for idx in bar:
            progress = step / steps_per_epoch
            if warmup_epochs:
                frac = min(1.0, progress / warmup_epochs)
                layer.lambda_ = lam_start + frac * (cfg.coder.lca_lambda - lam_start)
            if cfg.learning.eta_schedule == "cosine":
                layer.eta = 0.5 * cfg.coder.lca_eta * (1 + math.cos(math.pi * step / total_steps))
            x = prepare(train[idx].to(device))
            with torch.no_grad():
                acts, errors = layer(x)
                layer.update_weights(acts, errors)
            step += 1
            record = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                "lambda": float(layer.lambda_),
                "eta": layer.eta,
                "energy": float(layer.energy(x, acts).mean()),
                "frac_zero": 1.0 - float(frac_active(acts)),
                "r2": float(r_squared(x, x - errors)),
            }
            steps.append(record)
            bar.set_postfix(
                E=f"{record['energy']:.0f}",
                zero=f"{record['frac_zero']:.2f}",
                r2=f"{record['r2']:.3f}",
            )
        held = evaluate(layer, held_out, cfg.learning.eval_iters, cfg.learning.mbs, prepare)
        epochs.append({"step": step, **held})
        print(
            f"epoch {epoch}: held-out R^2 {held['r2']:.4f}, zero codes "
            f"{100 * held['frac_zero']:.1f}%, energy {held['energy']:.1f}"
        )
    seconds = time.perf_counter() - t0

    config = {
        "kernel_size": cfg.coder.lca_ksize,
        "stride": cfg.coder.lca_stride,
        "pad": "same",
        "in_neurons": channels,
        "out_neurons": cfg.coder.lca_feats,
        "lambda_": cfg.coder.lca_lambda,
        "tau": cfg.coder.lca_tau,
        "task": cfg.data.task,
        "epochs": cfg.learning.epochs,
        "seed": cfg.run.seed,
        "preprocessing": preprocessing_note(whitening),
    }
    if whitening is not None:
        config["whitening"] = whitening
    out = Path(cfg.run.out) if cfg.run.out else run_dir / "dictionary.pt"
    save_dictionary(out, layer.weights, config)
    save_feature_grid(layer.weights, run_dir / "feature_grid.png", scale=4)
    save_reconstructions(layer, held_out, run_dir / "reconstructions.png", prepare=prepare)
    save_curves(steps, epochs, run_dir)
    summary = {
        **{f"heldout_{k}": v for k, v in epochs[-1].items() if k != "step"},
        "train_seconds": round(seconds, 1),
        "dictionary": str(out),
        "command": " ".join(command),
    }
    atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    print(json.dumps(summary, indent=2))
    return summary

