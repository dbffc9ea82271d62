"""EP: closed-form dynamics against the autograd-of-Phi formulation.

One EP minibatch = free phase (T1 steps) + two nudged phases (+beta, -beta; T2 steps each) +
the parameter update. The reference does what reference EP code does: at every step it builds
Phi on NCHW tensors (input drive included) and takes its gradient with autograd; for the update
it differentiates Phi at both equilibria by autograd and subtracts. Ours uses the closed-form
dPhi/ds on channels-last tensors, with the input drive computed once per minibatch and the two
nudged phases run as one batch; the update in closed form, state differences first; and
Winograd F(4x4, r x r) convolutions for 3x3 layers with 128+ channels and 5x5 layers with 32+
(--conv-algo auto, the default; the --conv-algo winograd rows time Winograd on every 3x3 and
5x5 layer against our own step with direct convolutions).

Before timing, ours (with --conv-algo auto) is checked to give the reference's parameter
gradients in float64, per tensor (to 1e-7): exact max-pool ties, which spatially constant
states create in the first steps from zero, go to the first window position on every path
(``eplcanet.energy.pool_ties``), so the Winograd rounding does not move the trajectory. The
notes give the smallest per-tensor cosine similarity of our fp32 minibatch gradient, and of the
reference's, with that float64 gradient (each tensor compared on its own: one cosine over all
tensors concatenated would let the largest layers hide the others; the reference's fp32 update,
autograd of Phi at each equilibrium, loses the lower layers' digits). Under --precision bf16
(autocast: the convolutions run directly in bfloat16, the states and the update in fp32) they
give ours against float64 too. GFLOP/s count the direct convolutions' arithmetic: with Winograd, which does fewer
multiply-adds, they are an effective throughput and can exceed the measured roof.

The alternate rows time one step of the optional --updates alternate order (even layers, then odd
layers, reusing the convolutions of the layers a half-step leaves unchanged) against our
synchronous step, over 5-step relaxations: it needs about half the steps.

The --tol row times one minibatch of the seed's CIFAR recipe (T1 250, T2 50) whose phases stop
once settled against the same minibatch with fixed steps, and gives its ratio against the
autograd-of-Phi reference with fixed steps.

The estimator rows time one training minibatch (``train_epoch`` on one minibatch: estimate, then
the optimiser's step; CEP steps after each of its T2 nudged steps) of each --alg against
symmetric EP on the same network, interleaved: the MNIST MLP recipe of run/mnist_mlp_ep.sh
(784-512-10 mysig, MSE on the output neurons, T1 30 / T2 10, beta 0.1, batch 50) and an
MNIST-size CNN 1-32-64 k5 with average pooling (hEP needs an analytic activation and no max
pooling), with every estimator the network accepts (main_fast.py's own validation decides).
Their ratio column is symmetric EP's time over the estimator's; the note gives the cost ratio.

The LCACNN minibatch adds the sparse-coding frontend: ours codes with LCAConv2D (residual form),
the reference with the explicit-Gram LCA of LCA-PyTorch, then each runs its EP minibatch. The
epoch row trains one epoch of main_fast.py's no-flag configuration on the digits with each.

    python -m benchmarks.bench_ep [--quick] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_lca import GramLCA
from benchmarks.common import Row, bench_main, time_fn, time_pair
from eplcanet.app.settings import parse_settings
from eplcanet.data import load_task, make_loader
from eplcanet.energy.conditioning import agreement
from eplcanet.energy.dynamics import relax, relax_autograd
from eplcanet.energy.lcacnn import LCA_CNN, standardise
from eplcanet.energy.learning import Phases, ep_grads, phi_param_grads_autograd
from eplcanet.energy.networks import P_CNN, EnergyNet
from eplcanet.kernels.winograd import eligible
from eplcanet.app.build import build_model, build_optimizer, phases_of
from eplcanet.app.lca import build_lca_cnn
from eplcanet.app.train import precision_context, train_epoch

# (name, in_shape, channels, kernel, padding, batch) as named in the project's issues.
CONFIGS = {
    "MNIST-size CNN 1-32-64 k5": ((1, 28, 28), [32, 64], 5, 0, 64),
    "CIFAR-size CNN 3-128-256-512-512 k3": ((3, 32, 32), [128, 256, 512, 512], 3, 1, 16),
}
# On a GPU the CIFAR-size CNN runs at the batch its target names (128).
GPU_BATCH = {"CIFAR-size CNN 3-128-256-512-512 k3": 128}

# The LCA-RCNN of run/*_quick.sh on 32x32 colour images (codes 64x16x16).
LCACNN_FLAGS = ["--model", "LCACNN", "--channels", "32", "64", "--kernels", "3", "3",
                "--strides", "2", "1", "--paddings", "1", "1", "--pools", "iim", "--fc", "10",
                "--lca_feats", "64", "--lca_ksize", "9", "--lca_stride", "2",
                "--lca_lambda", "0.25", "--dict_training", "learn"]


def build(in_shape, channels, kernel, padding) -> P_CNN:
    n = len(channels)
    return P_CNN(in_shape, channels, [kernel] * n, [1] * n, [padding] * n, "m" * n, [10],
                 act="my_hard_sig", softmax=True, loss="cel")


def reference_net(net: EnergyNet) -> EnergyNet:
    """A copy of net with NCHW weights, as reference EP code keeps them."""
    return copy.deepcopy(net).to(memory_format=torch.contiguous_format)


def reference_ep(net: EnergyNet, x, y, phases: Phases) -> None:
    """EP minibatch with autograd of Phi at every step (NCHW, drive recomputed per step)."""
    b1, b2 = phases.betas
    x = x.contiguous()
    nchw = [s.contiguous() for s in net.init_states(x.shape[0])]
    free = relax_autograd(net, x, nchw, phases.T1, b1, y)
    plus = relax_autograd(net, x, free, phases.T2, b2, y)
    minus = relax_autograd(net, x, free, phases.T2, -b2, y)
    for p, g in zip(net.parameters(), phi_param_grads_autograd(net, x, y, minus, -b2, plus, b2)):
        p.grad = g


# ------------------------------------------------------------------------------- arithmetic
def _synapse_macs(net: EnergyNet) -> list[float]:
    """Multiply-adds per sample of each synapse's forward map (convolutions before pooling)."""
    macs = []
    c, h, w = net.in_shape if net.n_conv else (0, 0, 0)
    for syn in net.synapses:
        if isinstance(syn, torch.nn.Conv2d):
            (k0, k1), (s0, s1), (p0, p1) = syn.kernel_size, syn.stride, syn.padding
            h, w = (h + 2 * p0 - k0) // s0 + 1, (w + 2 * p1 - k1) // s1 + 1
            macs.append(syn.in_channels * syn.out_channels * k0 * k1 * h * w)
            if net.pools[len(macs) - 1] != "i":
                h, w = h // 2, w // 2
        else:
            macs.append(syn.in_features * syn.out_features)
    return macs


