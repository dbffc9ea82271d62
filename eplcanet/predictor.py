"""A trained energy-based network as a differentiable classifier of pixels, the form attacks
and corruptions need.

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .energy.dynamics import relax
from .energy.networks import EnergyNet


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
