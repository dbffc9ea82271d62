"""Layered energy-based networks: the primitive function Phi and its closed-form gradient.

A network has states s_0 .. s_{L-1} (one tensor per layer, batch first) driven by a fixed input x.
Synapse i maps s_{i-1} (x for i = 0) to s_i: a convolution followed by a pooling ('m' max,
'a' average, 'i' identity; 2x2, stride 2) for the first len(channels) layers, then linear layers.
The primitive function, per sample, is

    Phi(x, s; beta, y) = sum_conv <Pool(W_i * s_{i-1} + b_i), s_i> + sum_fc <W_i s_{i-1} + b_i, s_i>
                         - beta * L(output(s), y)

and the dynamics (``eplcanet.energy.dynamics``) iterate s <- sigma(dPhi/ds). dPhi/ds_i is computed
in closed form: the bottom-up term Pool(W_i * s_{i-1}) plus the top-down term from s_{i+1}, a
transposed convolution of s_{i+1} unpooled with the max-pool indices of the bottom-up pass
(or W^T s_{i+1} for linear synapses). No autograd graph is built per step. Phi itself is used with
autograd only once per phase, for the parameter gradients of the EP estimator.

With ``softmax=True`` the last linear synapse is a readout, not a layer of neurons: the output is
softmax(W s_{L-1} + b) and the nudge acts on the penultimate layer through W.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation
from .dynamics import Relaxation
from .pool_ties import first_identical
from ..kernels.winograd import WinogradConvs, eligible, weight_grad_eligible

POOLS = ("m", "a", "i")
LOSSES = ("mse", "cel")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _fast_layout(t: torch.Tensor) -> torch.Tensor:
    """channels_last for 4D tensors: convolutions (and their adjoints) run about twice as fast in
    it on CPU (oneDNN) and use tensor cores without layout changes on GPU."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _nudged(beta) -> bool:
    return isinstance(beta, torch.Tensor) or beta != 0.0


def _per_sample(beta, like: torch.Tensor):
    """beta as a scalar, or a (batch,) tensor broadcast over a state's non-batch dimensions."""
    if isinstance(beta, torch.Tensor):
        return beta.view(-1, *([1] * (like.dim() - 1)))
    return beta


