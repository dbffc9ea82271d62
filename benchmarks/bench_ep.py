"""EP minibatch: closed-form dynamics against the autograd-of-Phi formulation.

One EP minibatch = free phase (T1 steps) + two nudged phases (+beta, -beta; T2 steps each) +
the parameter update. The reference relaxes as reference EP code does: at every step it builds
Phi on NCHW tensors (input drive included) and takes its gradient with autograd. Ours uses the
closed-form dPhi/ds with the input drive computed once per minibatch. Both produce the same
parameter gradients, checked before timing.

    python -m benchmarks.bench_ep [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, format_rows, gemm_peak_gflops, time_pair
from eplcanet.energy.dynamics import relax_autograd
from eplcanet.energy.learning import Phases, ep_grads, phi_param_grads
from eplcanet.energy.networks import P_CNN

# (name, in_shape, channels, kernel, padding, batch) as named in the project's issues.
CONFIGS = {
    "MNIST-size CNN 1-32-64 k5": ((1, 28, 28), [32, 64], 5, 0, 64),
    "CIFAR-size CNN 3-128-256-512-512 k3": ((3, 32, 32), [128, 256, 512, 512], 3, 1, 16),
}


def build(in_shape, channels, kernel, padding) -> P_CNN:
    n = len(channels)
    return P_CNN(in_shape, channels, [kernel] * n, [1] * n, [padding] * n, "m" * n, [10],
                 act="my_hard_sig", softmax=True, loss="cel")


def reference_ep(net: P_CNN, x, y, phases: Phases) -> None:
    """EP minibatch with autograd of Phi at every step (NCHW, drive recomputed per step)."""
    b1, b2 = phases.betas
    nchw = [s.contiguous() for s in net.init_states(x.shape[0])]
    free = relax_autograd(net, x.contiguous(), nchw, phases.T1, b1, y)
    plus = relax_autograd(net, x, free, phases.T2, b2, y)
    minus = relax_autograd(net, x, free, phases.T2, -b2, y)
    for p, g in zip(net.parameters(), phi_param_grads(net, x, y, minus, -b2, plus, b2)):
        p.grad = g


def step_flops(net: P_CNN, batch: int) -> float:
    """Multiply-adds x 2 of one closed-form relaxation step (conv + transposed conv per layer)."""
    total = 0.0
    for i, shape in enumerate(net.state_shapes):
        syn = net.synapses[i]
        if isinstance(syn, torch.nn.Conv2d):
            c, h, w = shape
            pooled = 4 if net.pools[i] != "i" else 1
            macs = syn.in_channels * syn.out_channels * syn.kernel_size[0] ** 2 * h * w * pooled
            total += macs * (1 if i == 0 else 2)  # layer 0: no feedback into the input
        else:
            total += 2 * syn.in_features * syn.out_features
    readout = net.synapses[-1]
    total += 2 * readout.in_features * readout.out_features
    return 2 * total * batch


def minibatch_flops(net: P_CNN, batch: int, phases: Phases) -> float:
    """Relaxation steps of one minibatch plus the two Phi evaluations of the update (x3 each)."""
    steps = phases.T1 + 2 * phases.T2
    return step_flops(net, batch) * steps + 2 * 3 * step_flops(net, batch) / 2


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


def collect(quick: bool = False) -> list[Row]:
    phases = Phases(T1=4 if quick else 10, T2=2 if quick else 3, betas=(0.0, 0.5), thirdphase=True)
    rows = []
    for name, (in_shape, channels, kernel, padding, batch) in CONFIGS.items():
        torch.manual_seed(0)
        net = build(in_shape, channels, kernel, padding)
        x = torch.rand(batch, *in_shape)
        y = torch.randint(0, 10, (batch,))

        ep_grads(net, x, y, phases)
        ours_g = [p.grad.clone() for p in net.parameters()]
        reference_ep(net, x, y, phases)
        for a, b in zip(ours_g, (p.grad for p in net.parameters())):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)

        t_ours, t_ref = time_pair(lambda: ep_grads(net, x, y, phases),
                                  lambda: reference_ep(net, x, y, phases),
                                  repeat=2 if quick else 3)
        rows.append(Row(name=f"EP minibatch, {name}, batch {batch}",
                        unit=f"minibatch (T1={phases.T1}, 2x T2={phases.T2})", ours_s=t_ours,
                        ref_s=t_ref, ref_name="autograd of Phi per step",
                        flops=minibatch_flops(net, batch, phases)))
    return rows + peak_memory_rows((20, 200) if quick else (50, 500))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = gemm_peak_gflops()
    print(f"GEMM peak (fp32, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s")
    print(format_rows(collect(args.quick), peak))


if __name__ == "__main__":
    main()
