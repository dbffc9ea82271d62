"""Train and evaluate loops (progress bars, no host synchronisation per step)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import signal
from typing import TYPE_CHECKING, Callable

import torch
from tqdm.auto import tqdm

from ..energy.dynamics import settle
from ..energy.estimators import estimate_grads
from ..energy.learning import Phases, StateBank, cep_vs_ep
from ..energy.networks import EnergyNet
from .entry import Diverged
from ..runs import get_rng_state, set_rng_state

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


# A cross-entropy this many times that of a uniform guess (ln C) is no longer training: the
# logits have blown up (the MSE losses are bounded by the saturating outputs and cannot).
EXPLODED_LOSS_FACTOR = 100.0


class DivergenceWatch:
    """Notes the first minibatch of an epoch whose loss, gradients or states are not finite, or
    whose cross-entropy exploded, without a host synchronisation per minibatch; `check` (every
    20 minibatches and at the end) raises Diverged naming the epoch and minibatch, before
    anything of that epoch is saved."""

    _WHAT = ("", "a non-finite loss or state", "a non-finite gradient",
             "an exploded loss (over {:g} times ln(classes))".format(EXPLODED_LOSS_FACTOR))

    def __init__(self, net: EnergyNet, device) -> None:
        self.net = net
        self.limit = EXPLODED_LOSS_FACTOR * math.log(net.n_classes) if net.loss == "cel" else None
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.kind = torch.zeros((), dtype=torch.long, device=device)

    def watch(self, batch: int, losses: torch.Tensor, states: list[torch.Tensor]) -> None:
        """After the gradients are written, before the optimiser steps on them."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        finite_states = torch.stack([s.isfinite().all() for s in states]).all()
        kind = torch.where(~(losses.isfinite().all() & finite_states), 1, 0)
        if grads:
            kind = torch.where((kind == 0) & ~torch.nn.utils.get_total_norm(grads).isfinite(),
                               2, kind)
        if self.limit is not None:
            kind = torch.where((kind == 0) & (losses.mean() > self.limit), 3, kind)
        new = (self.first < 0) & (kind > 0)
        self.first = torch.where(new, batch, self.first)
        self.kind = torch.where(new, kind, self.kind)

    def check(self, epoch: int) -> None:
        first = int(self.first)
        if first >= 0:
            raise Diverged(
                f"error: training diverged at epoch {epoch}, minibatch {first + 1}: "
                f"{self._WHAT[int(self.kind)]}; nothing of this epoch was saved (checkpoint.pt "
                f"and best.pt, if any, are those of the epochs before); lower --lrs or --betas")