def _by_parts(linear, t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A real linear map applied to complex t (the states of holomorphic EP, whose parameters
    stay real): linear(Re t) + i linear(Im t), both parts in one call stacked along the batch,
    with `bias` (one per channel, dim 1) added to the real part only, so that it is the affine
    map's holomorphic extension. The convolutions, pools and matmuls do not take complex
    tensors with real weights, and casting the weights to complex would double the flops."""
    n = t.shape[0]
    both = linear(torch.cat([t.real, t.imag]))
    re, im = both[:n], both[n:]
    if bias is not None:
        re = re + bias.view(-1, *([1] * (re.dim() - 2)))
    return torch.complex(re, im)


def _softmax(z: torch.Tensor) -> torch.Tensor:
    """softmax over dim 1, and its holomorphic extension for complex z (torch has no complex
    softmax); shifting by the largest real part keeps exp in range and changes nothing."""
    if not z.is_complex():
        return F.softmax(z, dim=1)
    e = torch.exp(z - z.real.amax(1, keepdim=True))
    return e / e.sum(1, keepdim=True)


def scaled_init_(module: nn.Module, scale: float | None) -> None:
    """PyTorch's default init of conv/linear layers, multiplied by `scale` (the seed's --scale)."""
    if scale is None:
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.mul_(scale)


class EnergyNet(nn.Module):
    """A layered Hopfield-like network (convolutional layers, then fully connected layers).

    Args:
        in_shape: input shape without batch, (C, H, W) for conv nets or (D,) for MLPs.
        channels: output channels of the conv synapses (empty for an MLP).
        kernels, strides, paddings: one per conv synapse.
        pools: one character per conv synapse among 'm', 'a', 'i'.
        fc: output sizes of the linear synapses; the last one is the number of classes.
        act: activation name (see ``activations.ACTIVATIONS``).
        softmax: the last linear synapse is a softmax readout instead of a neuron layer.
        loss: 'mse' (0.5 ||out - onehot||^2) or 'cel' (cross-entropy on the logits).
        scale: multiplies the default initialisation (None keeps it).
        relaxation: how the states relax (update order, convolution algorithm); default
            ``Relaxation()``. Fixed for the network's life: ``with_relaxation`` makes a copy
            that relaxes differently.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        channels: list[int],
        kernels: list[int],
        strides: list[int],
        paddings: list[int],
        pools: str,
        fc: list[int],
        act: str = "mysig",
        softmax: bool = False,
        loss: str = "mse",
        scale: float | None = None,
        relaxation: Relaxation | None = None,
    ) -> None:
        super().__init__()
        relaxation = Relaxation() if relaxation is None else relaxation
        if not isinstance(relaxation, Relaxation):
            raise TypeError(f"relaxation must be a Relaxation, got {type(relaxation).__name__}")
        n_conv = len(channels)
        for name, val in (("kernels", kernels), ("strides", strides), ("paddings", paddings)):
            if len(val) != n_conv:
                raise ValueError(f"{name} needs one value per conv layer ({n_conv}), got {val}")
        if len(pools) != n_conv or any(p not in POOLS for p in pools):
            raise ValueError(
                f"pools must have one of 'm', 'a', 'i' per conv layer ({n_conv}), got {pools!r}"
            )
        if not fc:
            raise ValueError("fc must name at least the output layer size (e.g. --fc 10)")
        if softmax and len(fc) + n_conv < 2:
            raise ValueError("softmax needs a layer of neurons before the readout")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; accepted: {', '.join(LOSSES)}")
        if n_conv and len(in_shape) != 3:
            raise ValueError(f"a conv net needs a (C, H, W) input shape, got {in_shape}")
        self.in_shape = tuple(in_shape)
        self.pools = pools
        self.act_name = act
        self.act = get_activation(act)
        self.softmax = softmax
        self.loss = loss
        self.n_classes = fc[-1]
        self.n_conv = n_conv

        synapses: list[nn.Module] = []
        shapes: list[tuple[int, ...]] = []
        if n_conv:
            c, h, w = in_shape
            for c_out, k, s, p, pool in zip(channels, kernels, strides, paddings, pools):
                synapses.append(nn.Conv2d(c, c_out, k, s, p))
                h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
                if pool != "i":
                    h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise ValueError(
                        f"conv layer {len(shapes)} leaves no spatial extent for input {in_shape}: "
                        "use fewer pools, smaller strides or more padding"
                    )
                c = c_out
                shapes.append((c_out, h, w))
            d = c * h * w
        else:
            d = math.prod(in_shape)
        for n_out in fc:
            synapses.append(nn.Linear(d, n_out))
            shapes.append((n_out,))
            d = n_out
        self.synapses = nn.ModuleList(synapses)
        # The readout is a synapse without a layer of neurons behind it.
        self.state_shapes = shapes[:-1] if softmax else shapes
        scaled_init_(self, scale)
        # Conv weights in the states' layout: oneDNN would otherwise reorder them at every call.
        self.to(memory_format=torch.channels_last)
        self._relaxation = relaxation
        self._winograd = WinogradConvs()

    @property
    def relaxation(self) -> Relaxation:
        """The settings this network relaxes with (``eplcanet.energy.dynamics.Relaxation``)."""
        return self._relaxation

    def with_relaxation(self, **changes) -> EnergyNet:
        """A copy of this network (its own copy of the weights) relaxing with the given fields
        of ``Relaxation`` changed, e.g. ``net.with_relaxation(conv_algo='direct')``."""
        other = copy.deepcopy(self)
        other._relaxation = dataclasses.replace(self._relaxation, **changes)
        return other

    def _fast(self, conv: nn.Conv2d, x: torch.Tensor, test=eligible) -> bool:
        """Whether conv at x takes the Winograd path under conv_algo; `test`: eligible (the
        convolution and its adjoint) or weight_grad_eligible."""
        algo = self._relaxation.conv_algo
        return algo != "direct" and test(conv, x, algo == "winograd")

    # ----------------------------------------------------------------------------- states
    @property
    def n_states(self) -> int:
        return len(self.state_shapes)

    def init_states(self, batch: int, device=None, dtype=None) -> list[torch.Tensor]:
        """Zero states, one (batch, *shape) tensor per layer (conv layers in channels_last)."""
        p = self.synapses[0].weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        return [_fast_layout(torch.zeros(batch, *s, device=device, dtype=dtype))
                for s in self.state_shapes]

    # ----------------------------------------------------------------------------- pieces
    def _pool(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        kind = self.pools[i]
        if kind == "m":
            if h.is_complex():
                raise ValueError("max pooling is not holomorphic: complex states need pools "
                                 "'a' (average) or 'i' (none)")
            return F.max_pool2d(h, 2, 2, return_indices=True)
        if kind == "a":
            if h.is_complex():
                return _by_parts(lambda p: F.avg_pool2d(p, 2, 2), h), None
            return F.avg_pool2d(h, 2, 2), None
        return h, None

    def _unpool(self, i: int, s: torch.Tensor, idx, h_shape) -> torch.Tensor:
        """The adjoint of synapse i's pooling, applied to s (of the pooled shape)."""
        kind = self.pools[i]
        if s.is_complex() and kind == "a":
            return _by_parts(lambda p: self._unpool(i, p, idx, h_shape), s)
        if kind == "m":
            return F.max_unpool2d(s, idx, 2, 2, output_size=h_shape[-2:])
        if kind == "a":
            up = F.interpolate(s, scale_factor=2, mode="nearest") * 0.25
            dh, dw = h_shape[-2] - up.shape[-2], h_shape[-1] - up.shape[-1]
            return F.pad(up, (0, dw, 0, dh)) if dh or dw else up
        return s

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """conv(x) in a relaxation step; for complex x (holomorphic EP) the direct convolution of
        each part, since the Winograd kernels add the bias to both."""
        if x.is_complex():
            return _by_parts(lambda p: F.conv2d(p, conv.weight, None, conv.stride, conv.padding,
                                                conv.dilation, conv.groups), x, conv.bias)
        return self._winograd.forward(conv, x) if self._fast(conv, x) else conv(x)

    def _conv_weight_grad(self, conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor):
        """The gradient of sum(conv(x) * g) with respect to conv's weight."""
        if x.is_complex():  # bilinear: (xr + i xi, gr + i gi), as two real calls on 2x the batch
            re = self._conv_weight_grad(conv, torch.cat([x.real, x.imag]),
                                        torch.cat([g.real, -g.imag]))
            im = self._conv_weight_grad(conv, torch.cat([x.real, x.imag]),
                                        torch.cat([g.imag, g.real]))
            return torch.complex(re, im)
        if self._fast(conv, x, weight_grad_eligible):
            return self._winograd.weight_grad(conv, x, g)
        return torch.nn.grad.conv2d_weight(x, conv.weight.shape, g, conv.stride, conv.padding,
                                           conv.dilation, conv.groups)

    def _conv_t(self, g: torch.Tensor, conv: nn.Conv2d, out_hw) -> torch.Tensor:
        """The adjoint of `conv` (without bias) applied to g, sized to out_hw."""
        if g.is_complex():
            return _by_parts(lambda p: self._conv_t(p, conv, out_hw), g)
        if self._fast(conv, g):
            return self._winograd.adjoint(conv, g, out_hw)
        k, s, p = conv.kernel_size, conv.stride, conv.padding
        op = [out_hw[d] - ((g.shape[2 + d] - 1) * s[d] - 2 * p[d] + k[d]) for d in range(2)]
        return F.conv_transpose2d(g, conv.weight, None, s, p, tuple(op))

    def input_drive(self, x: torch.Tensor) -> torch.Tensor:
        """Bottom-up drive of the first layer, Pool(W_0 * x + b_0): constant during relaxation."""
        if self.n_conv:
            # With one input channel the conv cannot infer channels_last from x: set it on the
            # drive, or the states it is added to fall back to NCHW after the first step.
            return _fast_layout(self._pool(0, self.synapses[0](_fast_layout(x)))[0])
        return self.synapses[0](x.flatten(1))

    def _pooled_conv(self, i: int, conv: nn.Conv2d, s_prev: torch.Tensor, memo: dict | None):
        """(Pool(conv(s_prev)), its max-pool indices, conv(s_prev)'s shape) for synapse i; taken
        from `memo` when it holds them for this very tensor, unchanged since (see
        ``dynamics.relax``), and stored there otherwise."""
        if memo is not None:
            hit = memo.get(conv)
            if hit is not None and hit[0] is s_prev and hit[1] == s_prev._version:
                return hit[2]
        h = self._conv(conv, s_prev)
        pooled, idx = self._pool(i, h)
        if idx is not None:  # exact ties go to the first position, whatever h's rounding
            idx = first_identical(idx, s_prev, conv, h.shape[-2:])
        out = (pooled, idx, h.shape)
        if memo is not None:
            memo[conv] = (s_prev, s_prev._version, out)
        return out

    def _conv_synapse(self, i: int, s_prev: torch.Tensor, s_i: torch.Tensor,
                      up: bool = True, down: bool = True, memo: dict | None = None):
        """(bottom-up drive of s_i, top-down drive of s_prev) through conv synapse i >= 1; either
        is None when not asked for (the convolution is still needed for the max-pool indices).
        `memo`: see _pooled_conv."""
        conv = self.synapses[i]
        pooled, idx, h_shape = self._pooled_conv(i, conv, s_prev, memo)
        top_down = None
        if down:
            top_down = self._conv_t(self._unpool(i, s_i, idx, h_shape), conv, s_prev.shape[-2:])
        return (pooled if up else None), top_down

    def _fc_feedback_weight(self, i: int) -> torch.Tensor:
        return self.synapses[i].weight

    @staticmethod
    def _linear(lin: nn.Linear, p: torch.Tensor) -> torch.Tensor:
        """lin(p), and its holomorphic extension for complex p."""
        if p.is_complex():
            return _by_parts(lambda q: F.linear(q, lin.weight), p, lin.bias)
        return lin(p)

    @staticmethod
    def _matmul(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """s @ w for a real weight w and real or complex s."""
        return _by_parts(lambda q: q @ w, s) if s.is_complex() else s @ w

    def output(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Logits (softmax readout) or the output layer's state, (batch, n_classes)."""
        if self.softmax:
            return self._linear(self.synapses[-1], states[-1].flatten(1))
        return states[-1]

    def loss_per_sample(self, states: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """L(output(s), y) per sample, (batch,)."""
        out = self.output(states)
        if self.loss == "cel":
            return F.cross_entropy(out, y, reduction="none")
        p = F.softmax(out, dim=1) if self.softmax else out
        return 0.5 * (p - F.one_hot(y, self.n_classes).to(p.dtype)).pow(2).sum(1)

    def _output_grad(self, states: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """dL/d(output) per sample in closed form: with respect to the logits of the softmax
        readout, or to the last state."""
        out = self.output(states)
        target = F.one_hot(y, self.n_classes).to(out.dtype)
        if self.loss == "cel":
            return _softmax(out) - target
        if self.softmax:
            p = _softmax(out)
            e = p - target
            return p * (e - (p * e).sum(1, keepdim=True))  # softmax Jacobian applied to e
        return out - target

    def _loss_grad(self, states: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """dL/ds_{L-1} per sample in closed form, shaped like the last state."""
        g = self._output_grad(states, y)
        if self.softmax:
            return self._matmul(g, self.synapses[-1].weight).view_as(states[-1])
        return g

    # ----------------------------------------------------------------------------- energy
    def phi(
        self,
        x: torch.Tensor,
        states: list[torch.Tensor],
        beta: float = 0.0,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The primitive function Phi per sample, (batch,). Differentiable in states and params."""
        total = x.new_zeros(x.shape[0])
        for i, s_i in enumerate(states):
            inp = x if i == 0 else states[i - 1]
            if i < self.n_conv:
                drive = self._pool(i, self.synapses[i](inp))[0]
            else:
                drive = self.synapses[i](inp.flatten(1))
            total = total + (drive * s_i).flatten(1).sum(1)
        if _nudged(beta):
            total = total - beta * self.loss_per_sample(states, y)
        return total

    def phi_grad_states(
        self,
        drive: torch.Tensor | None,
        states: list[torch.Tensor],
        beta: float | torch.Tensor = 0.0,
        y: torch.Tensor | None = None,
        layers: set[int] | None = None,
        memo: dict | None = None,
    ) -> list[torch.Tensor | None]:
        """dPhi/ds_i for every layer, in closed form; `drive` is ``input_drive(x)``.

        beta may be a (batch,) tensor: one nudging strength per sample (the +beta and -beta
        phases then run as one batch). `layers`: the layers whose gradient is wanted (None: all);
        the others come back as None and only the synapses the wanted ones need are evaluated
        (the alternating update order updates even, then odd layers). `memo`: a dict kept
        across calls, in which the pooled convolutions of states that have not changed since
        are found again (the alternating order needs each twice).
        """
        n = len(states)
        want = set(range(n)) if layers is None else set(layers)
        ups: list[torch.Tensor | None] = [drive] + [None] * (n - 1)
        downs: list[torch.Tensor | None] = [None] * n
        for i in range(1, n):
            need_up, need_down = i in want, i - 1 in want
            if not (need_up or need_down):
                continue
            s_prev = states[i - 1]
            if i < self.n_conv:
                ups[i], downs[i - 1] = self._conv_synapse(i, s_prev, states[i], need_up, need_down,
                                                          memo)
                continue
            if need_up:
                ups[i] = self._linear(self.synapses[i], s_prev.flatten(1))
            if need_down:
                downs[i - 1] = self._matmul(states[i], self._fc_feedback_weight(i)).view_as(s_prev)
        if _nudged(beta) and n - 1 in want:
            g = self._loss_grad(states, y)
            nudge = -_per_sample(beta, g) * g
            downs[-1] = nudge if downs[-1] is None else downs[-1] + nudge
        return [None if i not in want else (u if d is None else u + d)
                for i, (u, d) in enumerate(zip(ups, downs))]

    # ----------------------------------------------------------------------------- update
    def phi_param_grad_diff(self, x: torch.Tensor, y: torch.Tensor, states_a: list[torch.Tensor],
                            beta_a: float, states_b: list[torch.Tensor],
                            beta_b: float) -> dict[nn.Parameter, torch.Tensor]:
        """dPhi/dtheta(x, s_b; beta_b) - dPhi/dtheta(x, s_a; beta_a), batch mean, per parameter
        that Phi depends on, in closed form (no autograd graph).

        Differences first: each synapse's term is bilinear in its input and output layers, so
        the difference is written with the state differences s_b - s_a, which subtracting two
        close floats gives exactly. Differentiating Phi at each state and subtracting the two
        gradients instead (what autograd of Phi does) cancels all but a few digits in the lower
        layers, where the nudge arrives weakest: in float32 the first layer's estimate of the
        CIFAR-size CNN came out 37% off its float64 value that way (docs/performance.md).
        """
        sums = self._synapse_grad_diffs(x, x, states_a, states_b, beta_a, beta_b, y)
        n = x.shape[0]
        return {p: g / n for p, g in sums.items()}

    def _synapse_grad_diffs(self, in_a, in_b, sa, sb, beta_a, beta_b, y) -> dict:
        """Batch sums of the differences for every synapse; in_a and in_b feed synapse 0."""
        out: dict[nn.Parameter, torch.Tensor] = {}
        for i, syn in enumerate(self.synapses):
            pa, pb = (in_a, in_b) if i == 0 else (sa[i - 1], sb[i - 1])
            if i < self.n_conv:
                self._conv_grad_diff(out, i, syn, pa, pb, sa[i], sb[i])
            elif i < len(sa):
                self._linear_grad_diff(out, syn, pa.flatten(1), pb.flatten(1), sa[i], sb[i])
            else:  # the softmax readout: Phi holds it only through -beta * L
                ga = -beta_a * self._output_grad(sa, y)
                gb = -beta_b * self._output_grad(sb, y)
                pa, pb = pa.flatten(1), pb.flatten(1)
                out[syn.weight] = torch.cat([gb, -ga]).T @ torch.cat([pb, pa])
                out[syn.bias] = (gb - ga).sum(0)
        return out

    def _conv_grad_diff(self, out: dict, i: int, conv: nn.Conv2d, pa, pb, sa, sb) -> None:
        """<Pool(conv(p)), s>: gradient corr(p, Unpool(s)) (max-pool indices of conv(p)), so the
        difference is corr(p_b - p_a, U_b(s_b)) + corr(p_a, U_b(s_b) - U_a(s_a))."""
        _, idx_a, h_shape = self._pooled_conv(i, conv, pa, None)
        if pa is pb:  # the same pooling indices: unpool the state difference once
            du = self._unpool(i, sb - sa, idx_a, h_shape)
            inp, grad = pa, du
        else:
            _, idx_b, _ = self._pooled_conv(i, conv, pb, None)
            ub = self._unpool(i, sb, idx_b, h_shape)
            du = ub - self._unpool(i, sa, idx_a, h_shape)
            inp, grad = torch.cat([pb - pa, pa]), torch.cat([ub, du])
        out[conv.weight] = self._conv_weight_grad(conv, inp, grad)
        if conv.bias is not None:
            out[conv.bias] = du.sum((0, 2, 3))

    @staticmethod
    def _linear_grad_diff(out: dict, lin: nn.Linear, pa, pb, sa, sb) -> None:
        """<W p + b, s>: gradient s^T p, so the difference is
        (s_b - s_a)^T p_b + s_a^T (p_b - p_a)."""
        ds = sb - sa
        out[lin.weight] = torch.cat([ds, sa]).T @ torch.cat([pb, pb - pa])
        if lin.bias is not None:
            out[lin.bias] = ds.sum(0)

    def predict(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Predicted class per sample, (batch,)."""
        return self.output(states).argmax(1)

    def synapse_groups(self) -> list[list[nn.Parameter]]:
        """Parameters grouped per synapse (for the layer-wise --lrs / --wds)."""
        return [list(s.parameters()) for s in self.synapses]

    def on_nudged(self, x: torch.Tensor, states: list[torch.Tensor], beta: float) -> None:
        """Hook: the EP estimator passes the equilibrium of its beta2 phase here, before the
        parameter update, for learning outside Phi's gradient (LCA_CNN's Hebbian dictionary
        update). Does nothing for the plain networks."""


def _mlp_layers(archi: list[int]) -> tuple:
    """EnergyNet's positional layer arguments for an MLP of sizes `archi` (no conv layers)."""
    if len(archi) < 2:
        raise ValueError(f"archi needs an input size and at least one layer, got {archi}")
    return (archi[0],), [], [], [], [], "", list(archi[1:])


class P_MLP(EnergyNet):
    """Fully connected EP network; `archi` = [input size, hidden sizes..., n_classes]."""

    def __init__(self, archi: list[int], act: str = "mysig", softmax: bool = False,
                 loss: str = "mse", scale: float | None = None,
                 relaxation: Relaxation | None = None) -> None:
        super().__init__(*_mlp_layers(archi), act, softmax, loss, scale, relaxation)


class P_CNN(EnergyNet):
    """Convolutional EP network with symmetric (tied) forward and feedback weights."""


class VF_CNN(EnergyNet):
    """Convolutional network with separate feedback weights B (a vector field, not a gradient).

    Layer i-1 receives top-down input through its own feedback synapse B_i: the transposed
    convolution of s_i unpooled at the max positions of Pool(B_i * s_{i-1}). Its energy-like
    function is Phi plus, for every synapse i >= 1, <Pool(B_i * s_{i-1}), s_i>; the EP estimator
    applied to it updates W from the forward terms and B from the feedback terms, or gives B
    W's update when `same_update` is set.
    """

    def __init__(self, *args, same_update: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.same_update = same_update
        n_fb = self.n_states  # synapses 1 .. n_states-1 have feedback; index 0 is unused
        feedback: list[nn.Module] = [nn.Identity()]
        for i in range(1, n_fb):
            src = self.synapses[i]
            if isinstance(src, nn.Conv2d):
                fb = nn.Conv2d(src.in_channels, src.out_channels, src.kernel_size, src.stride,
                               src.padding, bias=False)
            else:
                fb = nn.Linear(src.in_features, src.out_features, bias=False)
            feedback.append(fb)
        self.feedback = nn.ModuleList(feedback)
        scale = kwargs.get("scale")
        scaled_init_(self.feedback, scale)
        self.feedback.to(memory_format=torch.channels_last)

    def _conv_synapse(self, i: int, s_prev: torch.Tensor, s_i: torch.Tensor,
                      up: bool = True, down: bool = True, memo: dict | None = None):
        conv, fb = self.synapses[i], self.feedback[i]
        pooled = self._pooled_conv(i, conv, s_prev, memo)[0] if up else None
        top_down = None
        if down:
            _, idx, h_shape = self._pooled_conv(i, fb, s_prev, memo)
            top_down = self._conv_t(self._unpool(i, s_i, idx, h_shape), fb, s_prev.shape[-2:])
        return pooled, top_down

    def _fc_feedback_weight(self, i: int) -> torch.Tensor:
        return self.feedback[i].weight

    def phi(self, x, states, beta=0.0, y=None):
        total = super().phi(x, states, beta, y)
        for i in range(1, len(states)):
            fb, s_prev = self.feedback[i], states[i - 1]
            if i < self.n_conv:
                drive = self._pool(i, fb(s_prev))[0]
            else:
                drive = fb(s_prev.flatten(1))
            total = total + (drive * states[i]).flatten(1).sum(1)
        return total

    def _synapse_grad_diffs(self, in_a, in_b, sa, sb, beta_a, beta_b, y) -> dict:
        out = super()._synapse_grad_diffs(in_a, in_b, sa, sb, beta_a, beta_b, y)
        for i in range(1, len(sa)):  # the feedback terms <Pool(B_i * s_{i-1}), s_i>
            fb = self.feedback[i]
            if i < self.n_conv:
                self._conv_grad_diff(out, i, fb, sa[i - 1], sb[i - 1], sa[i], sb[i])
            else:
                self._linear_grad_diff(out, fb, sa[i - 1].flatten(1), sb[i - 1].flatten(1),
                                       sa[i], sb[i])
        return out

    def synapse_groups(self) -> list[list[nn.Parameter]]:
        groups = super().synapse_groups()
        for i in range(1, len(self.feedback)):
            groups[i] = groups[i] + list(self.feedback[i].parameters())
        return groups

    @torch.no_grad()
    def angles(self) -> dict[int, float]:
        """Angle in degrees between forward and feedback weights, per synapse with feedback."""
        out = {}
        for i in range(1, len(self.feedback)):
            w, b = self.synapses[i].weight.flatten(), self.feedback[i].weight.flatten()
            cos = (w @ b) / (w.norm() * b.norm()).clamp_min(1e-30)
            out[i] = math.degrees(math.acos(float(cos.clamp(-1, 1))))
        return out


class VF_MLP(VF_CNN):
    """Fully connected vector-field network: P_MLP's layers with separate feedback weights.

    `archi` = [input size, hidden sizes..., n_classes]. Layer i relaxes as

        s_i <- sigma(W_i s_{i-1} + b_i + B_{i+1}^T s_{i+1})   (- beta dL/ds_i at the output),

    where B_{i+1} (no bias) has W_{i+1}'s shape and is its own parameter, so the dynamics are a
    vector field with no energy unless B = W (then they are P_MLP's). It is VF_CNN without conv
    layers: the same feedback synapses, the same EP update (W_i and B_i both get the batch mean of
    -(s_i s_{i-1}^T at beta2 - at beta1) / (beta2 - beta1), b_i its state difference) and the
    same `same_update` switch; for linear synapses both terms have the same gradient, so
    `same_update` gives B the update it would get anyway (it matters for VF_CNN's max pools,
    where B's pooling indices differ from W's).
    """

    def __init__(self, archi: list[int], act: str = "mysig", softmax: bool = False,
                 loss: str = "mse", scale: float | None = None,
                 relaxation: Relaxation | None = None, same_update: bool = False) -> None:
        super().__init__(*_mlp_layers(archi), act=act, softmax=softmax, loss=loss, scale=scale,
                         relaxation=relaxation, same_update=same_update)
