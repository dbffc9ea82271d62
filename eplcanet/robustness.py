"""Robustness of trained energy-based networks: adversarial attacks through the relaxation and
common corruptions (``main_fast.py --todo attack`` and ``--todo corrupt``).

Pixel space. Budgets and corruptions are defined on pixels in [0, 1], but the datasets serve
normalised tensors (1-channel images stay in [0, 1]; 3-channel images are standardised with
``CIFAR_MEAN`` and ``CIFAR_STD``, see :mod:`eplcanet.data`). :class:`EquilibriumPredictor`
therefore takes pixel images and normalises them itself, so that an attack perturbs pixels and
the network still sees what it was trained on; :func:`to_pixels` undoes a dataset's
normalisation (clamped to [0, 1]).

Step semantics (our names for the seed's --predict-step / --attack-step):

- ``predict_step`` (``--predict-step``, default T1): the number of free-phase steps, from zero
  states, before the output is read. Every prediction (clean, attacked, corrupted, noisy) uses
  it, so the accuracy at epsilon 0 is the clean accuracy.
- ``attack_step`` (``--attack-step``, default predict_step): the attack's gradient flows through
  the last ``attack_step`` of those steps only. The first ``predict_step - attack_step`` steps run
  without an autograd graph; the input drive is computed with a graph back to the pixels and
  feeds the last steps, which are unrolled (truncated BPTT, the truncation ``--alg BPTT`` trains
  with). The logits do not depend on ``attack_step``; only the gradient does. It needs one step
  per layer to get from the output back to the input. The default is the exact gradient:
  truncation weakens the attack (on MNIST, attack_step 4 of 20 overestimated an LCA-CNN's PGD
  accuracy by about 20 points), so lower it only to save memory, and report it.

The attacks come from the Adversarial Robustness Toolbox (:mod:`eplcanet.attacks`): ``--todo
attack`` runs :data:`DRIVER_ATTACKS` at every radius, writes the table (``attack.csv``, the
columns of ``attacks.RESULT_COLUMNS`` plus ``masking_flags``) and the gradient-masking checks
(``masking_checks.csv``) and prints a warning for each failed check.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .energy.dynamics import relax
from .energy.networks import EnergyNet
from .entry import Parser, run_command

ROBUSTNESS_TODOS = ("attack", "corrupt")
NORMS = ("Linf", "L2")
NORM_CHOICES = ("Linf", "L2", "both")
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "gaussian_blur",
    "contrast",
    "brightness",
    "jpeg",
)
SEVERITIES = (1, 2, 3, 4, 5)

# Severity parameters of CIFAR-10-C (Hendrycks & Dietterich, 2019), indexed by severity - 1:
# gaussian_noise: std of additive N(0, c^2) noise; shot_noise: photons per unit intensity
# (Poisson(c x) / c); impulse_noise: fraction of values set to 0 or 1 (salt and pepper);
# gaussian_blur: the kernel's sigma in pixels; contrast: factor towards the image mean;
# brightness: added to the HSV value; jpeg: JPEG quality.
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg": (80, 65, 58, 50, 40),
}

# Default radii in pixel units: MNIST-scale for grey images, CIFAR-scale for colour images.
_DEFAULT_EPSILONS = {
    ("Linf", 1): (0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    ("L2", 1): (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    ("Linf", 3): (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
    ("L2", 3): (0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
}

CORRUPTION_FIELDS = ("corruption", "severity", "accuracy", "n", "predict_step")


# --------------------------------------------------------------------------------------------
# The differentiable predictor


def _channel_vector(values: Sequence[float] | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if name == "std" and bool((t <= 0).any()):
        raise ValueError(f"std must be positive, got {list(values)}")
    return t.view(-1, 1, 1)


def to_pixels(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Undo a dataset's normalisation: x (B, C, H, W) -> x * std + mean, clamped to [0, 1]."""
    m, s = _channel_vector(mean, "mean"), _channel_vector(std, "std")
    if m is not None:
        x = x * s.to(x) + m.to(x)
    return x.clamp(0.0, 1.0)


