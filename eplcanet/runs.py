"""Run directories, hyperparameters, the metrics log and checkpoints.

A run lives in ``results_dir/task/alg/model/YYYY-MM-DD/run_N`` and holds

    hyperparameters.json / .txt   the hyperparameters and the command line that started the run
    metrics.csv                   one row per epoch (METRICS_FIELDS), flushed as it is written
    checkpoint.pt                 model, optimizer, scheduler, epoch, best and RNG states (resume)
    best.pt                       the state_dict of the model with the best validation accuracy

Every file is written atomically (temp file in the same directory, then rename), so a crash
never leaves a truncated file behind, and everything loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import random
import re
import shlex
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

METRICS_FIELDS = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "seconds")
# Logged after METRICS_FIELDS by runs whose phases stop once settled (--tol): the steps the
# training minibatches' free and nudged phases took, mean and max over the epoch.
STEP_FIELDS = ("free_steps_mean", "free_steps_max", "nudged_steps_mean", "nudged_steps_max")
CHECKPOINT_FORMAT = 1
_RUN_NAME = re.compile(r"run_(\d+)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or that does not fit what it is loaded into."""


# --------------------------------------------------------------------------------------------
# Atomic writes


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(f) on a temp file next to path, then rename it over path.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new one,
    never a partial one; on any error the temp file is removed and path is untouched.
    """
    path = Path(path)
    # A unique name per writer; opened with "x" so it is never shared, with default permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save(obj) to path atomically: a temp file in the same directory, then os.replace."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write text (UTF-8) to path atomically."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# --------------------------------------------------------------------------------------------
# Run directories and hyperparameters


def _check_name(name: str, value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or re.search(r"[/\\]", value)
    ):
        raise ValueError(f"{name} must be a non-empty name without path separators, got {value!r}")
    return value


def make_run_dir(
    results_dir: str | Path, task: str, alg: str, model: str, date: str | None = None
) -> Path:
    """Create and return results_dir/task/alg/model/date/run_N with the next free N (from 1).

    date is YYYY-MM-DD, today by default. N is one more than the largest existing run number;
    concurrent callers each get their own directory (mkdir is the lock).
    """
    for name, value in (("task", task), ("alg", alg), ("model", model)):
        _check_name(name, value)
    if date is None:
        date = datetime.date.today().isoformat()
    if not isinstance(date, str) or not _DATE.fullmatch(date):
        raise ValueError(f"date must be a string YYYY-MM-DD, got {date!r}")
    parent = Path(results_dir) / task / alg / model / date
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := _RUN_NAME.fullmatch(p.name))]
    n = max(taken, default=0) + 1
    while True:
        run_dir = parent / f"run_{n}"
        try:
            run_dir.mkdir(exist_ok=False)
            return run_dir
        except FileExistsError:
            n += 1


def _json_default(value: Any) -> Any:
    """JSON form of the values argparse namespaces and configs commonly hold."""
    if isinstance(value, (np.generic, torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)  # Path, torch.device, torch.dtype, enums ...


def save_hyperparameters(run_dir: str | Path, hparams: dict[str, Any], argv: list[str]) -> None:
    """Write run_dir/hyperparameters.json (hparams plus "command") and hyperparameters.txt.

    argv is the command line as a list (e.g. sys.argv); "command" is its shell-quoted join, so
    it can be pasted back into a shell. Values JSON cannot hold are written as strings.
    """
    if not isinstance(hparams, dict):
        raise TypeError(f"hparams must be a dict, got {type(hparams).__name__}")
    if "command" in hparams:
        raise ValueError("hparams must not contain the key 'command'; it is derived from argv")
    if not isinstance(argv, (list, tuple)) or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv must be a list of strings, got {argv!r}")
    record = {**hparams, "command": shlex.join(argv)}
    text = json.dumps(record, indent=2, default=_json_default)
    run_dir = Path(run_dir)
    atomic_write_text(text + "\n", run_dir / "hyperparameters.json")
    plain = json.loads(text)  # values exactly as the JSON file has them
    width = max(len(k) for k in plain)
    lines = [f"{k:<{width}}  {json.dumps(v)}" for k, v in plain.items() if k != "command"]
    lines += ["", "command:", plain["command"]]
    atomic_write_text("\n".join(lines) + "\n", run_dir / "hyperparameters.txt")


def load_hyperparameters(run_dir: str | Path) -> dict[str, Any]:
    """The dict save_hyperparameters wrote (including "command")."""
    path = Path(run_dir) / "hyperparameters.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Metrics


def _parse_metric(field: str, text: str) -> int | float | None:
    if text == "":
        return None
    return int(text) if field == "epoch" else float(text)


def read_metrics(path: str | Path) -> list[dict[str, int | float | None]]:
    """Rows of a metrics.csv (path to the file or to its run directory), parsed.

    Each row is a dict over METRICS_FIELDS (and STEP_FIELDS when the run logged them): epoch an
    int, the others floats, None where blank.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return []
        fields = tuple(header)
        if fields not in (METRICS_FIELDS, METRICS_FIELDS + STEP_FIELDS):
            raise ValueError(
                f"{path} has header {','.join(header)}, expected {','.join(METRICS_FIELDS)} "
                f"(then, optionally, {','.join(STEP_FIELDS)})"
            )
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(fields):
                raise ValueError(f"{path}:{line_no}: expected {len(fields)} fields")
            try:
                rows.append({k: _parse_metric(k, v) for k, v in zip(fields, row)})
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from exc
    return rows


