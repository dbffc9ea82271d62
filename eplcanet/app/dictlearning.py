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

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import TASKS, load_task, natural_image_patches
from ..runs import atomic_write_text, make_run_dir, save_hyperparameters
from ..sparse import (
    LCAConv2D,
    frac_active,
    make_unit_var,
    make_zero_mean,
    r_squared,
    save_dictionary,
    save_feature_grid,
)
from .entry import COUNT, DEVICE_HELP, NON_NEGATIVE, POSITIVE, SEED, Parser, number, resolve_device

TASK_CHOICES = ("patches", *TASKS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(
        description="Learn a convolutional LCA dictionary with the Hebbian rule.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--task",
        default="patches",
        type=str,
        help=f"one of {TASK_CHOICES}; 'patches' = 32x32 crops of scikit-image's "
        "photographs (offline), npz = --data-path file",
    )
    p.add_argument("--data-path", default=None, help="the .npz file of --task npz")
    p.add_argument("--data-dir", default="./data", help="torchvision dataset folder")
    p.add_argument("--download", action="store_true", help="let torchvision download the task")
    p.add_argument(
        "--n-images",
        type=COUNT,
        default=None,
        help="training images used (default: all; 512 for patches)",
    )
    p.add_argument("--n-eval", type=COUNT, default=128, help="held-out images for evaluation")
    p.add_argument("--lca_feats", type=COUNT, default=64, help="number of atoms F")
    p.add_argument("--lca_lambda", type=NON_NEGATIVE, default=0.25, help="sparsity threshold lambda")
    p.add_argument("--lca_tau", type=number(float, low=1.0), default=100.0, help="LCA time constant (solver lca)")
    p.add_argument("--lca_eta", type=POSITIVE, default=0.5, help="Hebbian learning rate")
    p.add_argument(
        "--eta-schedule",
        default="cosine",
        choices=("constant", "cosine"),
        help="cosine: eta decays from --lca_eta to 0 over the run (large early steps shape the "
        "atoms, small late ones settle them)",
    )
    p.add_argument("--lca_iters", type=COUNT, default=100, help="solver iterations per batch")
    p.add_argument("--lca_stride", type=COUNT, default=2, help="atom stride")
    p.add_argument("--lca_ksize", type=COUNT, default=9, help="atom size (odd)")
    p.add_argument(
        "--solver",
        default="fista",
        choices=("fista", "lca"),
        help="fista reaches the LCA optimum in far fewer iterations",
    )
    p.add_argument("--eval-iters", type=COUNT, default=300, help="solver iterations to evaluate")
    p.add_argument("--epochs", type=COUNT, default=2)
    p.add_argument("--mbs", type=COUNT, default=64, help="minibatch size")
    p.add_argument(
        "--lambda-schedule",
        default="constant",
        help="'constant', or 'linear:START:EPOCHS' to ramp lambda linearly from START "
        "to --lca_lambda over the first EPOCHS epochs (fractions allowed)",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--threads",
        type=COUNT,
        default=None,
        help="CPU threads for torch; default: 1 when other processes already keep half the "
        "cores busy (OpenMP threads then wait on each other), else torch's choice",
    )
    p.add_argument("--results-dir", default="./results")
    p.add_argument("--out", default=None, help="dictionary file (default: RUN_DIR/dictionary.pt)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to replace an existing dictionary file")
    return p.parse_args(argv)


def lambda_schedule(spec: str, target: float) -> tuple[float, float]:
    """(start, warmup_epochs) of the lambda ramp; a ValueError that quotes the flag when bad."""
    if spec == "constant":
        return target, 0.0
    parts = spec.split(":")
    try:
        if parts[0] != "linear" or len(parts) != 3:
            raise ValueError
        start, epochs = float(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(
            f"--lambda-schedule must be 'constant' or 'linear:START:EPOCHS', got {spec!r}"
        ) from None
    if start < 0 or epochs <= 0:
        raise ValueError(f"--lambda-schedule {spec!r}: START must be >= 0 and EPOCHS > 0")
    return start, epochs


def check_args(args: argparse.Namespace) -> torch.device:
    """Reject bad flags before any data is loaded; returns the device to run on."""
    canonical = {t.lower(): t for t in TASK_CHOICES}
    if args.task.lower() not in canonical:
        raise ValueError(f"--task must be one of {TASK_CHOICES}, got {args.task!r}")
    args.task = canonical[args.task.lower()]
    if args.task == "npz" and args.data_path is None:
        raise ValueError("--task npz needs --data-path FILE.npz")
    if args.task == "npz" and not Path(args.data_path).is_file():
        raise ValueError(f"--data-path {args.data_path!r}: no such file")
    if args.task != "npz" and args.data_path is not None:
        raise ValueError("--data-path is used only with --task npz")
    if args.lca_ksize % 2 == 0:
        raise ValueError(f"--lca_ksize must be odd ('same' padding), got {args.lca_ksize}")
    if args.lca_stride > args.lca_ksize:
        raise ValueError(f"--lca_stride ({args.lca_stride}) must be <= --lca_ksize")
    lambda_schedule(args.lambda_schedule, args.lca_lambda)
    if args.out is not None and Path(args.out).exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} exists (a learned dictionary would be lost): give "
                         "another path, or --overwrite to replace it")
    return resolve_device(args.device)


