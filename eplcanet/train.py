"""Train and evaluate loops (progress bars, no host synchronisation per step)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .energy.dynamics import settle
from .energy.learning import Phases, StateBank, estimate_grads
from .energy.networks import EnergyNet

if TYPE_CHECKING:
    from .distributed import DistContext


PRECISIONS = ("fp32", "tf32", "bf16")


def precision_context(precision: str, device) -> contextlib.AbstractContextManager:
    """bf16: autocast the relaxation's convolutions and matmuls (states stay fp32, see
    dynamics.step; EP's nudged phases and update leave autocast, see learning.ep_grads); fp32 and tf32 run as they are (tf32 is a global CUDA switch, set once by
    ``set_matmul_precision``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_matmul_precision(precision: str, device) -> None:
    """Allow TF32 tensor cores on CUDA for 'tf32' only; 'fp32' means true fp32 convolutions."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


@torch.no_grad()
def evaluate(net: EnergyNet, loader, T1: int, device, desc: str = "eval",
             dist: DistContext | None = None, precision: str = "fp32") -> float:
    """Accuracy (fraction in [0, 1]) of the free-phase equilibrium after T1 steps (at most T1,
    when the network's tol finds the phase settled sooner).

    With ``dist`` (several processes, each with its own part of the data): over all parts.
    """
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    quiet = dist is not None and not dist.is_main
    for x, y in tqdm(loader, desc=desc, leave=False, disable=True if quiet else None):
        x, y = x.to(device), y.to(device)
        with precision_context(precision, device):
            states = settle(net, net.input_drive(x), net.init_states(x.shape[0]), T1)[0]
        correct += (net.predict(states) == y).sum()
        total += y.shape[0]
    if dist is not None:
        correct, total = dist.all_sum(correct, total)
    return float(correct) / max(total, 1)


def train_epoch(
    net: EnergyNet,
    optimizer: torch.optim.Optimizer,
    loader,
    alg: str,
    phases: Phases,
    device,
    desc: str = "train",
    dist: DistContext | None = None,
    precision: str = "fp32",
    bank: StateBank | None = None,
    warm_T1: int | None = None,
) -> tuple[dict, list[torch.Tensor]]:
    """One pass over `loader`: estimate gradients (EP or BPTT) and step the optimizer.

    Returns ({"train_loss", "train_acc"} measured on the free equilibria, and with the network's
    tol the steps its phases took, ``runs.STEP_FIELDS``; last free states).
    With ``dist`` (several processes, each with its part of every minibatch): the gradients are
    averaged over the global minibatch before each step, and the metrics are over all parts.
    With ``bank`` (--warm-start; the loader then yields (x, y, index)): a minibatch whose samples
    all have stored free equilibria starts its free phase there and runs warm_T1 steps instead
    of T1; the new equilibria are stored.
    """
    warm = dataclasses.replace(phases, T1=warm_T1) if bank is not None else phases
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    states: list[torch.Tensor] = []
    steps: list[tuple[int, int]] = []  # (free, nudged) per minibatch: host ints, no sync
    bar = tqdm(loader, desc=desc, leave=False,
               disable=True if dist is not None and not dist.is_main else None)
    for it, (x, y, *index) in enumerate(bar):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        init = None
        if bank is not None:
            init = bank.lookup(index[0], x.device, net.synapses[0].weight.dtype)
        with precision_context(precision, device):
            est = estimate_grads(net, x, y, alg, phases if init is None else warm, init=init)
        states = est.states
        steps.append((est.free_steps, est.nudged_steps))
        if bank is not None:
            bank.store(index[0], states)
        if dist is not None:
            dist.average_grads(net, y.shape[0])
        optimizer.step()
        with torch.no_grad():
            loss_sum += net.loss_per_sample(states, y).sum()
            correct += (net.predict(states) == y).sum()
        total += y.shape[0]
        if it % 20 == 0:  # a host sync only every 20 minibatches, for the progress bar
            bar.set_postfix(acc=f"{correct.item() / total:.3f}")
    if dist is not None:
        loss_sum, correct, total = dist.all_sum(loss_sum, correct, total)
    n = max(total, 1)
    stats = {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n}
    if net.relaxation.tol is not None and steps:  # this process's minibatches
        free, nudged = zip(*steps)
        stats.update(free_steps_mean=sum(free) / len(free), free_steps_max=max(free),
                     nudged_steps_mean=sum(nudged) / len(nudged), nudged_steps_max=max(nudged))
    return stats, states
