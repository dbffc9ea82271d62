"""Fixtures shared by several test files (plain helper functions are in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import DIGITS_CNN, main_fast


@pytest.fixture
def one_thread():
    """Run a test on one thread: on tiny tensors OpenMP wake-ups on busy shared cores cost far
    more than the arithmetic (the thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_cnn_results(tmp_path_factory) -> Path:
    """A results directory holding one saved run of `main_fast.py DIGITS_CNN --epochs 1 --save`,
    trained once for the session instead of once per test. Read only: a test that writes into
    the run (an attack, a resume) works on helpers.copy_results(...) in its own tmp_path, so
    that no test sees another's files."""
    results = tmp_path_factory.mktemp("digits_cnn") / "results"
    main_fast(*DIGITS_CNN, "--epochs", "1", "--save", "--results-dir", str(results))
    return results
