"""What a careless or hurried user meets: one-line errors with exit code 2 before any work,
divergence stopped with exit code 3 and nothing saved lost, signals that checkpoint mid-epoch and
resume exactly, and a checkpoint that survives a kill while it is written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eplcanet import runs
from eplcanet.app.experiment import main
from eplcanet.app.entry import EXIT_DIVERGED, EXIT_USAGE
from helpers import main_fast_command, metrics_rows

TINY = ["--channels", "4", "8", "--T1", "6", "--T2", "2", "--mbs", "64", "--epochs", "1"]


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _data_files(tmp: Path) -> dict[str, str]:
    x = np.zeros((20, 8, 8), np.uint8)
    y = np.arange(20) % 2
    (tmp / "garbage.npz").write_bytes(b"not a zip file at all")
    return {
        "garbage": str(tmp / "garbage.npz"),
        "keys": _npz(tmp / "keys.npz", images=x, labels=y),
        "float_labels": _npz(tmp / "fl.npz", x=x, y=y.astype(np.float32)),
        "shape": _npz(tmp / "shape.npz", x=np.zeros((20, 8, 6), np.uint8), y=y),
        "float_images": _npz(tmp / "fi.npz", x=x.astype(np.float32), y=y),
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny saved run (1 epoch) to resume and evaluate."""
    out = tmp_path_factory.mktemp("res")
    assert main([*TINY, "--device", "cpu", "--save", "--results-dir", str(out)]) == 0
    return next(out.glob("*/*/*/*/run_1"))


# (flags, what the one-line message must say); {tmp}, {run} and {data[...]} are filled in.
CASES = [
    ("--betas nan 0.5", "argument --betas: must be a finite number"),
    ("--lrs nan 0.1 0.1", "argument --lrs: must be a finite number >= 0"),
    ("--lrs -0.1 0.1 0.1", "argument --lrs: must be a finite number >= 0"),
    ("--wds -1 -1 -1", "argument --wds: must be a finite number >= 0"),
    ("--mmt 2", "argument --mmt: must be a finite number in [0, 1)"),
    ("--scale -1", "argument --scale: must be a finite number > 0"),
    ("--scale inf", "argument --scale: must be a finite number > 0"),
    ("--tol nan", "argument --tol: must be a finite number > 0"),
    ("--seed -5", "argument --seed: must be an integer in [0, 4294967295]"),
    ("--epochs 0", "argument --epochs: must be an integer >= 1"),
    ("--act relu", "argument --act: invalid choice: 'relu'"),
    ("--device tpu", "--device 'tpu' is not a device; accepted: auto"),
    ("--kernels 9 9", "conv layer 1 leaves no spatial extent for input (1, 8, 8)"),
    ("--task npz --data-path {tmp}/missing.npz", "no such file (expected an .npz file)"),
    ("--task npz --data-path {data[garbage]}", "is not a readable .npz file"),
    ("--task npz --data-path {data[keys]}", "lacks array(s) ['x', 'y']"),
    ("--task npz --data-path {data[float_labels]}", "y must be a 1-d integer array"),
    ("--task npz --data-path {data[shape]}", "images must be square"),
    ("--task npz --data-path {data[float_images]}", "x must be uint8, got float32"),
    ("--todo evaluate --load-path {tmp}/garbage_run", "corrupt or not a torch file"),
    ("--load-path {tmp}/truncated_run", "corrupt or not a torch file"),
    ("--load-path {run} --channels 4 16",
     "was made with other values: --channels 4 16 (the run has 4 8)"),
    ("--todo evaluate --load-path {run} --model MLP", "--model MLP (the run has CNN)"),
    ("--load-path {run} --T1 9 --mbs 16", "--T1 9 (the run has 6); --mbs 16 (the run has 64)"),
    ("--todo attack --load-path {run} --epsilons -0.1", "argument --epsilons: must be a finite"),
]
if not torch.cuda.is_available():
    CASES.append(("--device cuda:3", "CUDA is not available here; give --device cpu"))


