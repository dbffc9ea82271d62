"""Common corruptions of pixel images (the CIFAR-10-C families at severities 1-5) and the
accuracy of a predictor under them (``main_fast.py --todo corrupt``)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .predictor import EquilibriumPredictor, predict

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

CORRUPTION_FIELDS = ("corruption", "severity", "accuracy", "n", "predict_step")


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
