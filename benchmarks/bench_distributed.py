"""Data-parallel throughput: training minibatches per second on 1 and on 2 CPU processes.

    python benchmarks/bench_distributed.py [--steps 8] [--launches 3] [--out docs/distributed-benchmark.md]

Each process runs one torch thread and the gloo backend, as `torchrun --nproc_per_node=2` would
on a CPU node, and trains on its half of every global minibatch (eplcanet.app.distributed). Only the
training steps are timed (the data is loaded and batched beforehand, between barriers), so the
numbers are the compute and the all-reduce of the EP gradient estimates (and, for LCACNN with a
learning dictionary, the gather of the minibatch's codes), not process start-up. One-process and
two-process launches alternate, and every row is the median over all timed repetitions, so that
load changes on a shared machine hit both alike. speedup = (2-process samples/s) / (1-process
samples/s); efficiency = speedup / 2. comm = the share of a step spent in those collectives,
waiting for the other process included. CPU ms/step adds the CPU time of all processes: it shows
what the distribution costs in work, apart from how many free cores the machine had.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

if __package__ in (None, ""):  # run as a script: make `eplcanet` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model
from eplcanet.app.settings import parse_settings
from eplcanet.data import load_task
from eplcanet.app.distributed import DistContext
from eplcanet.app.build import build_model, build_optimizer, phases_of, seed_everything
from eplcanet.app.train import train_epoch


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    flags: tuple[str, ...]
    colour: bool  # synthetic 32x32 RGB images instead of the bundled 8x8 digits


WORKLOADS = (
    Workload("cnn-digits", "EP CNN 32-64 on 8x8 digits, T1 20, T2 4",
             ("--channels", "32", "64", "--T1", "20", "--T2", "4"), colour=False),
    Workload("cnn-32x32-rgb", "EP CNN 32-64 on 32x32 RGB, T1 20, T2 4",
             ("--channels", "32", "64", "--T1", "20", "--T2", "4"), colour=True),
    Workload("lcacnn-learn-32x32-rgb",
             "LCACNN (32 atoms 5x5, stride 2, 50 LCA iterations, learning dictionary) + EP conv 32,"
             " T1 20, T2 4",
             ("--model", "LCACNN", "--channels", "32", "--T1", "20", "--T2", "4", "--lca_feats",
              "32", "--lca_ksize", "5", "--lca_stride", "2", "--lca_iters", "50",
              "--dict_training", "learn"), colour=True),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn, sink: list[float]):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sink.append(time.perf_counter() - t0)
        return out

    return wrapper


def _worker(rank: int, world: int, port: int, argv: list[str], steps: int, repeats: int,
            out: str) -> None:
    """One process: `repeats` timed passes over `steps` global minibatches (after one warm-up)."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    try:
        ctx = DistContext(rank=rank, world_size=world, local_rank=rank)
        args = parse_settings(argv)
        seed_everything(args.run.seed)
        splits = load_task(args.data.task, data_path=args.data.data_path, val_fraction=0.0,
                           seed=args.run.seed)
        shape = (splits.in_channels, splits.image_size, splits.image_size)
        net = build_model(args, shape, splits.n_classes,
                          dictionary_sync=ctx if ctx.enabled else None)
        ctx.prepare_model(net)
        opt, _ = build_optimizer(args, net)
        comm: list[float] = []
        ctx.average_grads = _timed(ctx.average_grads, comm)
        ctx.gather_batch = _timed(ctx.gather_batch, comm)
        times, comm_per_rep, cpu = [], [], []
        for rep in range(repeats + 1):
            loader = ctx.train_loader(splits.train, args.optim.mbs, seed=args.run.seed,
                                      epoch=rep)
            batches = list(itertools.islice(loader, steps))
            comm.clear()
            ctx.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            train_epoch(net, opt, batches, args.estimator.alg, phases_of(args), "cpu", dist=ctx)
            c1 = time.process_time()
            ctx.barrier()
            if rep:  # the first pass warms up allocators and kernels
                times.append(time.perf_counter() - t0)
                comm_per_rep.append(sum(comm))
                cpu.append(c1 - c0)
        Path(f"{out}.{rank}").write_text(json.dumps({"times": times, "comm": comm_per_rep,
                                                     "cpu": cpu}))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _synthetic_npz(path: Path, n: int, colour: bool) -> None:
    """Random images with labels that depend on them (so the loss is not constant)."""
    rng = np.random.default_rng(0)
    shape = (n, 32, 32, 3) if colour else (n, 8, 8)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = (x.reshape(n, -1)[:, :10].argmax(1)).astype(np.int64)
    np.savez(path, x=x, y=y)