def cpu_threads() -> int:
    """torch's thread count, or 1 on busy shared cores.

    Every elementwise step of the solver is an OpenMP parallel region; when another process
    holds a core, waking its thread costs milliseconds per region, and one thread is several
    times faster than two (measured: 29 vs 131 ms per FISTA iteration on a loaded 2-core VM).
    """
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if busy >= cores / 2 else torch.get_num_threads()


def load_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held_out) float32 images (N, C, H, W)."""
    if args.task == "patches":
        n_train = args.n_images or 512
        x = natural_image_patches(32, n_train + args.n_eval, seed=args.seed)
        return x[:n_train], x[n_train:]
    splits = load_task(
        args.task,
        data_dir=args.data_dir,
        data_path=args.data_path,
        download=args.download,
        seed=args.seed,
    )

    def stack(dataset, limit):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        return torch.stack([dataset[i][0] for i in range(n)])

    return stack(splits.train, args.n_images), stack(splits.val, args.n_eval)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean and unit variance (LCA-PyTorch's input convention)."""
    return make_unit_var(make_zero_mean(x))


@torch.no_grad()
def evaluate(layer: LCAConv2D, images: torch.Tensor, iters: int, mbs: int) -> dict[str, float]:
    """Held-out figures: R^2 of the reconstruction, fraction of zero codes, energy, L1."""
    budget = layer.lca_iters
    layer.lca_iters = iters
    acts_all, err, x_all = [], [], []
    try:
        for x in images.split(mbs):
            x = standardise(x.to(layer.weights.device))
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


def save_reconstructions(layer: LCAConv2D, images: torch.Tensor, path: Path, n: int = 8) -> None:
    """Held-out images (top row) above their reconstructions, each rescaled to [0, 1]."""
    import matplotlib.pyplot as plt

    with torch.no_grad():
        x = standardise(images[:n].to(layer.weights.device))
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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in steps:
        held = by_step.get(row["step"], {})
        writer.writerow({**row, **{f"eval_{k}": v for k, v in held.items() if k != "step"}})
    atomic_write_text(buf.getvalue(), run_dir / "curves.csv")

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
    args = parse_args(argv)
    device = check_args(args)
    lam_start, warmup_epochs = lambda_schedule(args.lambda_schedule, args.lca_lambda)
    threads = args.threads or cpu_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    train, held_out = load_images(args)
    channels, size = train.shape[1], train.shape[2]
    if size < args.lca_stride:
        raise ValueError(f"images of size {size} are smaller than --lca_stride")

    model = f"lca_F{args.lca_feats}_k{args.lca_ksize}_s{args.lca_stride}"
    run_dir = make_run_dir(args.results_dir, args.task, "dictlearning", model)
    save_hyperparameters(run_dir, vars(args), command)
    print(
        f"{len(train)} training and {len(held_out)} held-out images {tuple(train.shape[1:])}, "
        f"device {device}, {threads} CPU thread(s), run directory {run_dir}"
    )

    layer = LCAConv2D(
        out_neurons=args.lca_feats,
        in_neurons=channels,
        kernel_size=args.lca_ksize,
        stride=args.lca_stride,
        lambda_=lam_start,
        tau=args.lca_tau,
        eta=args.lca_eta,
        lca_iters=args.lca_iters,
        solver=args.solver,
        pad="same",
        return_vars=("acts", "recon_errors"),
        input_zero_mean=False,
        input_unit_var=False,
    ).to(device)

    steps_per_epoch = -(-len(train) // args.mbs)
    total_steps = steps_per_epoch * args.epochs
    gen = torch.Generator().manual_seed(args.seed)
    steps, epochs = [], []
    step, t0 = 0, time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(train), generator=gen)
        bar = tqdm(order.split(args.mbs), desc=f"epoch {epoch}/{args.epochs}", unit="batch")
        for idx in bar:
            progress = step / steps_per_epoch
            if warmup_epochs:
                frac = min(1.0, progress / warmup_epochs)
                layer.lambda_ = lam_start + frac * (args.lca_lambda - lam_start)
            if args.eta_schedule == "cosine":
                layer.eta = 0.5 * args.lca_eta * (1 + math.cos(math.pi * step / total_steps))
            x = standardise(train[idx].to(device))
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
        held = evaluate(layer, held_out, args.eval_iters, args.mbs)
        epochs.append({"step": step, **held})
        print(
            f"epoch {epoch}: held-out R^2 {held['r2']:.4f}, zero codes "
            f"{100 * held['frac_zero']:.1f}%, energy {held['energy']:.1f}"
        )
    seconds = time.perf_counter() - t0

    config = {
        "kernel_size": args.lca_ksize,
        "stride": args.lca_stride,
        "pad": "same",
        "in_neurons": channels,
        "out_neurons": args.lca_feats,
        "lambda_": args.lca_lambda,
        "tau": args.lca_tau,
        "task": args.task,
        "epochs": args.epochs,
        "seed": args.seed,
        "preprocessing": "per-image zero mean, unit variance",
    }
    out = Path(args.out) if args.out else run_dir / "dictionary.pt"
    save_dictionary(out, layer.weights, config)
    save_feature_grid(layer.weights, run_dir / "feature_grid.png", scale=4)
    save_reconstructions(layer, held_out, run_dir / "reconstructions.png")
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