@pytest.mark.parametrize("flags, message", CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_with_exit_code_2(flags, message, tmp_path, trained_run, capsys):
    for name, make in (("garbage_run", "best.pt"), ("truncated_run", "checkpoint.pt")):
        (tmp_path / name).mkdir()
        source = trained_run / "checkpoint.pt"
        (tmp_path / name / "checkpoint.pt").write_bytes(source.read_bytes()[:200])
        (tmp_path / name / make).write_bytes(b"\x00garbage" if make == "best.pt"
                                             else source.read_bytes()[:200])
    argv = [*TINY, *flags.format(tmp=tmp_path, run=trained_run,
                                 data=_data_files(tmp_path)).split(), "--results-dir",
            str(tmp_path / "new")]
    before = {p: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("device: ")]  # --device auto's note
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "new").exists()  # refused before a run directory was made
    assert {p: p.read_bytes() for p in trained_run.iterdir() if p.is_file()} == before


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main([*TINY, "--task", "npz", "--data-path", str(tmp_path / "missing.npz"), "--debug"])


def test_divergence_stops_with_exit_code_3_and_keeps_what_was_saved(trained_run, tmp_path,
                                                                    capsys):
    run = tmp_path / "run"
    run.mkdir()
    for p in trained_run.iterdir():
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    argv = ["--load-path", str(run), "--epochs", "3", "--lrs", "1e4", "1e4", "1e4",
            "--device", "cpu"]
    assert main(argv) == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "error: training diverged at epoch 2, minibatch " in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # json record included


def test_a_nan_gradient_is_caught_at_its_minibatch():
    from eplcanet.energy.networks import P_MLP
    from eplcanet.app.entry import Diverged
    from eplcanet.app.train import DivergenceWatch

    net = P_MLP([4, 5, 3], act="tanh")
    watch = DivergenceWatch(net, "cpu")
    states = net.init_states(2)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    watch.watch(0, torch.ones(2), states)
    next(net.parameters()).grad[0, 0] = float("nan")
    watch.watch(1, torch.ones(2), states)
    watch.watch(2, torch.full((2,), float("nan")), states)  # later ones do not move the first
    with pytest.raises(Diverged, match="epoch 7, minibatch 2: a non-finite gradient"):
        watch.check(7)


# ------------------------------------------------------------------------------ signals
def test_a_repeated_sigterm_is_one_request_and_a_second_ctrl_c_stops_at_once():
    from eplcanet.app.train import StopSignals

    with StopSignals():
        pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # no signal: the handlers are back
    with StopSignals() as stop:
        assert not stop.requested()
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes; never reached
    # the stop under way: late copies of SIGTERM are ignored until the process exits
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


SIGNAL_RUN = ["--channels", "4", "8", "--T1", "100", "--T2", "4", "--mbs", "16", "--epochs", "2",
              "--random-sign", "--no-thirdphase", "--device", "cpu", "--save"]