def measure(workload: Workload, steps: int, batch: int, launches: int, repeats: int,
            tmp: Path) -> dict:
    data = ["--task", "digits"]
    if workload.colour:
        path = tmp / "rgb.npz"
        if not path.is_file():
            _synthetic_npz(path, 4096, colour=True)
        data = ["--task", "npz", "--data-path", str(path)]
    argv = [*workload.flags, *data, "--mbs", str(batch), "--device", "cpu"]
    results = {w: {"times": [], "comm": [], "cpu": []} for w in (1, 2)}
    for _ in range(launches):
        for world in (1, 2):
            out = tmp / f"{workload.name}-{world}.json"
            mp.spawn(_worker, args=(world, _free_port(), argv, steps, repeats, str(out)),
                     nprocs=world, join=True)
            ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
            results[world]["times"] += ranks[0]["times"]
            results[world]["comm"] += ranks[0]["comm"]
            # CPU seconds of all processes together: the work the run costs, whatever the load
            results[world]["cpu"] += [sum(c) for c in zip(*(r["cpu"] for r in ranks))]
    row = {"name": workload.name, "description": workload.description}
    for world in (1, 2):
        seconds = statistics.median(results[world]["times"])
        row[f"step_ms_{world}"] = 1e3 * seconds / steps
        row[f"samples_s_{world}"] = steps * batch / seconds
        row[f"comm_{world}"] = statistics.median(
            c / t for c, t in zip(results[world]["comm"], results[world]["times"]))
        row[f"cpu_ms_{world}"] = 1e3 * statistics.median(results[world]["cpu"]) / steps
    row["speedup"] = row["samples_s_2"] / row["samples_s_1"]
    return row


def _machine() -> str:
    return f"{cpu_model(platform.machine())}, {os.cpu_count()} logical CPUs; torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="global minibatches per pass")
    parser.add_argument("--mbs", type=int, default=64, help="global minibatch")
    parser.add_argument("--launches", type=int, default=3, help="alternating launches per size")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per launch")
    parser.add_argument("--only", nargs="+", choices=[w.name for w in WORKLOADS], default=None)
    parser.add_argument("--out", default="docs/distributed-benchmark.md", help="markdown file to write")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in WORKLOADS:
            if args.only and w.name not in args.only:
                continue
            print(f"measuring {w.name} ...", flush=True)
            rows.append(measure(w, args.steps, args.mbs, args.launches, args.repeats, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()[0]
    doc = __doc__.strip().split("\n\n")
    command = (f"python benchmarks/bench_distributed.py --steps {args.steps} --mbs {args.mbs} "
               f"--launches {args.launches} --repeats {args.repeats}")
    where = (f"Machine: {_machine()}; 1-minute load average {load_before:.1f} before and "
             f"{load_after:.1f} after (other work shared the CPUs).")
    head = ("| workload | global minibatch | 1 process: ms/step | samples/s "
            "| 2 processes: ms/step | samples/s | speedup | efficiency | comm share (2 proc.) "
            "| CPU ms/step, 1 proc. | CPU ms/step, 2 proc. (sum) |")
    lines = [
        f"## {doc[0].strip()}", "",
        f"Written by `{command}` on {datetime.date.today().isoformat()}. {where}", "",
        *(p.strip() + "\n" for p in doc[2:]),
        head,
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['description']} | {args.mbs} | {r['step_ms_1']:.1f} | {r['samples_s_1']:.0f} "
            f"| {r['step_ms_2']:.1f} | {r['samples_s_2']:.0f} | {r['speedup']:.2f}x "
            f"| {100 * r['speedup'] / 2:.0f}% | {100 * r['comm_2']:.1f}% "
            f"| {r['cpu_ms_1']:.0f} | {r['cpu_ms_2']:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
