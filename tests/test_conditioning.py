"""The conditioning diagnostics (eplcanet.energy.conditioning) against direct computations."""

import math

import pytest
import torch

from eplcanet.energy.conditioning import (agreement, estimate, pool_pick_report,
                                          relative_change, settle_steps, settle_trace)
from eplcanet.energy.dynamics import relax
from eplcanet.energy.learning import Phases
from eplcanet.energy.networks import P_CNN
from eplcanet.kernels import native

D = torch.float64


def small_cnn(channels=(8, 16), size=12):
    torch.manual_seed(0)
    n = len(channels)
    return P_CNN((1, size, size), list(channels), [3] * n, [1] * n, [1] * n, "m" * n, [10],
                 act="my_hard_sig", softmax=True, loss="cel").to(D)


def test_settle_trace_is_the_relative_change_of_each_step():
    net, x, y = small_cnn(), torch.rand(3, 1, 12, 12, dtype=D), torch.tensor([1, 2, 3])
    phases = Phases(T1=5, T2=3, betas=(0.0, 0.5), thirdphase=True)
    trace = settle_trace(net, x, y, phases)
    assert len(trace) == (5 + 3 + 3) * net.n_states
    with torch.no_grad():
        drive = net.input_drive(x)
        s3 = relax(net, drive, net.init_states(3), 3)
        s4 = relax(net, drive, s3, 1)
        free = relax(net, drive, s4, 1)
        minus1 = relax(net, drive, free, 1, -0.5, y)
    for layer in range(net.n_states):
        row = next(r for r in trace if (r["phase"], r["step"], r["layer"]) == ("free", 4, layer))
        want = float((s4[layer] - s3[layer]).norm() / s4[layer].norm())
        assert row["rel_change"] == pytest.approx(want, rel=1e-12)
        row = next(r for r in trace
                   if (r["phase"], r["step"], r["layer"]) == ("nudged -beta", 1, layer))
        want = float((minus1[layer] - free[layer]).norm() / minus1[layer].norm())
        assert row["rel_change"] == pytest.approx(want, rel=1e-12)


def test_settle_steps_takes_the_worst_layer():
    trace = [{"phase": "free", "step": t, "layer": i, "rel_change": v}
             for t, vals in enumerate([(1e-1, 1e-2), (1e-7, 1e-5), (1e-8, 1e-7)], start=1)
             for i, v in enumerate(vals)]
    assert settle_steps(trace, 1e-6) == {"free": 3}
    assert settle_steps(trace, 1e-9) == {"free": None}
    assert relative_change(torch.zeros(3), torch.zeros(3)) == 0.0


def test_agreement_per_tensor():
    a = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 0.0]), "c": torch.tensor([2.0])}
    b = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0, 0.0]), "c": torch.tensor([-2.0])}
    got = agreement(a, b)
    assert got["w"]["cosine"] == pytest.approx(1 / math.sqrt(2))
    assert got["w"]["rel_err"] == pytest.approx(1 / math.sqrt(2))
    assert got["b"] == {"cosine": 1.0, "rel_err": 0.0}
    assert got["c"]["cosine"] == pytest.approx(-1.0) and got["c"]["rel_err"] == pytest.approx(2.0)


def test_estimate_leaves_the_network_as_it_was():
    net, x, y = small_cnn(), torch.rand(2, 1, 12, 12, dtype=D), torch.tensor([0, 1])
    before = {n: p.clone() for n, p in net.named_parameters()}
    g = estimate(net, x, y, "EP", Phases(T1=4, T2=2, betas=(0.0, 0.5)))
    assert set(g) == {n for n, _ in net.named_parameters()}
    assert all(p.grad is None and torch.equal(p, before[n]) for n, p in net.named_parameters())


@pytest.mark.skipif(native.why_unavailable() is not None, reason="needs the C kernels")
def test_pool_pick_report_finds_the_ties_of_the_first_steps():
    """From zero states the second layer is spatially constant after one step (its input, the
    first layer, was still zero: its bias alone drove it), so at step 2 the synapse above it
    sees tied windows: Winograd's raw picks
    differ from the direct ones there, and none differ after the tie rule."""
    net = small_cnn((16, 32, 64), size=32)
    x = torch.rand(2, 1, 32, 32, dtype=D)
    rows = pool_pick_report(net, x, steps=3)
    assert {r["synapse"] for r in rows} == {1, 2}
    tied = next(r for r in rows if (r["step"], r["synapse"]) == (2, 2))
    assert tied["raw_diff"] > 0
    assert all(r["rule_diff"] == 0 and r["direct_gap"] == 0.0 for r in rows)
