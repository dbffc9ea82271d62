"""The EP parameter update in closed form (differences first) against autograd of Phi."""

import pytest
import torch

from eplcanet.energy.lcacnn import LCA_CNN
from eplcanet.energy.learning import phi_param_grads
from eplcanet.energy.learning import phi_param_grads_autograd as autograd_update
from eplcanet.energy.networks import P_CNN, P_MLP, VF_CNN
from eplcanet.sparse import make_sparse_coder

D = torch.float64


def _cnn(pools="mm", softmax=True, loss="cel", cls=P_CNN, **kw):
    fc = [7, 10] if softmax else [10]
    return cls((2, 9, 9), [4, 6], [3, 3], [1, 1], [1, 0], pools, fc, softmax=softmax, loss=loss,
               **kw).to(D)


def _lcacnn():
    coder = make_sparse_coder("lca", out_neurons=5, in_neurons=2, kernel_size=3, stride=2,
                              lambda_=0.05, lca_iters=10, solver="fista",
                              input_zero_mean=False, input_unit_var=False)
    return LCA_CNN((2, 10, 10), coder, [4, 6], [3, 3], [1, 1], [1, 1], "ma", [7, 10],
                   softmax=True, loss="cel").to(D)


NETS = {
    "cnn max pools, softmax cel": lambda: _cnn("mm"),
    "cnn avg pools, mse": lambda: _cnn("aa", softmax=False, loss="mse"),
    "cnn no pools, softmax mse": lambda: _cnn("ii", loss="mse"),
    "cnn mixed pools, cel": lambda: _cnn("ma", softmax=False),
    "cnn strided, odd sizes": lambda: P_CNN((1, 13, 13), [3, 5, 4], [3, 2, 3], [2, 1, 1],
                                            [1, 1, 0], "iam", [10]).to(D),
    "mlp": lambda: P_MLP([20, 15, 12, 10], softmax=True, loss="cel").to(D),
    "vf cnn": lambda: _cnn("mm", cls=VF_CNN),
    "lcacnn": _lcacnn,
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("betas", [(-0.5, 0.5), (0.0, 0.3)])
def test_closed_form_update_equals_autograd_of_phi(name, betas):
    torch.manual_seed(0)
    net = NETS[name]()
    x = torch.rand(5, *getattr(net, "image_shape", net.in_shape), dtype=D)
    y = torch.randint(0, 10, (5,))
    # Independent states: the max-pool indices differ between the two phases.
    sa = [torch.rand(5, *s, dtype=D) for s in net.state_shapes]
    sb = [torch.rand(5, *s, dtype=D) for s in net.state_shapes]
    ours = phi_param_grads(net, x, y, sa, betas[0], sb, betas[1])
    ref = autograd_update(net, x, y, sa, betas[0], sb, betas[1])
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_closed_form_update_keeps_its_digits_where_autograd_of_phi_loses_them():
    # Nudged states a hair away from each other, as in the lower layers of a deep network: the
    # update is then a small difference of two large gradients.
    torch.manual_seed(1)
    net = P_CNN((3, 16, 16), [16, 32], [3, 3], [1, 1], [1, 1], "mm", [10], softmax=True,
                loss="cel")
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 10, (32,))
    sa = [torch.rand(32, *s) for s in net.state_shapes]
    sb = [s + 1e-5 * torch.randn_like(s) for s in sa]
    exact = autograd_update(net.double(), x.double(), y, [s.double() for s in sa], -0.5,
                            [s.double() for s in sb], 0.5)
    net.float()
    ours = phi_param_grads(net, x, y, sa, -0.5, sb, 0.5)
    naive = autograd_update(net, x, y, sa, -0.5, sb, 0.5)
    first = 0  # the first conv weight: the largest sums
    err_ours = float((ours[first].double() - exact[first]).norm() / exact[first].norm())
    err_naive = float((naive[first].double() - exact[first]).norm() / exact[first].norm())
    assert err_ours < 1e-4
    assert err_naive > 10 * err_ours