def step_flops(net: EnergyNet, batch: int, nudged: bool = False) -> float:
    """FLOPs of one closed-form relaxation step: every synapse above the input runs forward
    (bottom-up) and transposed (top-down); the input drive is not recomputed; the readout runs
    only when the output is nudged (logits and their gradient)."""
    macs = _synapse_macs(net)
    readout = macs[-1] if net.softmax else 0.0
    hidden = macs[1:-1] if net.softmax else macs[1:]
    return 2.0 * batch * (2 * sum(hidden) + (2 * readout if nudged else 0.0))


def minibatch_flops(net: EnergyNet, batch: int, phases: Phases) -> float:
    """The free phase, both nudged phases, the input drive once, and the update (Phi and its
    weight gradient at two equilibria: twice the forward arithmetic, twice)."""
    forward = 2.0 * batch * sum(_synapse_macs(net))
    nudged = 2 * phases.T2 * step_flops(net, batch, nudged=True)
    return phases.T1 * step_flops(net, batch) + nudged + forward + 2 * 2 * forward


def _winograd_layers(net: EnergyNet, states, everywhere: bool = False) -> str:
    """Which conv synapses above the input take the Winograd path in a relaxation step."""
    with torch.no_grad():
        used = [f"{net.synapses[i].in_channels}->{net.synapses[i].out_channels}"
                for i in range(1, net.n_conv)
                if eligible(net.synapses[i], states[i - 1], everywhere)]
    return " ".join(used) or "none"


