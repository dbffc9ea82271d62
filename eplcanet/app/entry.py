"""What every command-line entry point shares: a parser whose errors are one line, number types
that refuse NaN, inf and out-of-range values, and one way to run a command with the project's exit
codes (2: a user error, 3: training diverged, 128 + N: stopped by signal N after saving).

A user error is one line on stderr, ``error: <what was wrong>; <what is accepted>``, with no
traceback; ``--debug`` anywhere on the command line shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Sequence

import torch

from ..runs import CheckpointError

EXIT_USAGE = 2
EXIT_DIVERGED = 3


class Diverged(RuntimeError):
    """Training met a non-finite loss, gradient or state; the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after it saved what a resume needs."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage of a command with 80 flags is a screen, and
    pushes the message out of a job log's last line): ``error: argument --x: ...; see --help``."""

    def error(self, message: str):  # argparse's hook for every parse error
        self.exit(EXIT_USAGE, f"error: argument {message.removeprefix('argument ')}; "
                              f"see {self.prog} --help\n")


def number(kind: type = float, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False,
           example: str | None = None) -> Callable[[str], float]:
    """An argparse type: a finite `kind` (float or int) in the range given (open or closed ends).

    NaN and inf are refused for every float flag: a NaN learning rate or beta trains to the end
    on NaN losses without a word."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not _inside(value):
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a finite number'}{_range()}"
                f"{f' (e.g. {example})' if example else ''}, got {text!r}")
        return value

    def _inside(value) -> bool:
        if low is not None and (value < low or (low_open and value == low)):
            return False
        return high is None or not (value > high or (high_open and value == high))

    def _range() -> str:
        lo, hi = (v if v is None or kind is int else f"{v:g}" for v in (low, high))
        if low is not None and high is not None:
            return f" in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        if low is not None:
            return f" {'>' if low_open else '>='} {lo}"
        if high is not None:
            return f" {'<' if high_open else '<='} {hi}"
        return ""

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


FINITE = number(float)
NON_NEGATIVE = number(float, low=0.0)
POSITIVE = number(float, low=0.0, low_open=True)
FRACTION = number(float, low=0.0, high=1.0, high_open=True)  # [0, 1)
COUNT = number(int, low=1)
SEED = number(int, low=0, high=2**32 - 1)  # numpy's seed range


DEVICE_HELP = ("auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or N; a GPU that "
               "was asked for and is not there is an error")


def resolve_device(spec: str | int) -> torch.device:
    """The device of a --device flag (DEVICE_HELP). An explicit GPU that is missing is an error,
    not a quiet fall-back: on a node with a broken driver a GPU recipe would run for days on the
    CPU. 'auto' prints what it chose."""
    spec = str(spec)
    if spec == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(f"device: {device} (--device auto)", file=sys.stderr)
        return device
    if spec == "cpu":
        return torch.device("cpu")
    name = f"cuda:{spec}" if spec.isdigit() else spec
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type != "cuda":
        raise SystemExit(f"error: --device {spec!r} is not a device; accepted: {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise SystemExit(f"error: --device {spec} asked for a GPU, but CUDA is not available "
                         f"here; give --device cpu (or auto) to run on the CPU")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {spec}: only {torch.cuda.device_count()} GPU(s) are "
                         f"visible (cuda:0 to cuda:{torch.cuda.device_count() - 1}); give one of "
                         f"those, or --device cpu")
    return device


_USER_ERRORS = (ValueError, OSError, CheckpointError)


def run_command(main: Callable[[], object], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's `main()` and turn what it raises into an exit code and one line.

    SystemExit("error: ...") (the flag checks) and ValueError / OSError from the library (a file
    that is not what it should be, a shape that does not fit) are user errors: exit 2. Diverged:
    exit 3. Interrupted: its resume line, exit 128 + signal. Anything else is a bug and keeps
    its traceback. With --debug every traceback is kept."""
    argv = sys.argv[1:] if argv is None else argv
    if "--debug" in argv:
        main()
        return 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            _say(exc.code)
            return EXIT_USAGE
        return 0 if exc.code is None else int(exc.code)
    except Diverged as exc:
        _say(str(exc))
        return EXIT_DIVERGED
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted (nothing was being saved)", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        _say(f"{exc} (--debug shows the traceback)")
        return EXIT_USAGE
    return 0


def _say(message: str) -> None:
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(line if line.startswith("error:") else f"error: {line}", file=sys.stderr)
