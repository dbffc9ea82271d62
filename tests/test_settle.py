"""Relaxation(tol=...): phases that stop once settled. The stopping step against a naive loop
over samples and layers, the EP estimate against the fixed-step one (float64, per tensor), the
batched +beta / -beta phases, the alternating order, warm starts, and bad input."""

import math

import pytest
import torch

from eplcanet.energy.dynamics import Relaxation, relax, settle, step
from eplcanet.energy.estimators import estimate_grads
from eplcanet.energy.learning import Phases, StateBank, ep_grads
from eplcanet.energy.networks import P_CNN, P_MLP

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run on one thread


def _cnn(**relaxation):
    torch.manual_seed(0)
    return P_CNN((2, 10, 10), [5, 8], [3, 3], [1, 1], [1, 1], "mm", [7, 10], act="my_hard_sig",
                 softmax=True, loss="cel", scale=1.5,
                 relaxation=Relaxation(**relaxation)).to(D)


def _batch(n=6):
    """Inputs of very different sizes, so the samples settle at different steps."""
    torch.manual_seed(1)
    x = torch.rand(n, 2, 10, 10, dtype=D) * torch.logspace(-1, 1, n, dtype=D).view(-1, 1, 1, 1)
    return x, torch.randint(0, 10, (n,))


def _first_settled_step(net, drive, states, cap, tol, k, beta=0.0, y=None):
    """Naive reference: step one at a time; at every k-th step (before the cap) compare each
    sample's every layer, one at a time, with the previous step."""
    for t in range(1, cap + 1):
        new = step(net, drive, states, beta, y)
        if t % k == 0 and t < cap:
            worst = 0.0
            for a, b in zip(states, new):
                for n in range(b.shape[0]):
                    size = float(b[n].norm())
                    change = float((b[n] - a[n]).norm())
                    worst = max(worst, change / size if size > 0 else change * math.inf)
            if worst < tol:
                return t
        states = new
    return cap


@pytest.mark.parametrize("order", ["sync", "alternate"])
@pytest.mark.parametrize("k", [1, 5])
def test_settle_stops_at_the_first_test_below_tol_with_the_states_of_relax(order, k):
    net = _cnn(update_order=order, tol=1e-6, check_every=k)
    x, y = _batch()
    drive = net.input_drive(x)
    with torch.no_grad():
        for beta, start in ((0.0, net.init_states(6)), (0.8, relax(net, drive, net.init_states(6),
                                                                   40))):
            states, used = settle(net, drive, start, 200, beta, y)
            assert used == _first_settled_step(net, drive, start, 200, 1e-6, k, beta, y)
            assert used < 200 and used % k == 0
            expected = relax(net, drive, start, used, beta, y)
            assert all(torch.equal(a, b) for a, b in zip(states, expected))


def test_the_worst_sample_decides_not_the_batch_norm():
    """One sample far from settling among settled ones: a norm over the whole batch would call
    the batch settled; the per-sample test does not."""
    net = _cnn(tol=1e-6, check_every=1)
    x, _ = _batch()
    with torch.no_grad():
        drive = net.input_drive(x)
        settled = relax(net, drive, net.init_states(6), 300)
        start = [s.clone() for s in settled]
        for s in start:
            s[0] = s[0] * 0.999  # sample 0 displaced a little
        _, used = settle(net, drive, start, 300)
        # sample 0 alone needs as many steps as it does in the batch
        _, alone = settle(net, drive[:1], [s[:1] for s in start], 300)
        assert used == alone > 1
        # while the batch's norm calls it settled sooner
        states, batch_norm_stop = start, None
        for t in range(1, 301):
            new = step(net, drive, states)
            if max(float((b - a).norm() / b.norm()) for a, b in zip(states, new)) < 1e-6:
                batch_norm_stop = t
                break
            states = new
        assert batch_norm_stop is not None and batch_norm_stop < used


def _per_tensor_cosines(a, b):
    return [float(u.flatten() @ v.flatten() / (u.norm() * v.norm())) for u, v in zip(a, b)]


def _ep_estimate(net, x, y, phases, init=None):
    for p in net.parameters():
        p.grad = None
    est = ep_grads(net, x, y, phases, init=init)
    return [p.grad.clone() for p in net.parameters()], est