def min_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The smallest per-tensor cosine similarity of gradients a with gradients b."""
    return min(v["cosine"] for v in agreement(dict(enumerate(a)), dict(enumerate(b))).values())


def _stepped(net: EnergyNet) -> EnergyNet:
    """net, its parameters marked as changed in place, as an optimizer step leaves them: what
    is cached per weight (the Winograd weight transforms) is then recomputed, as in training."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.0)
    return net


def _grads(net: EnergyNet) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in net.parameters() if p.grad is not None]


def check_same_grads(net: EnergyNet, ref: EnergyNet, x, y, phases: Phases) -> list:
    """Ours and the reference give the same EP gradient, compared in float64: in float32 the
    clamps of the hard sigmoid turn last-bit differences into visible ones over many steps.
    Returns that float64 gradient, against which the float32 and bf16 ones are measured."""
    net64, ref64 = copy.deepcopy(net).double(), copy.deepcopy(ref).double()
    ep_grads(net64, x.double(), y, phases)
    reference_ep(ref64, x.double(), y, phases)
    for a, b in zip(_grads(net64), _grads(ref64)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    return _grads(net64)


# ------------------------------------------------------------------------------- rows
def minibatch_rows(quick: bool, device: str = "cpu") -> list[Row]:
    phases = Phases(T1=4 if quick else 20, T2=2 if quick else 4, betas=(0.0, 0.5), thirdphase=True)
    unit = f"minibatch (T1={phases.T1}, 2x T2={phases.T2})"
    rows = []
    for name, (in_shape, channels, kernel, padding, batch) in CONFIGS.items():
        if device != "cpu":
            batch = GPU_BATCH.get(name, batch)
        torch.manual_seed(0)
        net = build(in_shape, channels, kernel, padding).to(device)
        ref = reference_net(net)
        x = torch.rand(batch, *in_shape, device=device)
        y = torch.randint(0, 10, (batch,), device=device)

        def ours_bf16():
            with precision_context("bf16", device):
                ep_grads(_stepped(net), x, y, phases)

        exact = check_same_grads(net, ref, x, y, phases)
        reference_ep(ref, x, y, phases)
        cos_ref = min_cosine(_grads(ref), exact)
        ep_grads(net, x, y, phases)
        cos_fp32 = min_cosine(_grads(net), exact)
        ours_bf16()
        cos = min_cosine(_grads(net), exact)

        t_ours, t_ref = time_pair(lambda: ep_grads(_stepped(net), x, y, phases),
                                  lambda: reference_ep(_stepped(ref), x, y, phases),
                                  repeat=2 if quick else 3, device=device)
        t_bf16 = time_fn(ours_bf16, repeat=2 if quick else 3, device=device)
        flops = minibatch_flops(net, batch, phases)
        rows.append(Row(name=f"EP minibatch, {name}, batch {batch}", unit=unit, ours_s=t_ours,
                        ref_s=t_ref, ref_name="autograd of Phi per step, fp32", flops=flops,
                        extra={"min per-tensor gradient cosine vs float64: ours":
                               f"{cos_fp32:.4f}", "reference": f"{cos_ref:.4f}"}))
        rows.append(Row(name=f"EP minibatch, {name}, batch {batch}, --precision bf16", unit=unit,
                        ours_s=t_bf16, ref_s=t_ref, ref_name="autograd of Phi per step, fp32",
                        flops=flops, precision="bf16",
                        extra={"min per-tensor gradient cosine vs float64": f"{cos:.4f}"}))
    return rows


def step_rows(quick: bool) -> list[Row]:
    """One free relaxation step from an equilibrium-like state: the roofline number."""
    rows = []
    steps = 2 if quick else 5
    for name, (in_shape, channels, kernel, padding, batch) in CONFIGS.items():
        torch.manual_seed(0)
        net = build(in_shape, channels, kernel, padding)
        ref = reference_net(net)
        x = torch.rand(batch, *in_shape)
        direct = net.with_relaxation(conv_algo="direct")
        winograd = net.with_relaxation(conv_algo="winograd")
        with torch.no_grad():
            drive = net.input_drive(x)
            states = relax(net, drive, net.init_states(batch), 3)
            nchw = [s.contiguous() for s in states]
            t_ours, t_ref = time_pair(lambda: relax(net, drive, states, steps),
                                      lambda: relax_autograd(ref, x.contiguous(), nchw, steps),
                                      repeat=3 if quick else 5)
            t_fast, t_direct = time_pair(lambda: relax(winograd, drive, states, steps),
                                         lambda: relax(direct, drive, states, steps),
                                         repeat=3 if quick else 5)
            alternate = net.with_relaxation(update_order="alternate")
            t_alt, t_sync = time_pair(lambda: relax(alternate, drive, states, steps),
                                      lambda: relax(net, drive, states, steps),
                                      repeat=3 if quick else 5)
        rows.append(Row(name=f"EP relaxation step, {name}, batch {batch}", unit="free step",
                        ours_s=t_ours / steps, ref_s=t_ref / steps,
                        ref_name="autograd of Phi per step", flops=step_flops(net, batch)))
        rows.append(Row(name=f"EP relaxation step, --conv-algo winograd, {name}, batch {batch}",
                        unit="free step", ours_s=t_fast / steps, ref_s=t_direct / steps,
                        ref_name="our step, --conv-algo direct", flops=step_flops(net, batch),
                        extra={"Winograd layers": _winograd_layers(net, states, True),
                               "of which --conv-algo auto": _winograd_layers(net, states)}))
        rows.append(Row(name=f"EP relaxation step, --updates alternate, {name}, batch {batch}",
                        unit="free step", ours_s=t_alt / steps, ref_s=t_sync / steps,
                        ref_name="our sync step",
                        extra={"note": "about half the steps to equilibrium "
                                       "(docs/performance.md)"}))
    return rows


class _GramCodedLCACNN(LCA_CNN):
    """The reference LCACNN: codes from the explicit-Gram LCA (LCA-PyTorch's formulation)."""

    def _code(self, x):
        coder = self.coder
        gram = GramLCA(coder.dictionary.detach(), coder.stride[0], coder.lambda_, coder.tau)
        return gram(standardise(x), coder.lca_iters)


def lcacnn_row(quick: bool, device: str = "cpu") -> Row:
    args = parse_settings(LCACNN_FLAGS + ["--lca_iters", "20" if quick else "100"])
    batch, phases = 8 if quick else 32, Phases(4 if quick else 20, 2 if quick else 5, (0.0, 0.5),
                                                thirdphase=True)
    torch.manual_seed(0)
    net = build_lca_cnn(args, (3, 32, 32)).eval().to(device)  # eval: no Hebbian dictionary step
    ref = reference_net(net)
    ref.__class__ = _GramCodedLCACNN  # the same modules and weights, only the solver differs
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    def reference():
        ref.input_drive(x)  # the code, once per minibatch; Phi reuses it at every step
        reference_ep(ref, x, y, phases)

    ep_grads(net, x, y, phases)
    reference()
    # The two codes solve the same LASSO except at the image border ('same' padding crops the
    # atoms in ours, zero-pads the image in the reference), so the gradients agree closely only.
    cos = min_cosine(_grads(net), _grads(ref))
    t_ours, t_ref = time_pair(lambda: ep_grads(_stepped(net), x, y, phases),
                              reference, repeat=1 if quick else 3, device=device)
    return Row(name=f"LCACNN minibatch (LCA 64x9x9 s2 -> CNN 32-64), 32x32 RGB, batch {batch}",
               unit=f"minibatch ({args.coder.lca_iters} LCA iterations, T1={phases.T1}, "
                    f"2x T2={phases.T2})",
               ours_s=t_ours, ref_s=t_ref, ref_name="Gram LCA + autograd of Phi",
               extra={"min per-tensor gradient cosine": f"{cos:.3f}"})


# The seed README's CIFAR-10 CNN: 64-128-256-512, 3x3, pad 1, pools mmmm, T1 250, T2 50, betas
# 0 and 1, symmetric (third) phase.
SEED_CIFAR = ((3, 32, 32), [64, 128, 256, 512], 3, 1)
SEED_CIFAR_PHASES = Phases(T1=250, T2=50, betas=(0.0, 1.0), thirdphase=True)


def tol_row(quick: bool, device: str = "cpu", tol: float = 1e-6) -> Row:
    """One EP minibatch of the seed's CIFAR recipe (initial weights, zero states) with phases
    that stop when settled (--tol) against the same minibatch with fixed T1 / T2, and against
    the autograd-of-Phi reference with fixed steps; the note gives the steps --tol used and the
    per-tensor gradient cosines with the fixed-step estimate (fp32)."""
    batch = 2 if quick else (128 if device != "cpu" else 16)
    torch.manual_seed(0)
    fixed = build(*SEED_CIFAR).to(device)
    settling = fixed.with_relaxation(tol=tol)
    ref = reference_net(fixed)
    x = torch.rand(batch, *SEED_CIFAR[0], device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    phases = SEED_CIFAR_PHASES
    est = ep_grads(settling, x, y, phases)
    ep_grads(fixed, x, y, phases)
    cos = min_cosine(_grads(settling), _grads(fixed))
    repeat = 1 if quick else 3
    t_tol, t_fixed = time_pair(lambda: ep_grads(_stepped(settling), x, y, phases),
                               lambda: ep_grads(_stepped(fixed), x, y, phases),
                               repeat=repeat, warmup=0, device=device)
    t_ref = time_fn(lambda: reference_ep(_stepped(ref), x, y, phases), repeat=repeat, warmup=0,
                    device=device)
    return Row(name=f"EP minibatch, seed CIFAR recipe 3-64-128-256-512 k3, batch {batch}, "
                    f"--tol {tol:g}",
               unit=f"minibatch (T1<={phases.T1}, 2x T2<={phases.T2})", ours_s=t_tol,
               ref_s=t_fixed, ref_name="our minibatch, fixed T1 / T2",
               extra={"steps used (free, nudged)": f"{est.free_steps}, {est.nudged_steps}",
                      "ratio vs autograd of Phi per step, fixed steps": f"{t_ref / t_tol:.2f}",
                      "min per-tensor gradient cosine vs fixed steps": f"{cos:.6f}"})


def _digits_epoch(net: EnergyNet, opt, loader, phases: Phases, step) -> None:
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        step(net, x, y, phases)
        opt.step()


def epoch_row(quick: bool) -> Row:
    """One training epoch of `python main_fast.py` (no flags) on the digits."""
    args = parse_settings([])
    splits = load_task(args.data.task, seed=args.run.seed)
    if quick:
        splits.train = torch.utils.data.Subset(splits.train, range(256))
    in_shape = (splits.in_channels, splits.image_size, splits.image_size)
    torch.manual_seed(args.run.seed)
    net = build_model(args, in_shape, splits.n_classes)
    ref = reference_net(net)
    opt, _ = build_optimizer(args, net)
    ref_opt, _ = build_optimizer(args, ref)
    phases = phases_of(args)

    def ours():
        train_epoch(net, opt, make_loader(splits.train, args.optim.mbs, True, args.run.seed),
                    args.estimator.alg,
                    phases, "cpu", desc="bench")

    def reference():
        _digits_epoch(ref, ref_opt, make_loader(splits.train, args.optim.mbs, True, args.run.seed),
                      phases, reference_ep)

    t_ours, t_ref = time_pair(ours, reference, repeat=1, warmup=0)
    return Row(name=f"end-to-end training epoch, main_fast.py defaults on the digits "
                    f"({len(splits.train)} images, batch {args.optim.mbs})", unit="epoch",
               ours_s=t_ours, ref_s=t_ref, ref_name="autograd of Phi per step")


# One training minibatch of each estimator against symmetric EP (the reference of the ratios). The
# MLP is run/mnist_mlp_ep.sh's recipe; the CNN pools by averaging and keeps mysig so that hEP is
# defined on it too. Flags as main_fast.py takes them: its validation decides what a net accepts.
ESTIMATOR_NETS = {
    "MNIST MLP 784-512-10 (run/mnist_mlp_ep.sh)": [
        "--model", "MLP", "--archi", "784", "512", "10", "--lrs", "0.08", "0.04"],
    "MNIST-size CNN 1-32-64 k5, pools aa": [
        "--model", "CNN", "--channels", "32", "64", "--kernels", "5", "5", "--strides", "1", "1",
        "--paddings", "0", "0", "--pools", "aa", "--fc", "10", "--lrs", "0.05", "0.05", "0.05"],
}
ESTIMATOR_FLAGS = ["--act", "mysig", "--loss", "mse", "--no-softmax", "--betas", "0.0", "0.1",
                   "--optim", "sgd", "--mmt", "0"]
REFERENCE_ESTIMATOR = "symmetric EP"
# name: (flags, what one training minibatch of it runs)
ESTIMATORS = {
    "one-sided EP": (["--alg", "EP", "--no-thirdphase"],
                     "T1 free steps, T2 nudged at +beta, one SGD step"),
    REFERENCE_ESTIMATOR: (["--alg", "EP", "--thirdphase"],
                          "T1 free steps, T2 nudged at +beta and at -beta (one batch of 2B), "
                          "one SGD step"),
    "hEP N=4": (["--alg", "hEP", "--hep-points", "4"],
                "T1 free steps, T2 nudged at 4 points of the circle of radius beta2 (+r and -r "
                "real as one batch, 1 complex phase), one SGD step"),
    "hEP N=8": (["--alg", "hEP", "--hep-points", "8"],
                "T1 free steps, T2 nudged at 8 points of the circle (+r and -r real, 3 complex "
                "phases), one SGD step"),
    "CEP": (["--alg", "CEP", "--no-thirdphase"],
            "T1 free steps, T2 nudged at +beta with an SGD step after each (T2 weight updates, "
            "the input drive recomputed per step)"),
    "BPTT": (["--alg", "BPTT"],
             "T1 - T2 free steps, T2 more under autograd, backward, one SGD step"),
}


def minibatch_trainer(argv: list[str], x: torch.Tensor, y: torch.Tensor):
    """(net, train): the network main_fast.py builds from `argv` and a function training it on
    the minibatch (x, y) through ``train_epoch``, as training does; or, for flags main_fast.py
    refuses (an estimator the network cannot run), its one-line error."""
    try:
        args = parse_settings(argv)
    except SystemExit as refused:
        return str(refused)
    torch.manual_seed(0)
    net = build_model(args, tuple(x.shape[1:]), 10)
    opt, _ = build_optimizer(args, net)
    phases = phases_of(args)

    def train() -> None:
        train_epoch(net, opt, [(x, y)], args.estimator.alg, phases, "cpu",
                    desc=args.estimator.alg)

    return net, train


def _repeated(fn, calls: int):
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def estimator_rows(quick: bool) -> list[Row]:
    """Per network, one row per estimator it accepts: its training-minibatch time against
    symmetric EP's, the two interleaved (``time_pair``); the symmetric row gives the reference's
    median time and names the estimators refused."""
    t1, t2, batch = (4, 2, 8) if quick else (30, 10, 50)
    repeat = 2 if quick else 15
    steps = ["--T1", str(t1), "--T2", str(t2), "--mbs", str(batch)]
    unit = f"training minibatch (T1={t1}, T2={t2}, batch {batch})"
    rows = []
    for net_name, net_flags in ESTIMATOR_NETS.items():
        torch.manual_seed(0)
        x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        built = {name: minibatch_trainer(net_flags + ESTIMATOR_FLAGS + steps + flags, x, y)
                 for name, (flags, _) in ESTIMATORS.items()}
        refused = {name: b.split(";")[0] for name, b in built.items() if isinstance(b, str)}
        _, reference = built[REFERENCE_ESTIMATOR]
        # A timed sample is `calls` minibatches, at least ~0.1 s: an MLP minibatch of ~10 ms is
        # otherwise at the mercy of the scheduler of a shared CPU (timings 1.5x apart).
        calls = 1 if quick else max(1, round(0.1 / time_fn(reference, repeat=3)))
        ref_times, timed = [], []
        for name, b in built.items():
            if name == REFERENCE_ESTIMATOR or name in refused:
                continue
            t, t_ref = (s / calls for s in time_pair(_repeated(b[1], calls),
                                                     _repeated(reference, calls), repeat=repeat))
            ref_times.append(t_ref)
            timed.append(Row(name=f"{name} vs symmetric EP, {net_name}", unit=unit, ours_s=t,
                             ref_s=t_ref, ref_name=REFERENCE_ESTIMATOR,
                             extra={"cost vs symmetric EP": f"{t / t_ref:.2f}x",
                                    "compared": ESTIMATORS[name][1]}))
        extra = {"compared": ESTIMATORS[REFERENCE_ESTIMATOR][1],
                 "time": "median of its runs in the rows below",
                 "minibatches per timed sample": calls}
        if refused:
            extra["not accepted"] = " / ".join(f"{n} ({m})" for n, m in refused.items())
        rows.append(Row(name=f"{REFERENCE_ESTIMATOR} (the reference), {net_name}", unit=unit,
                        ours_s=statistics.median(ref_times), extra=extra))
        rows += timed
    return rows


_PEAK_SCRIPT = """
import resource, sys, time, torch
from benchmarks.bench_ep import build
from eplcanet.energy.learning import Phases, ep_grads
torch.manual_seed(0)
net = build((1, 28, 28), [32, 64], 5, 0)
x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
t0 = time.perf_counter()
ep_grads(net, x, y, Phases(int(sys.argv[1]), 10, (0.0, 0.5), thirdphase=True))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0)
"""


def peak_memory_rows(t1_values=(50, 500)) -> list[Row]:
    """Peak resident memory (MiB) of one EP minibatch (MNIST-size CNN, batch 64) per T1, each in a
    fresh process: it must not grow with T1 (no autograd graph is kept across steps)."""
    root = Path(__file__).resolve().parents[1]
    peaks = {}
    for t1 in t1_values:
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(t1)], cwd=root, check=True,
                             capture_output=True, text=True).stdout.split()
        peaks[t1] = (float(out[0]), float(out[1]))
    lo, hi = t1_values
    return [Row(name=f"EP peak memory, T1={hi} vs T1={lo} (MNIST-size CNN, batch 64)",
                unit="minibatch", ours_s=peaks[hi][1],
                extra={f"peak RSS T1={t}": f"{peaks[t][0]:.0f} MiB" for t in t1_values})]


def collect(quick: bool = False, device: str = "cpu") -> list[Row]:
    """All rows on the CPU; on a GPU the minibatch rows (EP and LCACNN): the step rows time
    the CPU's convolution algorithms, and the epoch and memory rows are CPU measurements."""
    if device != "cpu":
        return minibatch_rows(quick, device) + [lcacnn_row(quick, device), tol_row(quick, device)]
    rows = step_rows(quick) + minibatch_rows(quick) + [lcacnn_row(quick), epoch_row(quick)]
    rows += [tol_row(quick)] + estimator_rows(quick)
    return rows + peak_memory_rows((20, 200) if quick else (50, 500))


if __name__ == "__main__":
    bench_main(__doc__, collect)