def dataset_normalization(dataset) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) an :class:`eplcanet.data.ImageDataset` normalises with, (None, None) if none."""
    if not hasattr(dataset, "images") or not hasattr(dataset, "_mean"):
        raise TypeError(
            f"dataset must be an eplcanet.data.ImageDataset, got {type(dataset).__name__}"
        )
    # ImageDataset keeps its constants as (C, 1, 1) tensors, or None.
    if dataset._mean is None:
        return None, None
    return tuple(dataset._mean.flatten().tolist()), tuple(dataset._std.flatten().tolist())


def dataset_pixels(dataset, indices: torch.Tensor | None = None):
    """(pixels float32 (N, C, H, W) in [0, 1], labels int64 (N,)) of an ImageDataset, without
    augmentation or normalisation; ``indices`` selects items (default all)."""
    if not hasattr(dataset, "images") or not hasattr(dataset, "labels"):
        raise TypeError(
            f"dataset must be an eplcanet.data.ImageDataset, got {type(dataset).__name__}"
        )
    images, labels = dataset.images, dataset.labels
    if indices is not None:
        images, labels = images[indices], labels[indices]
    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if pixels.numel() and not (pixels.min() >= 0 and pixels.max() <= 1):
        # the attacks clip to [0, 1] and their radii are in pixel units: outside that range
        # every epsilon would mean something else
        raise ValueError(f"the images are not pixels in [0, 1] (range [{pixels.min():.3g}, "
                         f"{pixels.max():.3g}]): give uint8 images or floats in [0, 1]")
    return pixels, labels


class EquilibriumPredictor(nn.Module):
    """Logits of an EnergyNet's free equilibrium as a differentiable function of pixels.

    forward(pixels (B, C, H, W) in [0, 1]) -> logits (B, n_classes): normalise with (mean, std),
    relax ``predict_step`` free steps from zero states and read ``net.output``. Under grad mode
    the last ``attack_step`` steps are unrolled with a graph back to the pixels (see the module
    docstring); without grad mode nothing is recorded. The network's parameters are not touched.
    """

    def __init__(
        self,
        net: EnergyNet,
        predict_step: int,
        attack_step: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(predict_step, int) or predict_step < 1:
            raise ValueError(f"predict_step must be an int >= 1, got {predict_step!r}")
        if not isinstance(attack_step, int) or not 1 <= attack_step <= predict_step:
            raise ValueError(
                f"attack_step must be an int in [1, predict_step={predict_step}], "
                f"got {attack_step!r}"
            )
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        if attack_step < net.n_states:
            # The drive enters the first layer and needs one step per layer to reach the output:
            # fewer unrolled steps leave the logits without a path back to the pixels.
            raise ValueError(
                f"attack_step must be >= the number of layers of neurons ({net.n_states}), so "
                f"that the gradient reaches the input; got {attack_step}"
            )
        self.net = net
        self.predict_step = predict_step
        self.attack_step = attack_step
        self.register_buffer("mean", _channel_vector(mean, "mean"), persistent=False)
        self.register_buffer("std", _channel_vector(std, "std"), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the network's input space, (B, C, H, W)."""
        if self.mean is None:
            return pixels
        return (pixels - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels)
        net = self.net
        # Computed once (for an LCA-CNN it is the sparse code, the costly part), with a graph back
        # to the pixels under grad mode; the first steps use it detached, so the gradient reaches
        # the pixels only through the drive of the last attack_step steps.
        drive = net.input_drive(x)
        with torch.no_grad():
            states = relax(
                net,
                drive.detach(),
                net.init_states(x.shape[0]),
                self.predict_step - self.attack_step,
            )
        states = relax(net, drive, states, self.attack_step)
        return net.output(states)


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Predicted classes (N,) of pixels (N, C, H, W), in batches, without autograd."""
    out = [model(pixels[i : i + batch_size]).argmax(1) for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Attacks


def default_epsilons(norm: str, channels: int) -> tuple[float, ...]:
    """Default radii for `norm`: MNIST-scale for 1-channel images, CIFAR-scale for 3 channels."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return _DEFAULT_EPSILONS[(norm, 3 if channels == 3 else 1)]


# --------------------------------------------------------------------------------------------
# Corruptions


