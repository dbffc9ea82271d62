"""The feed-forward baseline: P_CNN's layers evaluated bottom-up, trained by backprop.

A robustness study of energy-based networks needs the network every reader compares against: the
same convolutions, poolings, fully connected layers, activation and readout, evaluated as an
ordinary feed-forward network and trained with ordinary backpropagation on the same loss
(``--model FFCNN --alg BP``). Its layers are

    s_0 = sigma(Pool(W_0 * x + b_0)),  s_i = sigma(Pool(W_i * s_{i-1} + b_i)),  s_i = sigma(W_i s_{i-1} + b_i)

(conv layers, then fc layers; with ``softmax`` the last fc layer is the readout): the fixed point
of P_CNN's dynamics with the top-down terms removed. Its ``phi_grad_states`` gives each layer its
bottom-up drive only, so the ordinary relaxation (``dynamics.relax``) needs no special case: layer
i depends on layer i - 1 alone and is exact after i + 1 synchronous steps from any starting
states, and any relaxation of at least ``n_states`` steps returns the feed-forward pass itself,
with its gradient back to the pixels. Evaluation and the attacks (``EquilibriumPredictor``) thus
run it like the other models; the flags ask for --T1 (and --predict-step, --attack-step) of at
least the number of layers, which is all the pass needs. Training uses ``forward_states`` (one
pass, ``bp_grads``).

There is no energy: ``phi`` and the EP update are refused, so EP, BPTT and the GDU check cannot
be run on it by mistake.
"""

from __future__ import annotations

import torch

from .learning import Estimate, _params, _write_grads
from .networks import EnergyNet


class FF_CNN(EnergyNet):
    """P_CNN's architecture (same constructor arguments) as a feed-forward network."""

    def forward_states(self, drive: torch.Tensor, like: list[torch.Tensor] | None = None
                       ) -> list[torch.Tensor]:
        """The layers' values after one bottom-up pass from ``drive`` = ``input_drive(x)``, one
        (batch, *shape) tensor per layer of neurons. ``like``: states whose dtypes the result
        keeps (under bf16 autocast the states stay fp32, as the relaxation keeps them)."""
        states = [self.act(drive)]
        for i in range(1, self.n_states):
            states.append(self.act(self.bottom_up(i, states[-1])))
        if like is not None:
            states = [s.to(t.dtype) for s, t in zip(states, like)]
        return states

    def bottom_up(self, i: int, s_prev: torch.Tensor) -> torch.Tensor:
        """Synapse i >= 1 applied to the layer below: Pool(W_i * s_{i-1} + b_i) or
        W_i s_{i-1} + b_i."""
        if i < self.n_conv:
            return self._pooled_conv(i, self.synapses[i], s_prev, None)[0]
        return self.synapses[i](s_prev.flatten(1))

    def phi_grad_states(self, drive, states, beta=0.0, y=None, layers=None, memo=None):
        """What each layer receives in a feed-forward network: its bottom-up drive only (no
        top-down term, no nudge: beta and y change nothing), so that relaxing for n_states
        steps computes the feed-forward pass (module docstring)."""
        want = set(range(len(states))) if layers is None else set(layers)
        return [None if i not in want else (drive if i == 0 else self.bottom_up(i, states[i - 1]))
                for i in range(len(states))]

    def phi(self, x, states, beta=0.0, y=None):
        raise TypeError("FF_CNN is a feed-forward network: it has no energy Phi (train it with "
                        "--alg BP; EP, BPTT and the GDU check apply to the energy-based models)")

    def phi_param_grad_diff(self, *args, **kwargs):
        self.phi(None, None)


def bp_grads(net: FF_CNN, x: torch.Tensor, y: torch.Tensor) -> Estimate:
    """Ordinary backprop: the gradient of the batch-mean loss of the forward pass, written to
    ``.grad``; returns the forward pass's states (as the other estimators return the free
    equilibrium) with one step for the pass."""
    if not isinstance(net, FF_CNN):
        raise ValueError(f"BP trains a feed-forward network (FF_CNN); a {type(net).__name__} is "
                         f"trained with EP or BPTT")
    with torch.enable_grad():
        states = net.forward_states(net.input_drive(x))
        loss = net.loss_per_sample(states, y).mean()
        grads = torch.autograd.grad(loss, _params(net), allow_unused=True)
    _write_grads(net, grads)
    return Estimate([s.detach() for s in states], 1, 0)