def write_csv(table, path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Every result table of the project as a CSV file, written atomically; returns the path.

    ``table``: a pandas DataFrame, or rows (dicts) with ``columns`` naming the columns, in order
    (keys outside them are dropped; a missing key is an empty cell). Rows keep their Python
    values (an int column with a gap stays ints, not floats)."""
    import pandas as pd

    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(
        list(table), columns=list(columns), dtype=object)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(frame.to_csv(index=False, lineterminator="\n"), path)
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


def _format_metric(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "epoch":
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"epoch must be an int, got {value!r}")
        return str(int(value))
    return repr(float(value))  # shortest exact form, so rows() gives back the same float


class MetricsLog:
    """metrics.csv of a run: one row per epoch, header ``epoch,train_loss,train_acc,val_acc,
    test_acc,seconds``, then STEP_FIELDS when the first row gives them (--tol runs).

    Constructing it writes nothing; the header comes with the first row. With ``tensorboard``
    every row is also written as TensorBoard scalars (``torch.utils.tensorboard``, the events in
    run_dir/tensorboard). On resume, existing rows are kept (see truncate_after to drop epochs that will be redone). Each row is flushed
    and synced to disk as it is written.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        # --tensorboard: every row also goes to run_dir/tensorboard as scalars (opened at the
        # first row, so that a resumed run first drops the events of the epochs it redoes)
        self._tensorboard_dir = Path(run_dir) / "tensorboard" if tensorboard else None
        self._writer = None
        self._last_epoch: int | None = None
        self._fields: tuple[str, ...] | None = None  # the file's columns, once it has a header
        if self.path.is_file():
            self._drop_partial_line()
            rows = read_metrics(self.path)
            self._last_epoch = rows[-1]["epoch"] if rows else None
            self._fields = tuple(rows[0]) if rows else None

    def _drop_partial_line(self) -> None:
        # A crash in the middle of a row leaves a line without its newline.
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            atomic_write_text(data[: data.rfind(b"\n") + 1].decode("utf-8"), self.path)

    def append(
        self,
        *,
        epoch: int,
        train_loss: float | None = None,
        train_acc: float | None = None,
        val_acc: float | None = None,
        test_acc: float | None = None,
        seconds: float | None = None,
        **steps: float,
    ) -> None:
        """Write one row; metrics not measured this epoch may be None (blank cells). `steps`:
        all of STEP_FIELDS or none, the same in every row of a file.

        Epochs must increase: appending an epoch already logged raises (truncate_after first).
        """
        unknown = set(steps) - set(STEP_FIELDS)
        if unknown:
            raise TypeError(f"unknown metric(s) {', '.join(sorted(unknown))}; accepted: "
                            f"{', '.join(METRICS_FIELDS + STEP_FIELDS)}")
        if steps and set(steps) != set(STEP_FIELDS):
            raise ValueError(f"steps must give all of {', '.join(STEP_FIELDS)} or none, got "
                             f"{', '.join(sorted(steps))}")
        fields = METRICS_FIELDS + (STEP_FIELDS if steps else ())
        if self._fields is not None and fields != self._fields:
            raise ValueError(f"{self.path} has the columns {','.join(self._fields)}; this row "
                             f"has {','.join(fields)} (a run logs the steps in every row or none)")
        values = (epoch, train_loss, train_acc, val_acc, test_acc, seconds,
                  *(steps[k] for k in STEP_FIELDS if steps))
        row = [_format_metric(k, v) for k, v in zip(fields, values)]
        if self._last_epoch is not None and int(epoch) <= self._last_epoch:
            raise ValueError(
                f"epoch {epoch} is not after the last logged epoch {self._last_epoch} in "
                f"{self.path}; call truncate_after({int(epoch) - 1}) when redoing epochs"
            )
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new_file:
                writer.writerow(fields)
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self._last_epoch = int(epoch)
        self._fields = fields
        if self._tensorboard_dir is not None:
            for name, value in zip(fields[1:], values[1:]):
                if value is not None:
                    self.tensorboard(int(epoch)).add_scalar(name, float(value), int(epoch))
            self._writer.flush()

    def tensorboard(self, epoch: int):
        """The run's ``torch.utils.tensorboard.SummaryWriter`` (None without --tensorboard), for
        what goes to TensorBoard only (learning rates, activity histograms, figures). Opened
        with purge_step = epoch: a resumed run's events from that epoch on are dropped."""
        if self._tensorboard_dir is None:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self._tensorboard_dir), purge_step=epoch)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def rows(self) -> list[dict[str, int | float | None]]:
        """All rows so far (see read_metrics); [] before the first append."""
        return read_metrics(self.path) if self.path.is_file() else []

    def truncate_after(self, epoch: int) -> None:
        """Drop the rows of epochs after epoch (e.g. those logged after the last checkpoint)."""
        if not self.path.is_file():
            return
        rows = [r for r in self.rows() if r["epoch"] <= epoch]
        if not rows:  # empty, so that the next row writes its own header
            atomic_write_text("", self.path)
            self._last_epoch = self._fields = None
            return
        fields = self._fields or METRICS_FIELDS
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([[_format_metric(k, r[k]) for k in fields] for r in rows])
        atomic_write_text(buffer.getvalue(), self.path)
        self._last_epoch = rows[-1]["epoch"] if rows else None


