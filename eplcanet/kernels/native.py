"""The C kernels of ``_tiles.c`` (Winograd tile transforms) and ``_ties.c`` (the max-pool tie
rule): built with the machine's C compiler at first use, into one library, then loaded.

The shared library is cached under ``$EPLCANET_CACHE`` (default ``~/.cache/eplcanet``), keyed by
the sources, the compiler and this CPU's instruction-set flags (it is built with -march=native, so
nodes of another CPU type sharing a home directory build their own). Without a working C compiler
``kernels()`` returns None and the callers keep to PyTorch's own operators; ``why_unavailable()``
says what failed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name(name) for name in ("_tiles.c", "_ties.c"))
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
_failure: str | None = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _cache_dir() -> Path:
    return Path(os.environ.get("EPLCANET_CACHE", Path.home() / ".cache" / "eplcanet"))


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside target, then rename: concurrent builders (several
    processes of one torchrun job) never load a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *_FLAGS, *map(str, SOURCES), "-o", tmp], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=None)
def kernels() -> ctypes.CDLL | None:
    """The loaded kernels, or None when they cannot be built here."""
    global _failure
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        _failure = "no C compiler found (set CC, or install gcc)"
        return None
    try:
        version = subprocess.run([compiler, "--version"], check=True, capture_output=True,
                                 text=True).stdout
        key = hashlib.sha256(
            b"".join(p.read_bytes() for p in SOURCES) + version.encode() + _cpu_flags().encode() + str(_FLAGS).encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"tiles-{key}.so"
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        _failure = f"building {', '.join(p.name for p in SOURCES)} with {compiler} failed: {detail.strip()[:500]}"
        return None
    return lib


def why_unavailable() -> str | None:
    """None when the kernels load; otherwise what went wrong."""
    return None if kernels() is not None else _failure


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def call(name: str, *args) -> None:
    """Run kernel `name` for the dtype of the first tensor argument; tensors are passed as
    pointers to their (contiguous) data, ints as C ints, None as NULL."""
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
    if dtype not in _SUFFIX:
        raise TypeError(f"{name}: {dtype} is not supported; accepted: float32, float64")
    fn = getattr(kernels(), f"{name}_{_SUFFIX[dtype]}")
    c_args = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if not a.is_contiguous():
                raise ValueError(f"{name}: tensors must be contiguous")
            c_args.append(ctypes.c_void_p(a.data_ptr()))
        elif a is None:
            c_args.append(ctypes.c_void_p(None))
        else:
            c_args.append(ctypes.c_int(int(a)))
    if fn(*c_args) != 0:
        raise ValueError(f"{name}: no tile transform for these tile sizes (F(4x4, 3x3) and "
                         "F(4x4, 5x5) have kernels)")
