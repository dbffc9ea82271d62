"""Data-parallel training: a run on 2 CPU processes (gloo) equals the single-process run with the
same global minibatch, its checkpoint resumes in one process, and the sharding covers the data
exactly once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eplcanet.app.settings import parse_settings
from eplcanet.data import ImageDataset, make_loader
from eplcanet.app.distributed import DistContext, session, shard_bounds
from eplcanet.app.experiment import run
from eplcanet.sparse import load_dictionary, save_dictionary
from helpers import ROOT, main_fast_command, metrics_rows

# 150 digits as an npz: 121 training images, so that --mbs 16 leaves a last minibatch of 9
# (parts of 5 and 4: the gradient average must weight the parts by their sizes).
TINY = ["--channels", "4", "--T1", "5", "--T2", "2", "--mbs", "16", "--device", "cpu",
        "--seed", "1"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits150.npz"
    x = np.round(digits.images[:150] * 255 / 16).astype(np.uint8)
    np.savez(path, x=x, y=digits.target[:150])
    return path


def _data_flags(path: Path) -> list[str]:
    return ["--task", "npz", "--data-path", str(path)]


def _run_dir(results: Path) -> Path:
    found = sorted(results.glob("*/*/*/*/run_*"))
    assert len(found) == 1, found
    return found[0]


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: float(v) for k, v in row.items()} for row in metrics_rows(run_dir)]


def _assert_same_state(a: dict, b: dict, atol: float = 1e-4) -> None:
    """Two state_dicts (nested dicts of tensors) hold the same keys and close values."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        other = b[key]
        if isinstance(value, dict):
            _assert_same_state(value, other, atol)
        elif isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, other, atol=atol, rtol=1e-4, msg=key)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for x, y in zip(value, other, strict=True):
                _assert_same_state(x, y, atol)
        else:
            assert value == other, key


def _assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert row_a == pytest.approx(row_b, abs=1e-6)


# --------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n, batch, world", [(121, 16, 2), (64, 16, 4), (130, 16, 4), (7, 8, 2),
                                             (17, 16, 2)])
def test_parts_of_each_step_make_up_the_single_process_minibatch(n, batch, world):
    data = ImageDataset(torch.zeros(n, 1, 2, 2), torch.arange(n))
    single = [y.tolist() for _, y in make_loader(data, batch, shuffle=True, seed=3, epoch=5)]
    per_rank = []
    for rank in range(world):
        loader = DistContext(rank=rank, world_size=world).train_loader(data, batch, seed=3,
                                                                        epoch=5)
        per_rank.append([y.tolist() for _, y in loader])
        assert len(loader.sampler) == sum(len(b) for b in per_rank[-1])
    steps = {len(p) for p in per_rank}
    assert len(steps) == 1, "every process must take the same number of steps"
    for k in range(steps.pop()):
        assert [i for p in per_rank for i in p[k]] == single[k]
    tail = n % batch
    skipped = 0 < tail < world  # a process would have no sample: the last minibatch is skipped
    assert len(single) == len(per_rank[0]) + skipped