# --------------------------------------------------------------------------------------------
# RNG states


def get_rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU, CUDA, numpy, python), as weights_only-loadable values.

    numpy's state becomes an int64 tensor plus plain numbers, python's a list of ints. Seeded
    generators owned by code (np.random.default_rng, torch.Generator) are not global and are
    not captured.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what get_rng_state returned."""
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda", [])
    if cuda_states and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if n != len(cuda_states):
            warnings.warn(
                f"checkpoint holds RNG states of {len(cuda_states)} CUDA devices, this process "
                f"sees {n}; restoring the first {min(n, len(cuda_states))}",
                stacklevel=2,
            )
        for i, s in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(s.cpu(), i)
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss_next"]))


# --------------------------------------------------------------------------------------------
# Checkpoints


def _check_weights_only(name: str, value: Any) -> None:
    """Fail at save time, not at resume time, on values weights_only loading would refuse."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{name} must hold only tensors, numbers, strings, None, lists, tuples and dicts "
            f"(loadable with weights_only=True): {exc}"
        ) from exc


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    epoch: int,
    best: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Atomically save what resuming needs after epoch: model, optimizer, scheduler, best,
    extra and the global RNG states.

    best is e.g. {"val_acc": 0.71, "epoch": 12}; extra is any small weights_only-loadable dict.
    """
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise TypeError(f"epoch must be an int, got {epoch!r}")
    if not isinstance(best, dict):
        raise TypeError(f"best must be a dict such as {{'val_acc': 0.7, 'epoch': 3}}, got {best!r}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
    _check_weights_only("best", best)
    _check_weights_only("extra", extra)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "best": best,
        "extra": extra if extra is not None else {},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": get_rng_state(),
    }
    atomic_save(checkpoint, path)


def _load_file(path: str | Path, map_location: Any, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{what} {path} is corrupt or not a torch file: {exc}") from exc


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    map_location: Any = "cpu",
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a save_checkpoint file into model (and optimizer, scheduler); restore RNG states.

    Returns {"epoch", "best", "extra"}. Training resumes at epoch + 1. Raises
    FileNotFoundError for a missing file and CheckpointError (naming path) for a corrupt one or
    one that does not fit the model / lacks the optimizer or scheduler state asked for.
    """
    checkpoint = _load_file(path, map_location, "checkpoint")
    required = ("format", "epoch", "best", "extra", "model", "optimizer", "scheduler", "rng")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in required):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a save_checkpoint file (it holds {keys}); "
            "for a bare state_dict such as best.pt use load_state_dict"
        )
    for name, target in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        if checkpoint[name] is None:
            raise CheckpointError(f"checkpoint {path} holds no {name} state")
        try:
            target.load_state_dict(checkpoint[name])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path}: {name} state does not fit: {exc}") from exc
    if restore_rng:
        set_rng_state(checkpoint["rng"])
    return {"epoch": checkpoint["epoch"], "best": checkpoint["best"], "extra": checkpoint["extra"]}


def save_state_dict(path: str | Path, model: nn.Module) -> None:
    """Atomically save model.state_dict() (e.g. best.pt)."""
    atomic_save(model.state_dict(), path)


def load_state_dict(path: str | Path, model: nn.Module, map_location: Any = "cpu") -> None:
    """Load weights into model from a save_state_dict file or from a full checkpoint."""
    state = _load_file(path, map_location, "state_dict file")
    is_checkpoint = isinstance(state, dict) and isinstance(state.get("format"), int)
    if is_checkpoint and "model" in state:
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"state_dict file {path} does not fit the model: {exc}") from exc
