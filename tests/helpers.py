"""Plain functions that several test files share (fixtures are in conftest.py)."""

from __future__ import annotations

import csv
import math
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# A small CNN on the digits: the flags of conftest.digits_cnn_results, the trained run that several
# end-to-end tests share, and of the commands those tests run on it.
DIGITS_CNN = ["--channels", "8", "--T1", "6", "--T2", "2", "--mbs", "64", "--device", "cpu"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# t_{0.975, df} from a printed table of Student's t distribution: the reference the report's
# confidence intervals are checked against (not scipy, which the code under test may use).
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}


def is_png(path: Path, more_than: int = 1000) -> bool:
    """A file that starts with the PNG signature and is larger than `more_than` bytes: by default
    a drawn matplotlib figure (tens of kB), not an empty or truncated write; an image written
    pixel for pixel (a small dictionary grid) can be a few hundred bytes and passes 0."""
    path = Path(path)
    return (path.is_file() and path.stat().st_size > more_than
            and path.read_bytes()[:8] == PNG_MAGIC)


def hand_stats(x: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and 95% CI half-width, by hand."""
    x = np.asarray(x, dtype=float)
    mean = x.sum() / len(x)
    std = math.sqrt(((x - mean) ** 2).sum() / (len(x) - 1))
    return mean, std, T975[len(x) - 1] * std / math.sqrt(len(x))


def main_fast(*argv: str) -> dict:
    """What ``python main_fast.py ARGV`` does, in this process (saves a torch import per run)."""
    from eplcanet.app.settings import parse_settings
    from eplcanet.app.experiment import run

    return run(parse_settings(list(argv)), argv=["main_fast.py", *argv])


def main_fast_command(*argv: str) -> list[str]:
    """The command line that runs main_fast.py ARGV in a process of its own."""
    return [sys.executable, str(ROOT / "main_fast.py"), *argv]


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """A run's metrics.csv, one dict a row, without the wall-clock column (which never repeats)."""
    with open(Path(run_dir) / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def copy_results(results: Path, dest: Path) -> Path:
    """A copy of a results directory (its task/alg/model/date/run_N tree) at dest, for a test
    that writes into a run: the session's shared run stays as it was trained."""
    shutil.copytree(results, dest)
    return dest
