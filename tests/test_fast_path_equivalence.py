"""Every --conv-algo gives the direct convolution's gradient estimate, per tensor, from the default
zero initial states, at the depth and width of the CIFAR recipes (run/rcnn_cifar10.sh and the
LCA-RCNN of run/lcacnn_common.sh), for EP and BPTT and every pool kind.

From zero states the first steps see spatially constant inputs, whose max-pooling windows are
exact ties; a fast convolution that broke them by its rounding moved the whole relaxation (per-
tensor cosines down to 0.71 on the seed's recipe). Each case is checked to be sensitive: with
the tie rule switched off, the same comparison fails."""

import pytest
import torch

import eplcanet.energy.networks as networks
from eplcanet.energy.conditioning import agreement, estimate
from eplcanet.energy.lcacnn import LCA_CNN
from eplcanet.energy.learning import Phases
from eplcanet.energy.networks import P_CNN, VF_CNN
from eplcanet.kernels import native
from eplcanet.sparse.factory import make_sparse_coder

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(native.why_unavailable() is not None,
                                 reason="the Winograd C kernels cannot be built here")]

D = torch.float64
# The recipes at CIFAR size; the first few steps from zero states are where ties arise.
SIZE = 32
PHASES = Phases(T1=12, T2=3, betas=(0.0, 1.0), thirdphase=True)


def images(n=2, size=SIZE, channels=3, seed=0):
    """Photo-like images: flat regions (saturated sky, backgrounds) and textured ones."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randint(0, 4, (n, channels, size // 8, size // 8), generator=g).to(D) / 3
    x = flat.repeat_interleave(8, 2).repeat_interleave(8, 3)
    texture = torch.rand(n, 1, size, size, generator=g, dtype=D) < 0.4
    return torch.where(texture, torch.rand(x.shape, generator=g, dtype=D), x)


def seed_cnn(kind: str, pools: str):
    """The seed's CIFAR-10 RCNN: 64-128-256-512, 3x3, padding 1, hard sigmoid, softmax + cel."""
    torch.manual_seed(0)
    cls = VF_CNN if kind == "VF_CNN" else P_CNN
    return cls((3, SIZE, SIZE), [64, 128, 256, 512], [3] * 4, [1] * 4, [1] * 4, pools, [10],
               act="my_hard_sig", softmax=True, loss="cel").to(D)


def lca_rcnn():
    """The LCA-RCNN of the run/ scripts: LCA 64 atoms 9x9 stride 2, then 64-256-512 (a smaller
    LCA budget than the recipe's 600 iterations: the code is the same fixed input either way)."""
    torch.manual_seed(0)
    coder = make_sparse_coder("lca", out_neurons=64, in_neurons=3, kernel_size=9, stride=2,
                              lambda_=0.25, tau=100, lca_iters=20, input_zero_mean=False,
                              input_unit_var=False)
    return LCA_CNN((3, SIZE, SIZE), coder.to(D), [64, 256, 512], [3] * 3, [1] * 3, [1] * 3, "imm",
                   [10], act="my_hard_sig", softmax=True, loss="cel", scale=0.5).to(D)


CASES = [("P_CNN", "mmmm"), ("P_CNN", "maim"), ("VF_CNN", "mmmm"), ("LCA_CNN", "imm")]
_direct: dict = {}


def _estimates(kind, pools, alg, algo):
    net = lca_rcnn() if kind == "LCA_CNN" else seed_cnn(kind, pools)
    x, y = images(), torch.tensor([3, 8])
    key = (kind, pools, alg)
    if key not in _direct:
        _direct[key] = estimate(net.with_relaxation(conv_algo="direct"), x, y, alg, PHASES)
    return estimate(net.with_relaxation(conv_algo=algo), x, y, alg, PHASES), _direct[key]


@pytest.mark.parametrize("algo", ["auto", "winograd"])
@pytest.mark.parametrize("alg", ["EP", "BPTT"])
@pytest.mark.parametrize("kind, pools", CASES)
def test_estimate_equals_direct_per_tensor(kind, pools, alg, algo):
    fast, direct = _estimates(kind, pools, alg, algo)
    for name, a in agreement(fast, direct).items():
        assert a["cosine"] >= 0.9999, (name, a)
        assert a["rel_err"] <= 1e-6, (name, a)


@pytest.mark.parametrize("kind, pools", [("P_CNN", "mmmm"), ("LCA_CNN", "imm")])
def test_comparison_fails_without_the_tie_rule(kind, pools, monkeypatch):
    """The same comparison on the EP estimate catches a fast path that breaks ties by rounding."""
    monkeypatch.setattr(networks, "first_identical", lambda idx, *args: idx)
    fast, direct = _estimates(kind, pools, "EP", "winograd")
    assert max(a["rel_err"] for a in agreement(fast, direct).values()) > 1e-3