def _main_fast(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process
    return subprocess.Popen(main_fast_command(*args), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_mid_epoch_and_the_resumed_run_equals_the_whole(signum, tmp_path):
    whole = _main_fast([*SIGNAL_RUN, "--results-dir", str(tmp_path / "whole")])
    cut = _main_fast([*SIGNAL_RUN, "--results-dir", str(tmp_path / "cut")])
    for line in cut.stdout:  # the signal comes once epoch 1 is done and saved, inside epoch 2
        if line.startswith("run directory: "):
            run_dir = Path(line.split(": ", 1)[1].strip())
        if line.startswith("epoch 1:"):
            break
    while not (run_dir / "neural_activity.png").exists():  # epoch 1's last file
        time.sleep(0.02)
    time.sleep(0.2)
    cut.send_signal(signum)
    if signum == signal.SIGTERM:  # preempted under torchrun: Slurm's copy and torchrun's
        time.sleep(0.05)
        cut.send_signal(signum)
    out, err = cut.communicate(timeout=120)
    assert cut.returncode == 128 + signum, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{signal.Signals(signum).name}: stopped at epoch 2, minibatch "), last
    assert last.endswith(f"resume with: python main_fast.py --load-path {run_dir} --device cpu")
    assert "Traceback" not in err
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["extra"]["partial"]["batches"] >= 1  # mid-epoch 2
    resumed = _main_fast(["--load-path", str(run_dir), "--device", "cpu"])
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert whole.wait(timeout=120) == 0
    assert metrics_rows(run_dir) == metrics_rows(next((tmp_path / "whole").glob("*/*/*/*/run_1")))


def test_a_checkpoint_killed_while_written_leaves_the_previous_one_readable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writer = (
        "import sys, torch\n"
        "from eplcanet import runs\n"
        "net = torch.nn.Linear(2000, 4000)\n"  # 32 MB: each write takes a while
        "for epoch in range(1, 10**6):\n"
        "    runs.save_checkpoint(sys.argv[1], model=net, epoch=epoch, best={})\n"
    )
    child = subprocess.Popen([sys.executable, "-c", writer, str(path)])
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for delay in (0.13, 0.29, 0.41):  # somewhere inside later writes
            time.sleep(delay)
            assert child.poll() is None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    state = runs.load_checkpoint(path, model=torch.nn.Linear(2000, 4000), restore_rng=False)
    assert state["epoch"] >= 1


def test_resuming_a_warm_started_run_says_the_state_bank_was_not_saved(tmp_path, capsys):
    first = [*TINY, "--warm-start", "2", "--device", "cpu", "--save",
             "--results-dir", str(tmp_path)]
    assert main(first) == 0
    assert "state bank is not in the checkpoint" not in capsys.readouterr().out
    run_dir = next(tmp_path.glob("*/*/*/*/run_1"))
    assert main(["--load-path", str(run_dir), "--epochs", "2", "--device", "cpu"]) == 0
    assert "warning: the warm-start state bank is not in the checkpoint" in capsys.readouterr().out


# ------------------------------------------------------------------------------ tensorboard
def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_tensorboard_mirrors_metrics_csv_and_a_resumed_run_continues_it(tmp_path):
    argv = [*TINY, "--epochs", "2", "--tensorboard", "--device", "cpu", "--save",
            "--results-dir", str(tmp_path)]
    assert main(argv) == 0
    run_dir = next(tmp_path.glob("*/*/*/*/run_1"))
    assert main(["--load-path", str(run_dir), "--epochs", "3", "--tensorboard",
                 "--device", "cpu"]) == 0
    events = _events(run_dir)
    rows = metrics_rows(run_dir)
    for name in ("train_loss", "train_acc", "val_acc", "test_acc"):
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        assert logged == [(int(r["epoch"]), pytest.approx(float(r[name]))) for r in rows], name
    tags = events.Tags()
    assert {"lr/group_0", "lr/group_2"} <= set(tags["scalars"])
    assert {"activity/layer_0", "activity/layer_1"} <= set(tags["histograms"])
    assert tags["images"] == ["neural_activity"]
    assert [e.step for e in events.Images("neural_activity")] == [1, 2, 3]


def test_tensorboard_needs_a_run_directory(capsys):
    assert main([*TINY, "--tensorboard", "--device", "cpu"]) == EXIT_USAGE
    assert "error: --tensorboard logs into the run directory: add --save" in capsys.readouterr().err


def test_a_run_recorded_with_the_hep_points_default_still_loads(tmp_path):
    """Runs saved while --hep-points defaulted to 4 for every --alg carry it in their record; it
    is dropped unless the run is an hEP run, whose own value stays."""
    from eplcanet.app.settings import parse_settings

    for alg, want in (("EP", None), ("hEP", 6)):
        run_dir = tmp_path / alg
        run_dir.mkdir()
        runs.save_hyperparameters(run_dir, {"model": "MLP", "alg": alg, "act": "sigmoid",
                                            "hep_points": 6, "no_thirdphase": True},
                                  ["main_fast.py"])
        args = parse_settings(["--todo", "evaluate", "--load-path", str(run_dir)])
        assert (args.estimator.alg, args.estimator.hep_points) == (alg, want)
