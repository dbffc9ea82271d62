"""Tests of eplcanet.runs: run directories, hyperparameters, metrics log, atomic checkpoints."""

from __future__ import annotations

import datetime
import json
import pickle
import random
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from eplcanet import runs
from eplcanet.runs import (
    STEP_FIELDS,
    CheckpointError,
    MetricsLog,
    atomic_save,
    load_checkpoint,
    load_hyperparameters,
    load_state_dict,
    make_run_dir,
    read_metrics,
    save_checkpoint,
    save_hyperparameters,
    save_state_dict,
)

HEADER = "epoch,train_loss,train_acc,val_acc,test_acc,seconds"


# --------------------------------------------------------------------------- run directories


def test_run_dirs_increment(tmp_path):
    first = make_run_dir(tmp_path, "digits", "EP", "CNN", date="2026-01-02")
    second = make_run_dir(tmp_path, "digits", "EP", "CNN", date="2026-01-02")
    assert first == tmp_path / "digits/EP/CNN/2026-01-02/run_1" and first.is_dir()
    assert second.name == "run_2"
    (first.parent / "run_9").mkdir()
    (first.parent / "notes").mkdir()
    assert make_run_dir(tmp_path, "digits", "EP", "CNN", date="2026-01-02").name == "run_10"
    today = make_run_dir(str(tmp_path), "digits", "BPTT", "MLP")
    assert today.parent.name == datetime.date.today().isoformat()


def test_concurrent_run_dirs_are_distinct(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        dirs = list(
            pool.map(lambda _: make_run_dir(tmp_path, "t", "EP", "CNN", "2026-01-01"), range(16))
        )
    assert sorted(d.name for d in dirs) == sorted(f"run_{n}" for n in range(1, 17))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "a/b"}, "task"),
        ({"alg": ""}, "alg"),
        ({"model": ".."}, "model"),
        ({"date": "02-01-2026"}, "date"),
    ],
)
def test_run_dir_rejects_bad_names(tmp_path, kwargs, match):
    args = {"task": "digits", "alg": "EP", "model": "CNN", "date": None} | kwargs
    with pytest.raises(ValueError, match=match):
        make_run_dir(tmp_path, **args)


# --------------------------------------------------------------------------- hyperparameters


def test_hyperparameters_json_and_txt(tmp_path):
    argv = ["main_fast.py", "--task", "npz", "--data-path", "my data/x.npz", "--lrs", "0.1", "0.05"]
    hparams = {"task": "npz", "lrs": (0.1, 0.05), "data_path": Path("my data/x.npz"), "T1": 30}
    save_hyperparameters(tmp_path, hparams, argv)
    record = json.loads((tmp_path / "hyperparameters.json").read_text())
    assert record == load_hyperparameters(tmp_path)
    assert record["lrs"] == [0.1, 0.05] and record["data_path"] == "my data/x.npz"
    assert shlex.split(record["command"]) == argv
    text = (tmp_path / "hyperparameters.txt").read_text()
    assert "T1" in text and "0.05" in text and record["command"] in text
    with pytest.raises(ValueError, match="command"):
        save_hyperparameters(tmp_path, {"command": "x"}, argv)
    with pytest.raises(TypeError, match="argv"):
        save_hyperparameters(tmp_path, {}, "main_fast.py --task digits")


# ----------------------------------------------------------------------------------- metrics


def test_metrics_csv_header_rows_and_resume(tmp_path):
    log = MetricsLog(tmp_path)
    assert not (tmp_path / "metrics.csv").exists() and log.rows() == []
    log.append(epoch=1, train_loss=2.5, train_acc=0.1, val_acc=0.2, test_acc=0.3, seconds=1.25)
    log.append(epoch=2, train_loss=1 / 3, train_acc=0.5, val_acc=0.6, seconds=2.0)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 3
    assert lines[2].split(",")[4] == ""  # test_acc not measured
    rows = log.rows()
    assert rows[0] == dict(zip(HEADER.split(","), (1, 2.5, 0.1, 0.2, 0.3, 1.25)))
    assert rows[1]["train_loss"] == 1 / 3 and rows[1]["test_acc"] is None
    assert read_metrics(tmp_path) == rows

    resumed = MetricsLog(tmp_path)
    with pytest.raises(ValueError, match="truncate_after"):
        resumed.append(epoch=2, train_loss=0.0)
    resumed.append(epoch=3, val_acc=0.7)
    resumed.truncate_after(1)
    assert [r["epoch"] for r in resumed.rows()] == [1]
    resumed.append(epoch=2, val_acc=0.65)
    assert [r["epoch"] for r in MetricsLog(tmp_path).rows()] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().count(HEADER) == 1