@pytest.mark.parametrize("thirdphase, batched", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("order", ["sync", "alternate"])
def test_ep_estimate_at_tol_1e6_equals_the_fixed_step_one(thirdphase, batched, order):
    fixed = _cnn(update_order=order)
    tol = fixed.with_relaxation(tol=1e-6)
    x, y = _batch()
    phases = Phases(80, 50, (0.0, 0.5), thirdphase=thirdphase, batch_phases=batched)
    ref, ref_est = _ep_estimate(fixed, x, y, phases)
    ours, est = _ep_estimate(tol, x, y, phases)
    assert (ref_est.free_steps, ref_est.nudged_steps) == (80, 50)
    assert est.free_steps < 80 and est.nudged_steps < 50  # it did stop early
    for c in _per_tensor_cosines(ours, ref):
        assert c >= 0.999, c
    # and a real difference: stopping far too early (tol 1e-1) does not give the estimate
    loose, _ = _ep_estimate(fixed.with_relaxation(tol=1e-1, check_every=1), x, y, phases)
    assert min(_per_tensor_cosines(loose, ref)) < 0.999


def test_warm_started_phases_settle_sooner_and_keep_the_estimate():
    fixed, x, y = _cnn(), *_batch()
    tol = fixed.with_relaxation(tol=1e-6)
    phases = Phases(80, 50, (0.0, 0.5), thirdphase=True)
    bank = StateBank(tol, 6, "cpu", dtype=D)
    idx = torch.arange(6)
    cold, cold_est = _ep_estimate(tol, x, y, phases)
    bank.store(idx, cold_est.states)
    warm, warm_est = _ep_estimate(tol, x, y, phases, init=bank.lookup(idx, "cpu", D))
    ref, _ = _ep_estimate(fixed, x, y, phases)
    assert warm_est.free_steps < cold_est.free_steps
    for c in _per_tensor_cosines(warm, ref):
        assert c >= 0.999, c


@pytest.mark.parametrize("bad", [0, 0.0, -1e-6, float("nan"), float("inf"), "1e-6", True])
def test_bad_tol_is_refused(bad):
    with pytest.raises(ValueError, match="tol must be a finite number > 0"):
        Relaxation(tol=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, None])
def test_bad_check_every_is_refused(bad):
    with pytest.raises(ValueError, match="check_every must be an int >= 1"):
        Relaxation(tol=1e-6, check_every=bad)


def test_bptt_refuses_a_tol():
    net = P_MLP([12, 9, 10], relaxation=Relaxation(tol=1e-6)).to(D)
    x, y = torch.rand(3, 12, dtype=D), torch.randint(0, 10, (3,))
    with pytest.raises(ValueError, match="BPTT .* cannot stop when settled"):
        estimate_grads(net, x, y, "BPTT", Phases(8, 3, (0.0, 0.5)))
    assert estimate_grads(net, x, y, "EP", Phases(8, 3, (0.0, 0.5))).free_steps <= 8


# ------------------------------------------------------------------------ command line
TINY_CLI = "--channels 4 8 --T1 60 --T2 20 --mbs 256 --epochs 2 --device cpu".split()


@pytest.mark.parametrize("value", ["0", "-1e-6", "nan", "inf", "tiny"])
def test_bad_tol_flag_is_refused_before_work(value, capsys):
    from eplcanet.app.settings import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(TINY_CLI + [f"--tol={value}"])
    assert "--tol: must be a finite number > 0" in capsys.readouterr().err


def test_tol_flag_with_bptt_is_refused():
    from eplcanet.app.settings import parse_settings

    with pytest.raises(SystemExit, match="--tol applies to --alg EP"):
        parse_settings(TINY_CLI + ["--tol", "1e-5", "--alg", "BPTT"])


def test_tol_run_logs_the_steps_per_epoch_and_gducheck_shows_them(tmp_path, capsys):
    from eplcanet import runs
    from eplcanet.app.settings import parse_settings
    from eplcanet.app.build import build_model
    from eplcanet.app.experiment import run

    argv = TINY_CLI + ["--tol", "1e-5", "--save", "--results-dir", str(tmp_path)]
    args = parse_settings(argv)
    assert build_model(args, (1, 8, 8), 10).relaxation.tol == 1e-5
    run(args, argv)
    rows = runs.read_metrics(next(tmp_path.glob("digits/EP/CNN/*/run_1")))
    assert len(rows) == 2
    for r in rows:
        assert 5 <= r["free_steps_mean"] <= r["free_steps_max"] <= 60
        assert 5 <= r["nudged_steps_mean"] <= r["nudged_steps_max"] <= 20
        assert r["free_steps_max"] < 60  # these phases settle well before the caps
        assert r["free_steps_max"] % 5 == 0  # tested every 5 steps
    assert "steps free" in capsys.readouterr().out
    gdu = ["--todo", "gducheck", "--tol", "1e-5", "--results-dir", str(tmp_path)] + TINY_CLI
    run(parse_settings(gdu), gdu)
    assert "free phase settled in" in capsys.readouterr().out
    # and without --tol, no step columns
    plain = TINY_CLI[:-4] + ["--epochs", "1", "--device", "cpu", "--save", "--results-dir",
                             str(tmp_path / "plain")]
    run(parse_settings(plain), plain)
    header = next((tmp_path / "plain").glob("digits/EP/CNN/*/run_1/metrics.csv")).read_text()
    assert header.splitlines()[0] == ",".join(runs.METRICS_FIELDS)
