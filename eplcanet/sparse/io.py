"""Dictionary files: the format ``cifar_dictlearning.py`` writes and ``--lca-dict`` loads.

A dictionary file is ``torch.save({"weight": tensor, "config": dict})``, readable with
``torch.load(path, weights_only=True)``: ``weight`` is the atoms (out_neurons, in_neurons,
*kernel_size) and ``config`` holds plain Python values (numbers, strings, bools, None and
lists/tuples/dicts of them) such as kernel_size, stride, lambda_ and how the dictionary was learned.
A dictionary learned on whitened images holds the whitening in ``config["whitening"]`` (size,
eps, kernel and bias as nested lists; ``whitening_from_config`` reads it), so whoever codes with
the atoms whitens the same way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .preproc import check_whitening

Tensor = torch.Tensor

_PLAIN = (bool, int, float, str, type(None))


class DictionaryFileError(ValueError):
    """A file that exists but is not a readable dictionary file."""


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain Python data (tuples become lists), or a ValueError naming ``where``."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"config keys must be strings, got {k!r} in {where}")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    raise ValueError(
        f"config value {where} = {value!r} is not plain data (number, str, bool, None, list, dict)"
    )


def save_dictionary(path: str | os.PathLike, weight: Tensor, config: dict) -> Path:
    """Write ``weight`` and ``config`` to ``path`` atomically (temp file in the same folder, then
    ``os.replace``), so a reader never sees a half-written file. Creates missing parent folders.

    ``weight``: a floating tensor with at least 2 dimensions (atoms on the first); it is saved
    detached, on the CPU. Returns the path written.
    """
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() < 2:
        raise ValueError("weight must be a floating tensor of shape (n_atoms, in_neurons, ...)")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    payload = {"weight": weight.detach().cpu().contiguous(), "config": _plain(config, "config")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates owner-only files; a dictionary is meant to be shared and read.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_dictionary(path: str | os.PathLike) -> tuple[Tensor, dict]:
    """Read a dictionary file: returns (weight, config).

    Raises FileNotFoundError for a missing file and DictionaryFileError (a ValueError) for a file
    that is not a dictionary file (unreadable, or without a floating ``weight`` tensor and a
    ``config`` dict).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dictionary file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise DictionaryFileError(
            f"{str(path)!r} is not a readable dictionary file: {err}"
        ) from err
    if not isinstance(payload, dict) or set(payload) != {"weight", "config"}:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise DictionaryFileError(
            f"{str(path)!r} is not a dictionary file: expected keys "
            f"['config', 'weight'], found {keys}"
        )
    weight, config = payload["weight"], payload["config"]
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() < 2:
        raise DictionaryFileError(
            f"{str(path)!r}: 'weight' must be a floating tensor with >= 2 dims"
        )
    if not isinstance(config, dict):
        raise DictionaryFileError(f"{str(path)!r}: 'config' must be a dict")
    if not bool(torch.isfinite(weight).all()):
        raise DictionaryFileError(f"{str(path)!r}: 'weight' contains NaN or Inf")
    return weight, config


def whitening_entry(kernel: Tensor, bias: Tensor, **about: Any) -> dict:
    """``config["whitening"]`` for the whitening (kernel (C, C, k, k), bias (C,)) of
    ``sparse.fit_conv_whitening``; ``about``: plain facts to keep beside it (its eps)."""
    return {"size": int(kernel.shape[-1]), **about,
            "kernel": kernel.detach().cpu().tolist(), "bias": bias.detach().cpu().tolist()}


def preprocessing_note(whitening: dict | None) -> str:
    """``config["preprocessing"]``: how the images were prepared before coding."""
    note = "per-image zero mean, unit variance"
    if whitening is not None:
        size = whitening["size"]
        note += f", then {size}x{size} ZCA whitening and again per-image zero mean, unit variance"
    return note


def whitening_from_config(config: dict, channels: int) -> tuple[Tensor, Tensor] | None:
    """The (kernel (C, C, k, k), bias (C,)) whitening of a dictionary's ``config``, or None when
    its atoms were learned on unwhitened images. Raises DictionaryFileError for a malformed entry
    or one for other than ``channels`` image channels."""
    entry = config.get("whitening")
    if entry is None:
        return None
    try:
        kernel = torch.tensor(entry["kernel"], dtype=torch.float32)
        bias = torch.tensor(entry["bias"], dtype=torch.float32)
    except (TypeError, KeyError, ValueError) as err:
        raise DictionaryFileError(f"config['whitening'] is malformed: {err}") from err
    try:
        check_whitening(kernel, bias, channels)
    except ValueError as err:
        raise DictionaryFileError(f"config['whitening']: {err}") from err
    return kernel, bias