def test_evaluation_blocks_count_every_sample_once():
    for n in (0, 1, 5, 14, 15):
        for world in (1, 2, 3, 4):
            blocks = [range(*shard_bounds(n, r, world)) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
            loaders = [DistContext(rank=r, world_size=world).eval_loader(
                ImageDataset(torch.zeros(max(n, 1), 1, 2, 2), torch.arange(max(n, 1))), 4)
                for r in range(world)]
            seen = sorted(i for ld in loaders for _, y in ld for i in y.tolist())
            assert seen == list(range(max(n, 1)))


def test_a_global_minibatch_the_processes_cannot_share_is_refused():
    with pytest.raises(SystemExit, match="--mbs 33 is the global minibatch .* multiple of"):
        DistContext(rank=0, world_size=2).local_batch(33)
    assert DistContext(rank=1, world_size=4).local_batch(32) == 8
    assert DistContext().local_batch(33) == 33


def test_outside_torchrun_the_session_is_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with session(torch.device("cpu")) as ctx:
        assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert not dist.is_initialized()


# --------------------------------------------------------------------------------- torchrun
def _torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(ROOT / "main_fast.py"), *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          check=False)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_and_the_checkpoint_resumes_alone(tiny_npz, tmp_path):
    common = TINY + _data_flags(tiny_npz) + ["--save", "--epochs", "1"]
    done = _torchrun(common + ["--results-dir", str(tmp_path / "dist")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("epoch 1: loss") == 1, "only rank 0 logs"
    single = common + ["--results-dir", str(tmp_path / "single")]
    run(parse_settings(single), single)
    d_dir, s_dir = _run_dir(tmp_path / "dist"), _run_dir(tmp_path / "single")
    d_ckpt, s_ckpt = _checkpoint(d_dir), _checkpoint(s_dir)
    _assert_same_state(d_ckpt["model"], s_ckpt["model"])
    _assert_same_state(d_ckpt["optimizer"], s_ckpt["optimizer"])  # momentum buffers too
    assert torch.equal(d_ckpt["rng"]["torch"], s_ckpt["rng"]["torch"])
    _assert_same_metrics(_metrics(d_dir), _metrics(s_dir))
    assert json.loads((d_dir / "hyperparameters.json").read_text())["world_size"] == 2

    # The distributed checkpoint resumes in a single process, as the single-process one does.
    for run_dir in (d_dir, s_dir):
        resume = TINY + _data_flags(tiny_npz) + ["--epochs", "2", "--load-path", str(run_dir)]
        run(parse_settings(resume), resume)
    _assert_same_state(_checkpoint(d_dir)["model"], _checkpoint(s_dir)["model"])
    _assert_same_metrics(_metrics(d_dir), _metrics(s_dir))
    assert len(_metrics(d_dir)) == 2


# --------------------------------------------------------------------------------- spawned
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, argvs: list[list[str]], out: str,
            fail_last_on: int | None) -> None:
    """One process of a gloo group that runs main_fast.py's argv lists one after the other; the
    last one fails on rank `fail_last_on` at its first training epoch, if given."""
    torch.set_num_threads(1)
    os.environ["TORCHELASTIC_ERROR_FILE"] = str(Path(out) / f"error_{rank}.json")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        for i, argv in enumerate(argvs):
            if i == len(argvs) - 1 and rank == fail_last_on:
                from eplcanet.app import experiment

                def broken(*args, **kwargs):
                    raise RuntimeError(f"injected failure on rank {rank}")

                experiment.train_epoch = broken
            result = run(parse_settings(argv), argv)
            with open(Path(out) / f"result_{i}_{rank}.json", "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _spawn(argvs: list[list[str]], out: Path, fail_last_on: int | None = None) -> None:
    mp.spawn(_worker, args=(2, _free_port(), argvs, str(out), fail_last_on), nprocs=2,
             join=True)


@pytest.fixture(scope="module")
def digits_dictionary(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    w = torch.randn(4, 1, 3, 3)
    path = tmp_path_factory.mktemp("dict") / "digits_dict.pt"
    return save_dictionary(path, w / w.flatten(1).norm(dim=1)[:, None, None, None], {"stride": 1})


CONFIGS = {
    # the dictionary learns from the nudged phase; the random sign of beta must agree everywhere
    "lcacnn_finetune": ["--model", "LCACNN", "--lca_feats", "4", "--lca_ksize", "3",
                        "--lca_stride", "1", "--lca_iters", "10", "--lca_tau", "5",
                        "--dict_training", "finetune", "--random-sign", "--no-thirdphase"],
    "mlp_bptt": ["--model", "MLP", "--archi", "64", "16", "10", "--alg", "BPTT"],
    "vfcnn": ["--model", "VFCNN", "--same-update", "--optim", "adam"],
}


@pytest.mark.slow
def test_spawned_processes_equal_one_for_lcacnn_finetune_bptt_vfcnn_then_a_failure_ends_all(
        tiny_npz, digits_dictionary, tmp_path):
    argvs = {}
    for name, flags in CONFIGS.items():
        extra = ["--lca-dict", str(digits_dictionary)] if name.startswith("lca") else []
        argvs[name] = TINY + _data_flags(tiny_npz) + flags + extra + ["--epochs", "1", "--save"]
    out = tmp_path / "out"
    out.mkdir()
    # One group runs every configuration (no start-up per configuration), then a last run in
    # which rank 1 fails: the whole group must end with an error instead of waiting forever.
    failing = TINY + _data_flags(tiny_npz) + ["--epochs", "1"]
    with pytest.raises(Exception):  # noqa: B017 (either process may be reported first)
        _spawn([a + ["--results-dir", str(tmp_path / "dist" / n)] for n, a in argvs.items()]
               + [failing], out, fail_last_on=1)
    record = json.loads((out / "error_1.json").read_text())
    assert "injected failure on rank 1" in record["message"]["message"]
    assert not (out / f"result_{len(argvs)}_0.json").exists()

    for i, (name, argv) in enumerate(argvs.items()):
        single = argv + ["--results-dir", str(tmp_path / "single" / name)]
        expected = run(parse_settings(single), single)
        d_dir, s_dir = (_run_dir(tmp_path / w / name) for w in ("dist", "single"))
        _assert_same_state(_checkpoint(d_dir)["model"], _checkpoint(s_dir)["model"])
        _assert_same_metrics(_metrics(d_dir), _metrics(s_dir))
        # Every process reports the metrics of the whole run, not of its part.
        for rank in (0, 1):
            got = json.loads((out / f"result_{i}_{rank}.json").read_text())
            for key in ("train_loss", "train_acc", "val_acc", "test_acc"):
                assert got[key] == pytest.approx(expected[key], abs=1e-6), (name, rank, key)
    learned = _checkpoint(_run_dir(tmp_path / "dist" / "lcacnn_finetune"))["model"]
    assert int(learned["nudged_steps"]) > 0  # the dictionary did take steps, and moved
    assert not torch.allclose(learned["coder.weights"], load_dictionary(digits_dictionary)[0],
                              atol=1e-4)
    torch.testing.assert_close(learned["coder.weights"].flatten(1).norm(dim=1), torch.ones(4))


# --------------------------------------------------------------------------------- run/slurm
_FAKE_TORCHRUN = r'''
import json, os, sys
argv = sys.argv[1:]
at = argv.index("main_fast.py")
with open(os.environ["LOG"], "a") as log:
    log.write(json.dumps({"torchrun": argv[:at], "main": argv[at + 1:]}) + "\n")
'''


def _fake_slurm(tmp_path: Path, torchrun: str, nodes: int, job: str = "4242") -> dict:
    """The environment of a Slurm job with stand-ins for srun, scontrol (which records a requeue
    and prints node names), nvidia-smi and torchrun (the Python script given)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "torchrun.py").write_text(torchrun)
    fakes = {
        "torchrun": f'exec "{sys.executable}" "{tmp_path / "torchrun.py"}" "$@"',
        # srun: one copy of the command per node, options dropped
        "srun": 'while [ "${1#--}" != "$1" ]; do shift; done\n'
                'for i in $(seq "$SLURM_NNODES"); do "$@" || exit 1; done',
        "scontrol": f'if [ "$1" = requeue ]; then echo "$@" >> "{tmp_path / "requeued"}"; '
                    f'else printf "gpu-node-7\\ngpu-node-8\\n"; fi',
        "nvidia-smi": 'printf "GPU 0\\nGPU 1\\nGPU 2\\nGPU 3\\n"',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REPO": str(ROOT),
           "LOG": str(tmp_path / "calls.log"), "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_NNODES": str(nodes), "SLURM_JOB_ID": job, "SLURM_CPUS_PER_TASK": "16",
           "RESULTS_DIR": str(tmp_path / "results")}
    env.pop("SLURM_GPUS_ON_NODE", None)
    return env


@pytest.mark.parametrize("script, nodes", [("one_node.sbatch", 1), ("multi_node.sbatch", 2)])
def test_slurm_scripts_start_one_torchrun_per_node_with_valid_flags(script, nodes, tmp_path):
    """The sbatch scripts run with stand-ins for srun, scontrol, nvidia-smi and torchrun (which
    records its arguments); main_fast.py's flags must pass validation."""
    env = _fake_slurm(tmp_path, _FAKE_TORCHRUN, nodes)
    log = tmp_path / "calls.log"
    done = subprocess.run(["bash", str(ROOT / "run" / "slurm" / script)], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == nodes
    launcher = calls[0]["torchrun"]
    assert "--nproc_per_node=4" in launcher
    main = calls[0]["main"]
    parse_settings(main)
    assert main[main.index("--device") + 1] == "cuda"
    assert int(main[main.index("--mbs") + 1]) % (4 * nodes) == 0  # whole per-GPU minibatches
    if nodes > 1:
        assert {"--rdzv_backend=c10d", "--rdzv_endpoint=gpu-node-7:29500", "--rdzv_id=4242",
                f"--nnodes={nodes}"} <= set(launcher)
    else:
        assert "--standalone" in launcher


# torchrun's stand-in for a real run on the CPU: it becomes the training process itself, so the
# script's SIGTERM reaches main_fast.py as torchrun would pass it on
_TORCHRUN_ON_CPU = r'''
import os, sys
main = sys.argv[sys.argv.index("main_fast.py") + 1:]
main[main.index("--device") + 1] = "cpu"
os.execv(sys.executable, [sys.executable, os.path.join(os.environ["REPO"], "main_fast.py"), *main])
'''


def test_a_preempted_slurm_job_is_requeued_and_resumes_its_run(tmp_path):
    """SIGTERM to the batch shell (what --signal=B:TERM sends before the time limit) reaches the
    training process, which checkpoints mid-epoch; the script requeues the job, and its second
    start resumes the same run, which ends with the metrics of an uninterrupted run."""
    import signal
    import time

    flags = ("--channels 4 8 --T1 100 --T2 4 --mbs 16 --epochs 2 --random-sign "
             "--no-thirdphase").split()
    env = {**_fake_slurm(tmp_path, _TORCHRUN_ON_CPU, 1, job="77"), "OMP_NUM_THREADS": "1"}
    script = ["bash", str(ROOT / "run" / "slurm" / "one_node.sbatch"), *flags]
    whole = subprocess.Popen(main_fast_command(*flags, "--save", "--results-dir",
                                               str(tmp_path / "whole"), "--device", "cpu"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    job = subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    runs = tmp_path / "results" / "slurm-77"
    while not list(runs.glob("*/*/*/*/run_1/neural_activity.png")):  # epoch 1 is saved
        assert job.poll() is None, job.communicate()
        time.sleep(0.02)
    time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, out + err
    assert "requeueing job 77" in out and (tmp_path / "requeued").read_text() == "requeue 77\n"
    run_dir = next(runs.glob("*/*/*/*/run_1"))
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["extra"]["partial"]["batches"] >= 1  # inside epoch 2
    again = subprocess.run(script, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming {run_dir} (start 2 of job 77)" in again.stdout
    assert [p.name for p in run_dir.parent.iterdir()] == ["run_1"]  # no second run
    assert whole.wait(timeout=120) == 0, whole.stderr.read()
    assert _metrics(run_dir) == _metrics(next((tmp_path / "whole").glob("*/*/*/*/run_1")))
