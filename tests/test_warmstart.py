"""--warm-start: each sample's free phase starts from its last free equilibrium."""

import copy

import pytest
import torch

from eplcanet.app.settings import parse_settings
from eplcanet.data import WithIndex, load_task, make_loader
from eplcanet.energy.dynamics import relax
from eplcanet.energy.learning import Phases, StateBank
from eplcanet.energy.networks import P_CNN
from eplcanet.app.experiment import run
from eplcanet.app.train import train_epoch


def _net():
    torch.manual_seed(0)
    return P_CNN((1, 8, 8), [4, 6], [3, 3], [1, 1], [1, 1], "mm", [10], act="my_hard_sig",
                 softmax=True, loss="cel")


def test_bank_returns_states_only_once_every_sample_of_the_batch_has_some():
    net = _net()
    bank = StateBank(net, 10, "cpu")
    like = net.init_states(3)
    states = [torch.rand_like(s) for s in like]
    assert bank.lookup(torch.tensor([1, 4, 7]), "cpu", torch.float32) is None
    bank.store(torch.tensor([1, 4, 7]), states)
    assert bank.lookup(torch.tensor([1, 4, 8]), "cpu", torch.float32) is None  # 8: never stored
    got = bank.lookup(torch.tensor([7, 1]), "cpu", torch.float32)
    for g, s in zip(got, states):
        torch.testing.assert_close(g, s[[2, 0]], atol=1e-3, rtol=0)  # float16 storage
        assert g.dtype == torch.float32
        assert g.dim() != 4 or g.is_contiguous(memory_format=torch.channels_last)
    assert bank.nbytes == 10 * sum(s[0].numel() for s in like) * 2


def test_loader_yields_indices_and_keeps_the_epoch_augmentation():
    splits = load_task("digits", seed=0, data_aug=True)
    plain = next(iter(make_loader(splits.train, 16, shuffle=True, seed=3, epoch=2)))
    x, y, idx = next(iter(make_loader(WithIndex(splits.train), 16, shuffle=True, seed=3,
                                      epoch=2)))
    torch.testing.assert_close(x, plain[0])  # same order, same random crops
    assert torch.equal(y, plain[1])
    assert [int(splits.train[int(i)][1]) for i in idx] == y.tolist()


def test_second_epoch_relaxes_from_the_stored_equilibria():
    splits = load_task("digits", seed=0)
    data = WithIndex(torch.utils.data.Subset(splits.train, range(96)))
    net, phases = _net(), Phases(8, 2, (0.0, 0.5), thirdphase=True)
    cold = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    cold_opt = torch.optim.SGD(cold.parameters(), lr=0.05)
    bank = StateBank(net, len(data), "cpu")
    loader = make_loader(data, 32, shuffle=True, seed=0, epoch=1)
    train_epoch(net, opt, loader, "EP", phases, "cpu", bank=bank, warm_T1=3)
    # The first epoch has nothing stored: it is the cold-start epoch, parameter for parameter.
    train_epoch(cold, cold_opt, make_loader(data.dataset, 32, shuffle=True, seed=0, epoch=1),
                "EP", phases, "cpu")
    for a, b in zip(net.parameters(), cold.parameters()):
        torch.testing.assert_close(a, b)
    assert bool(bank.known.all())
    # In the next epoch a minibatch starts from its samples' stored states and runs warm_T1 steps.
    x, y, idx = next(iter(make_loader(data, 32, shuffle=True, seed=0, epoch=2)))
    with torch.no_grad():
        start = bank.lookup(idx, "cpu", torch.float32)
        expected = relax(net, net.input_drive(x), start, 3)
    train_epoch(net, opt, [(x, y, idx)], "EP", phases, "cpu", bank=bank, warm_T1=3)
    for stored, e in zip(bank.lookup(idx, "cpu", torch.float32), expected):
        torch.testing.assert_close(stored, e, atol=1e-3, rtol=0)


def test_warm_start_trains_from_the_command_line(tmp_path, capsys):
    argv = ["--warm-start", "5", "--epochs", "2", "--device", "cpu", "--save",
            "--results-dir", str(tmp_path)]
    result = run(parse_settings(argv), argv)
    out = capsys.readouterr().out
    assert "warm start: 5 free steps" in out and "state bank" in out
    assert result["test_acc"] > 0.3  # far above chance (0.1) after two tiny epochs


def test_warm_start_under_torchrun_is_refused_before_any_work(tmp_path):
    from eplcanet.app.distributed import DistContext
    from eplcanet.app.experiment import _run

    argv = ["--warm-start", "5", "--device", "cpu", "--save", "--results-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="--warm-start runs in a single process"):
        _run(parse_settings(argv), argv, DistContext(rank=0, world_size=2))
    assert not any(tmp_path.iterdir())  # no run directory was started