def test_metrics_drops_a_partial_last_line_and_checks_the_header(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(HEADER + "\n1,0.5,0.5,0.5,0.5,1.0\n2,0.4,0.")
    log = MetricsLog(tmp_path)
    assert [r["epoch"] for r in log.rows()] == [1]
    log.append(epoch=2, train_loss=0.4)
    assert [r["epoch"] for r in log.rows()] == [1, 2]
    path.write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(ValueError, match="metrics.csv has header"):
        MetricsLog(tmp_path)
    with pytest.raises(TypeError):
        log.append(epoch=3, accuracy=0.5)


def test_metrics_of_a_tol_run_carry_the_step_columns_through_resume(tmp_path):
    steps = dict(free_steps_mean=31.5, free_steps_max=40, nudged_steps_mean=20, nudged_steps_max=25)
    log = MetricsLog(tmp_path)
    log.append(epoch=1, train_loss=2.0, **steps)
    log.append(epoch=2, train_loss=1.0, **{**steps, "free_steps_max": 35})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == HEADER + "," + ",".join(STEP_FIELDS)
    assert read_metrics(tmp_path)[1]["free_steps_max"] == 35.0
    with pytest.raises(ValueError, match="in every row or none"):
        log.append(epoch=3, train_loss=0.5)
    with pytest.raises(ValueError, match="all of free_steps_mean"):
        log.append(epoch=3, free_steps_mean=3.0)
    resumed = MetricsLog(tmp_path)
    resumed.truncate_after(1)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == lines[0]
    resumed.append(epoch=2, **steps)
    assert [r["nudged_steps_max"] for r in read_metrics(tmp_path)] == [25.0, 25.0]
    resumed.truncate_after(0)  # nothing left: the next row, without steps, writes its header
    resumed.append(epoch=1, train_loss=2.0)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == HEADER


# ------------------------------------------------------------------------------ atomic save


def test_atomic_save_leaves_no_temp_files(tmp_path):
    path = tmp_path / "obj.pt"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(4)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["obj.pt"]


class _Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("refused")


def test_atomic_save_never_truncates_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "obj.pt"
    atomic_save({"a": torch.arange(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(runs.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.arange(5)}, path)
    monkeypatch.undo()
    with pytest.raises(pickle.PicklingError, match="refused"):
        atomic_save({"a": torch.arange(5), "b": _Unpicklable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["obj.pt"]


# ------------------------------------------------------------------------------ checkpoints


def _setup(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def _draws() -> tuple:
    return torch.rand(3), np.random.rand(3), random.random(), np.random.randn()


def test_checkpoint_round_trip_restores_parameters_optimizer_and_rng(tmp_path):
    model, optimizer, scheduler = _setup(0)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
    path = tmp_path / "checkpoint.pt"
    best = {"val_acc": 0.75, "epoch": 2}
    save_checkpoint(
        path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=3,
        best=best,
        extra={"dict_norm": torch.ones(2), "note": "x"},
    )
    expected = _draws()

    model2, optimizer2, scheduler2 = _setup(1)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    info = load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    got = _draws()

    assert info["epoch"] == 3 and info["best"] == best and info["extra"]["note"] == "x"
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(
            optimizer.state[p]["momentum_buffer"], optimizer2.state[q]["momentum_buffer"]
        )
    assert scheduler2.last_epoch == 3 and optimizer2.param_groups[0]["lr"] == 0.05
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_checkpoint_errors_name_the_path(tmp_path):
    model, optimizer, _ = _setup(0)
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(missing, model=model)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt, model=model)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=model, epoch=1, best={"val_acc": 0.1, "epoch": 1})
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model=model, optimizer=optimizer)
    with pytest.raises(CheckpointError, match="model state does not fit"):
        load_checkpoint(path, model=nn.Linear(4, 3))
    bare = tmp_path / "best.pt"
    save_state_dict(bare, model)
    with pytest.raises(CheckpointError, match="not a save_checkpoint file"):
        load_checkpoint(bare, model=model)


def test_checkpoint_refuses_extra_that_weights_only_cannot_load(tmp_path):
    model, _, _ = _setup(0)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError, match="extra"):
        save_checkpoint(path, model=model, epoch=1, best={}, extra={"arr": np.zeros(3)})
    with pytest.raises(TypeError, match="best"):
        save_checkpoint(path, model=model, epoch=1, best=0.5)
    assert not path.exists()


def test_state_dict_round_trip(tmp_path):
    model, _, _ = _setup(0)
    other, _, _ = _setup(1)
    save_state_dict(tmp_path / "best.pt", model)
    load_state_dict(tmp_path / "best.pt", other)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))
    third, _, _ = _setup(2)
    save_checkpoint(tmp_path / "checkpoint.pt", model=model, epoch=0, best={})
    load_state_dict(tmp_path / "checkpoint.pt", third)  # a full checkpoint works too
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), third.parameters()))
    with pytest.raises(CheckpointError, match="best.pt"):
        load_state_dict(tmp_path / "best.pt", nn.Linear(2, 2))


def test_write_csv_keeps_row_values_and_writes_frames_alike(tmp_path):
    import pandas as pd

    from eplcanet.runs import read_rows, write_csv

    rows = [{"n": 3, "acc": 0.5, "name": "pgd", "extra": "dropped"}, {"n": None, "acc": 0.25}]
    path = write_csv(rows, tmp_path / "sub" / "t.csv", ("name", "n", "acc"))
    assert path.read_text() == "name,n,acc\npgd,3,0.5\n,,0.25\n"  # 3 stays an int, not 3.0
    assert read_rows(path)[0] == {"name": "pgd", "n": 3, "acc": 0.5}
    frame = pd.DataFrame([{"name": "pgd", "n": 3, "acc": 0.5}])
    assert write_csv(frame, tmp_path / "f.csv").read_text() == "name,n,acc\npgd,3,0.5\n"
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind
