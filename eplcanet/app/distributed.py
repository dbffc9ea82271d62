"""Data-parallel training on several processes (GPUs, nodes) with torch.distributed.

Launch ``main_fast.py`` with torchrun; every process runs the same program on its share of each
minibatch::

    torchrun --standalone --nproc_per_node=4 main_fast.py --mbs 128 ...          # one node
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d \\
             --rdzv_endpoint=$MASTER_ADDR:29500 main_fast.py --mbs 128 ...       # two nodes

What a process does, and why a distributed run equals a single-process run:

* Batches. ``--mbs`` is the global minibatch. Every process builds data.py's single-process
  order of the epoch, a function of (seed, epoch), and takes the r-th contiguous part of each
  global minibatch (:class:`ShardSampler`), so the union of the parts at every step is the
  single-process minibatch. ``--mbs`` must be a multiple of the number of processes (equal parts,
  no idle GPU); the last, partial minibatch of an epoch is split as evenly as it goes. When it
  holds fewer samples than there are processes it is skipped, with a note: a process without
  data would stall the others.
* Gradients. EP and BPTT write a batch *mean* to ``.grad``; :meth:`DistContext.average_grads`
  all-reduces ``n_r * grad_r`` and ``n_r`` in one buffer and divides, which is the mean over the
  global minibatch also when the parts differ in size. Every process then takes the same
  optimizer step, so parameters stay identical without ever being sent (they are broadcast from
  rank 0 once, at the start, as DistributedDataParallel does). EP writes ``.grad`` without a
  backward pass through a module, which is why the reduction is an explicit all-reduce rather
  than DistributedDataParallel's backward hooks.
* Dictionary (LCACNN finetune / learn). The Hebbian step divides by how often each atom fired in
  the whole minibatch and clips, so an average of per-process steps is not the single-process
  step. Instead every process gathers the minibatch's images and nudged codes from all processes
  and applies the step of the global minibatch; rank 0's atoms are then broadcast, so the
  dictionaries stay bitwise identical (and unit-norm) even where GPU kernels are not
  deterministic. The gather moves the codes (batch x code size), the broadcast only the atoms.
* Metrics. Training loss and accuracy and the validation / test counts are summed over
  processes; evaluation gives each process a contiguous block of the split, without the
  duplicate padding of DistributedSampler, so every sample counts exactly once.
* Randomness. Every process seeds identically and draws the same random numbers (the random
  sign of beta, DataLoader seeds) in the same order; work done by rank 0 alone runs under a
  forked RNG state so that it draws nothing from the shared stream.
* Files and logs. Only rank 0 creates the run directory and writes metrics, plots, dictionaries
  and checkpoints; the other processes run with stdout discarded (stderr is kept, so their
  warnings and errors show). A checkpoint of a distributed run is the checkpoint of the same
  single-process run: it resumes with or without torchrun.
* Failures. An exception in any process is recorded for torchrun's error summary, the process
  group is destroyed, and torchrun stops the other processes. After every epoch the processes
  compare a checksum of their parameters and buffers and stop with an error if they differ.

Backends: nccl when the device is a GPU (one GPU per process, cuda:LOCAL_RANK), gloo on the CPU.
Outside torchrun (no WORLD_SIZE > 1 in the environment and no process group) everything here is
a no-op and the program is the single-process one.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..data import SeededShuffleSampler, make_loader

__all__ = ["DistContext", "ShardSampler", "session", "shard_bounds"]


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of part `rank` of range(n) cut into `world_size` contiguous parts whose sizes
    differ by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


class ShardSampler(Sampler[int]):
    """Rank r's part of every global minibatch of a single-process order.

    ``base`` yields the order of one epoch (e.g. :class:`~eplcanet.data.SeededShuffleSampler`);
    it is cut into global minibatches of ``global_batch`` indices, and this sampler yields the
    r-th contiguous part of each. Batched by ``global_batch // world_size`` (what
    :meth:`DistContext.train_loader` does), the processes' minibatches at step k together are
    the single-process minibatch k. A final minibatch with fewer than ``world_size`` indices is
    skipped (see :attr:`skipped`), so that every process takes the same number of steps.
    """

    def __init__(self, base: Sampler[int] | Sequence[int], global_batch: int, rank: int,
                 world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world {world_size}")
        if global_batch % world_size:
            raise ValueError(f"global_batch ({global_batch}) must be a multiple of world_size "
                             f"({world_size})")
        self.base, self.global_batch = base, global_batch
        self.rank, self.world_size = rank, world_size

    @property
    def skipped(self) -> int:
        """Indices of the epoch that no process gets (a final minibatch smaller than the world)."""
        tail = len(self.base) % self.global_batch
        return tail if tail < self.world_size else 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.base)
        full, tail = divmod(n, self.global_batch)
        lo, hi = shard_bounds(tail, self.rank, self.world_size)
        return full * (self.global_batch // self.world_size) + (hi - lo if tail >= self.world_size
                                                                 else 0)

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        for start in range(0, len(order) - self.skipped, self.global_batch):
            batch = order[start : start + self.global_batch]
            lo, hi = shard_bounds(len(batch), self.rank, self.world_size)
            yield from batch[lo:hi]


def _checksum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An int64 digest of the tensors' bits (equal tensors give equal digests)."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    total = torch.zeros((), dtype=torch.int64, device=tensors[0].device if tensors else "cpu")
    for i, t in enumerate(tensors):
        bits = t.detach().contiguous().view(ints[t.element_size()]).to(torch.int64)
        # Weighting by position makes swapped values visible; int64 overflow wraps, as a hash may.
        weights = torch.arange(1, bits.numel() + 1, device=bits.device, dtype=torch.int64)
        total += (bits.flatten() * weights).sum() * (2 * i + 1)
    return total


@dataclass
class DistContext:
    """This process's place in a distributed run; a single-process run has world_size 1, and
    then every method is a no-op (or the plain single-process behaviour).

    Attributes: rank (0 .. world_size - 1, over all nodes), world_size, local_rank (the process's
    index on its node, which picks its GPU) and device (where the model and batches live).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _skip_noted: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        """Whether other processes take part (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    # ----------------------------------------------------------------------------- control
    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (e.g. a download into a shared
        directory)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def local_batch(self, global_batch: int) -> int:
        """The per-process share of a global minibatch; refuses a size that does not divide."""
        if global_batch % self.world_size:
            n = self.world_size
            lower = max(n, global_batch // n * n)
            raise SystemExit(
                f"error: --mbs {global_batch} is the global minibatch and must be a multiple of "
                f"the number of processes ({n}): e.g. --mbs {lower} or {lower + n}"
            )
        return global_batch // self.world_size

    # ----------------------------------------------------------------------------- data
    def train_loader(self, dataset: Dataset, global_batch: int, seed: int,
                     epoch: int) -> DataLoader:
        """This process's part of the single-process training loader of (seed, epoch)."""
        if not self.enabled:
            return make_loader(dataset, global_batch, shuffle=True, seed=seed, epoch=epoch)
        sampler = ShardSampler(SeededShuffleSampler(len(dataset), seed, epoch), global_batch,
                               self.rank, self.world_size)
        if sampler.skipped and self.is_main and not self._skip_noted:
            self._skip_noted = True
            print(f"note: the last {sampler.skipped} training sample(s) of the epoch are skipped "
                  f"(fewer than the {self.world_size} processes); a --mbs that leaves no such "
                  "remainder avoids it")
        return make_loader(dataset, self.local_batch(global_batch), shuffle=False, seed=seed,
                           epoch=epoch, sampler=sampler)

    def eval_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """A loader over this process's contiguous block of `dataset` (all of it in a single
        process), in order; the blocks of all processes cover every sample exactly once."""
        if self.enabled:
            lo, hi = shard_bounds(len(dataset), self.rank, self.world_size)
            dataset = Subset(dataset, range(lo, hi))
        return make_loader(dataset, batch_size, shuffle=False)

    # ----------------------------------------------------------------------------- model
    def prepare_model(self, net: nn.Module) -> None:
        """Broadcast rank 0's parameters and buffers: every process then starts identical. (An
        LCA_CNN's dictionary steps share the global minibatch through the context it was built
        with: ``build_model(..., dictionary_sync=ctx)``.)"""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in (*net.parameters(), *net.buffers()):
                dist.broadcast(t.data, src=0)

    def average_grads(self, net: nn.Module, n: int) -> None:
        """Replace every ``.grad`` (a mean over this process's n samples) by the mean over the
        global minibatch: sum_r n_r grad_r / sum_r n_r, in one all-reduce."""
        if not self.enabled:
            return
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads] + [grads[0].new_ones(1)])
        flat.mul_(n)
        dist.all_reduce(flat)
        flat = flat[:-1] / flat[-1]
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def all_sum(self, *values: torch.Tensor | float) -> list[float]:
        """The sums over processes of scalar values (tensors or numbers), as floats (float64)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def gather_batch(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's (n_r, ...) tensor along dim 0 in rank order; the n_r may
        differ. With ShardSampler's parts this is the global minibatch in single-process order."""
        if not self.enabled:
            return t
        t = t.contiguous()
        sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
        counts = [int(s) for s in sizes]
        longest = max(counts)
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def broadcast_(self, t: torch.Tensor) -> None:
        """Overwrite t with rank 0's t, in place."""
        if self.enabled:
            dist.broadcast(t.data, src=0)

    def check_in_sync(self, net: nn.Module, when: str) -> None:
        """Stop with an error if the processes' parameters or buffers are not bitwise equal."""
        if not self.enabled:
            return
        digest = _checksum([*net.parameters(), *net.buffers()]).reshape(1)
        low, high = digest.clone(), digest.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(
                f"the processes' models differ {when}: their updates were not identical "
                "(a nondeterministic kernel, or a process that took a different path)"
            )

    @contextlib.contextmanager
    def main_only_rng(self) -> Iterator[None]:
        """Around work that rank 0 does alone: whatever it draws from the global random number
        generators is given back, so every process keeps drawing the same numbers."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            yield


def _pick_device(device: torch.device, local_rank: int) -> torch.device:
    """The process's device: GPU number local_rank when a GPU is asked for, else the CPU."""
    if device.type != "cuda":
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise SystemExit(f"error: process {local_rank} on this node needs GPU {local_rank}, but "
                         f"only {n} are visible: give torchrun --nproc_per_node <= {n}")
    if device.index not in (None, 0, local_rank):
        print(f"note: under torchrun each process uses GPU LOCAL_RANK; --device {device} is "
              f"taken as cuda:{local_rank}", file=sys.stderr)
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[DistContext]:
    """The DistContext of this process for the duration of a run.

    Under torchrun (WORLD_SIZE > 1): init the process group (nccl on GPUs, gloo on the CPU), use
    GPU LOCAL_RANK, discard stdout on ranks other than 0, and on exit record an exception for
    torchrun's error summary and destroy the group. A process group that the caller already
    initialised is used as it is and left open. Otherwise: a single-process context on `device`.
    """
    owned = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            yield DistContext(device=device)
            return
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device, local)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        owned = True
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, device=device)
    try:
        with contextlib.ExitStack() as stack:
            if not ctx.is_main:  # one log per run: rank 0's
                sink = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(sink))
            yield ctx
    except Exception as exc:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(exc)  # written where torchrun reads it
        raise
    finally:
        if owned:
            dist.destroy_process_group()