def _brightness(x: torch.Tensor, c: float) -> torch.Tensor:
    # HSV value += c with hue and saturation kept: RGB is linear in V at fixed (H, S), so the
    # pixel scales by (V + c) / V; black pixels (V = 0) become grey c. Grey images: x + c.
    v = x.amax(1, keepdim=True)
    new_v = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * new_v / v.clamp_min(1e-12), new_v.expand_as(x))


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    arrays = (x.detach().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for a in arrays:
        buffer = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer))
        out.append(decoded.reshape(a.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur

    radius = max(1, math.ceil(3 * sigma))
    # Reflect padding needs the radius below the image side.
    radius = min(radius, min(x.shape[-2:]) - 1)
    return gaussian_blur(x, [2 * radius + 1] * 2, [float(sigma)] * 2)


def corrupt(
    pixels: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A common corruption of pixels (B, C, H, W) in [0, 1] at severity 1..5, in [0, 1].

    C is 1 or 3 (jpeg needs one of those); parameters are SEVERITY_PARAMS[name][severity - 1].
    The noise corruptions draw from `generator` (seed it for reproducible results).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {name!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if pixels.dim() != 4:
        raise ValueError(f"pixels must have shape (B, C, H, W), got {tuple(pixels.shape)}")
    c = SEVERITY_PARAMS[name][severity - 1]
    x = pixels
    dev = x.device
    if name == "gaussian_noise":
        out = x + c * torch.randn(x.shape, generator=generator, device=dev)
    elif name == "shot_noise":
        out = torch.poisson(x.clamp(0, 1) * c, generator=generator) / c
    elif name == "impulse_noise":
        u = torch.rand(x.shape, generator=generator, device=dev)
        salt = torch.rand(x.shape, generator=generator, device=dev) < 0.5
        out = torch.where(u < c, salt.to(x.dtype), x)
    elif name == "gaussian_blur":
        out = _gaussian_blur(x, c)
    elif name == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) * c + mean
    elif name == "brightness":
        out = _brightness(x, c)
    else:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"jpeg needs 1 or 3 channels, got {x.shape[1]}")
        out = _jpeg(x, int(c))
    return out.clamp(0.0, 1.0)


def evaluate_corruptions(
    model: EquilibriumPredictor,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Accuracy per corruption and severity (CORRUPTION_FIELDS rows), after a "clean" row with
    severity 0. pixels (N, C, H, W) in [0, 1], labels (N,)."""
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {name!r}")
    for s in severities:
        if s not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {s!r}")
    n = labels.shape[0]
    if pixels.shape[0] != n or n == 0:
        raise ValueError("pixels and labels need the same non-zero length")
    device = next(model.parameters(), pixels).device
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = labels.to(device)
    clean = int((predict(model, pixels.to(device), batch_size) == labels).sum()) / n
    rows = [
        {
            "corruption": "clean",
            "severity": 0,
            "accuracy": clean,
            "n": n,
            "predict_step": model.predict_step,
        }
    ]
    jobs = [(name, s) for name in corruptions for s in severities]
    for name, s in tqdm(jobs, desc="corrupt", leave=False, disable=None if progress else True):
        correct = 0
        for start in range(0, n, batch_size):
            x = corrupt(pixels[start : start + batch_size].to(device), name, s, generator=gen)
            with torch.no_grad():
                correct += int((model(x).argmax(1) == labels[start : start + batch_size]).sum())
        rows.append(
            {
                "corruption": name,
                "severity": s,
                "accuracy": correct / n,
                "n": n,
                "predict_step": model.predict_step,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# CSV files


def write_rows(rows: list[dict], fields: Sequence[str], path: str | Path) -> Path:
    """Write rows (dicts over fields) as a CSV file, atomically; returns the path."""
    from .runs import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(buffer.getvalue(), path)
    return path


def read_rows(path: str | Path) -> list[dict]:
    """Rows of an attack.csv or corruptions.csv, numbers parsed (ints stay ints)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")

    def parse(v: str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    with open(path, newline="", encoding="utf-8") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


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

    from . import attacks, plots
    from .runs import atomic_write_text

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
    """``python -m eplcanet.robustness plot OUT.png LABEL=RUN_DIR ...``: one figure of the
    attack.csv curves of several runs (e.g. EP vs BPTT vs LCA-CNN);
    ``python -m eplcanet.robustness study ROOT... --out DIR``: the multi-seed table and figure of
    the attacked runs below ROOT (eplcanet.robustness_study)."""
    p = Parser(prog="python -m eplcanet.robustness")
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