@dataclasses.dataclass
class EpochProgress:
    """The minibatches of an epoch done so far and the sums its metrics are made of: what a
    mid-epoch checkpoint holds so that the resumed epoch ends exactly as the whole one would."""

    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    total: int = 0
    steps: list = dataclasses.field(default_factory=list)  # (free, nudged) per minibatch
    rng: dict | None = None  # the global RNG states after `batches` minibatches

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class StopSignals:
    """SIGINT and SIGTERM (Slurm's preemption and time-limit signal) ask the training loop to
    stop after the current minibatch; a second SIGINT (Ctrl-C again) stops at once. A repeated
    SIGTERM changes nothing: under Slurm and torchrun one preemption reaches a worker more than
    once (Slurm signals every process of the job, torchrun forwards its own), and each copy must
    not cost the checkpoint. Only the main thread can install handlers; elsewhere this does
    nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this minibatch and saving "
              f"(Ctrl-C again stops at once, without saving)", flush=True)

    def __enter__(self) -> StopSignals:
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            # once a SIGTERM stop is under way the process is ending: a late copy of the signal
            # must not kill it while the checkpoint is reported and the exit code set
            stopping = s == signal.SIGTERM and self.signum == signal.SIGTERM
            signal.signal(s, signal.SIG_IGN if stopping else handler)

    def requested(self) -> bool:
        return self.signum is not None


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
    progress: EpochProgress | None = None,
    stop: Callable[[], bool] | None = None,
    epoch: int = 0,
    cep_debug: bool = False,
) -> tuple[dict, list[torch.Tensor], EpochProgress | None]:
    """One pass over `loader`: estimate gradients (EP or BPTT) and step the optimizer; CEP
    steps it after every nudged step instead (``learning.cep_grads``), and with ``cep_debug``
    prints, for the epoch's first minibatch, its summed steps against one-shot EP
    (``learning.cep_vs_ep``, on a copy of the network taken before the minibatch).

    Returns ({"train_loss", "train_acc"} measured on the free equilibria, and with the network's
    tol the steps its phases took, ``runs.STEP_FIELDS``; last free states).
    With ``dist`` (several processes, each with its part of every minibatch): the gradients are
    averaged over the global minibatch before each step, and the metrics are over all parts.
    With ``bank`` (--warm-start; the loader then yields (x, y, index)): a minibatch whose samples
    all have stored free equilibria starts its free phase there and runs warm_T1 steps instead
    of T1; the new equilibria are stored.
    With ``progress`` (a mid-epoch checkpoint's): its minibatches are skipped (the loader's order
    is a function of the seed and epoch), its sums carried on and its RNG states restored.
    ``stop()`` is asked after every minibatch (with ``dist``: agreed by all processes); when it
    says yes the epoch ends there and the third value returned is the progress to save (None
    for an epoch that ran to its end). A non-finite loss, gradient or state raises
    ``entry.Diverged`` naming ``epoch`` and the minibatch.
    """
    warm = dataclasses.replace(phases, T1=warm_T1) if bank is not None else phases
    done = progress if progress is not None else EpochProgress()
    loss_sum = torch.tensor(done.loss_sum, dtype=torch.float64, device=device)
    correct = torch.tensor(done.correct, dtype=torch.long, device=device)
    total = done.total
    states: list[torch.Tensor] = []
    steps: list[tuple[int, int]] = [tuple(s) for s in done.steps]  # host ints, no sync
    guard = DivergenceWatch(net, device)
    bar = tqdm(loader, desc=desc, leave=False,
               disable=True if dist is not None and not dist.is_main else None)
    batches = iter(bar)
    if done.batches:  # skip what the checkpoint did; the RNG as it was after those minibatches
        next(itertools.islice(batches, done.batches - 1, done.batches), None)
    if done.rng is not None:
        set_rng_state(done.rng)
    stopped = None
    debug_pending = cep_debug and alg == "CEP"
    for it, (x, y, *index) in enumerate(batches, start=done.batches):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        init = None
        if bank is not None:
            init = bank.lookup(index[0], x.device, net.synapses[0].weight.dtype)
        record = {} if debug_pending else None
        before = copy.deepcopy(net) if debug_pending else None

        def update(n=y.shape[0]) -> None:  # CEP: after every nudged step
            if dist is not None:
                dist.average_grads(net, n)
            optimizer.step()

        with precision_context(precision, device):
            est = estimate_grads(net, x, y, alg, phases if init is None else warm, init=init,
                                 update=update, record=record)
        if record is not None:
            debug_pending = False
            _print_cep_debug(epoch, it, record["beta"], cep_vs_ep(before, x, y, phases, record))
        states = est.states
        steps.append((est.free_steps, est.nudged_steps))
        if bank is not None:
            bank.store(index[0], states)
        if dist is not None and not est.applied:
            dist.average_grads(net, y.shape[0])
        with torch.no_grad():
            losses = net.loss_per_sample(states, y)
            guard.watch(it, losses, states)
        if not est.applied:
            optimizer.step()
        with torch.no_grad():
            loss_sum += losses.sum()
            correct += (net.predict(states) == y).sum()
        total += y.shape[0]
        if it % 20 == 0:  # a host sync only every 20 minibatches, for the progress bar
            guard.check(epoch)
            bar.set_postfix(acc=f"{correct.item() / total:.3f}")
        if stop is not None and _agreed(stop(), dist):
            guard.check(epoch)
            stopped = EpochProgress(it + 1, float(loss_sum), int(correct), total,
                                    [list(s) for s in steps], get_rng_state())
            break
    guard.check(epoch)
    if dist is not None:
        loss_sum, correct, total = dist.all_sum(loss_sum, correct, total)
    n = max(total, 1)
    stats = {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n}
    if net.relaxation.tol is not None and steps:  # this process's minibatches
        free, nudged = zip(*steps)
        stats.update(free_steps_mean=sum(free) / len(free), free_steps_max=max(free),
                     nudged_steps_mean=sum(nudged) / len(nudged), nudged_steps_max=max(nudged))
    return stats, states, stopped


def _print_cep_debug(epoch: int, it: int, beta: float, rows: dict[str, dict[str, float]]) -> None:
    print(f"cep-debug epoch {epoch} minibatch {it + 1} (beta2 {beta:+g}): summed CEP steps "
          f"vs one-shot EP, per tensor")
    for name, r in rows.items():
        print(f"  {name:24s} |CEP| {r['cep_norm']:.4e} |EP| {r['ep_norm']:.4e} "
              f"cosine {r['cosine']:.6f} rel diff {r['rel_diff']:.3e}")


def _agreed(flag: bool, dist: DistContext | None) -> bool:
    """Whether any process was asked to stop (each process gets its own signal, maybe one
    minibatch apart: they must stop after the same one)."""
    if dist is None or not dist.enabled:
        return flag
    return dist.all_sum(int(flag))[0] > 0
