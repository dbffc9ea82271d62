"""The compiled tile kernels: where they are built, what happens without a compiler, bad calls."""

import os
import shutil

import pytest
import torch

from eplcanet.kernels import native
from eplcanet.energy.dynamics import Relaxation, relax
from eplcanet.energy.networks import P_CNN
from eplcanet.kernels.winograd import eligible, winograd_matrices

HAS_COMPILER = any([os.environ.get("CC"), shutil.which("cc"), shutil.which("gcc")])


@pytest.fixture
def fresh_kernels():
    """kernels() forgets what it loaded, before and after the test."""
    native.kernels.cache_clear()
    yield
    native.kernels.cache_clear()


def _net():
    return P_CNN((3, 12, 12), [32, 32], [5, 5], [1, 1], [2, 2], "mm", [10], softmax=True,
                 loss="cel").double()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_kernels_build_once_into_the_cache_directory(tmp_path, monkeypatch, fresh_kernels):
    monkeypatch.setenv("EPLCANET_CACHE", str(tmp_path))
    assert native.kernels() is not None and native.why_unavailable() is None
    built = list(tmp_path.glob("tiles-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native.kernels.cache_clear()
    assert native.kernels() is not None
    assert [p.stat().st_mtime_ns for p in tmp_path.glob("tiles-*.so")] == [stamp]  # reused


def test_without_a_compiler_winograd_is_refused_and_auto_convolves_directly(
        tmp_path, monkeypatch, fresh_kernels):
    monkeypatch.setenv("EPLCANET_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert native.kernels() is None
    assert "no-such-compiler" in native.why_unavailable()
    torch.manual_seed(0)
    net = _net()
    with pytest.raises(ValueError, match="'winograd' needs the compiled tile kernels"):
        Relaxation(conv_algo="winograd")
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        s = net.init_states(2)
        assert not eligible(net.synapses[1], s[0])  # 'auto' falls back to oneDNN
        ours = relax(net, net.input_drive(x), s, 3)
        direct = net.with_relaxation(conv_algo="direct")
        ref = relax(direct, direct.input_drive(x), s, 3)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_calls_with_a_wrong_dtype_layout_or_tile_size_are_refused():
    bt = winograd_matrices(4, 3)[2].contiguous()
    x = torch.zeros(1, 6, 6, 2, dtype=torch.float64)
    out = torch.zeros(36, 4, 2, dtype=torch.float64)
    native.call("to_freqs", 0, x, 1, 6, 6, 2, 1, 4, 6, 2, 2, bt, out)  # fine
    with pytest.raises(TypeError, match="accepted: float32, float64"):
        native.call("to_freqs", 0, x.half(), 1, 6, 6, 2, 1, 4, 6, 2, 2, bt.half(), out.half())
    with pytest.raises(ValueError, match="contiguous"):
        native.call("to_freqs", 0, x.transpose(1, 2), 1, 6, 6, 2, 1, 4, 6, 2, 2, bt, out)
    with pytest.raises(ValueError, match="no tile transform for these tile sizes"):
        native.call("to_freqs", 0, x, 1, 6, 6, 2, 1, 3, 5, 2, 2, bt, out)  # F(3x3, 3x3): n = 5
