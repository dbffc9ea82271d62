"""Is a recipe's gradient well-posed, and does every fast path give the same one?

    python -m eplcanet.app.diagnose [main_fast.py flags ...] [--samples 4] [--out DIR]
                                [--noise 1e-12] [--dtype float64] [--settle-tol 1e-6]

Takes the same flags as main_fast.py (the network, data, T1 / T2, betas, --alg; --load-path RUN
for a trained run's best weights) and, on the first --samples training images, measures:

- settling: the relative state change ||s_t - s_{t-1}|| / ||s_t|| per layer and step in the free
  and nudged phases, and the step after which every layer changes by less than --settle-tol;
- sensitivity: per-tensor cosine and relative error of the gradient estimate when the input
  moves by --noise (relative to its largest value): an estimate that such a change moves cannot
  be reproduced across machines, and no fast path can be held to it;
- fast paths: the estimate under every --conv-algo against the direct convolution's, per tensor;
  and where Winograd's max-pool picks differ from the direct ones along the free phase, before
  and after the tie rule (``eplcanet.energy.pool_ties``);
- with --tol: the estimate whose phases stop once settled against the fixed-step one;
- GDU: the EP estimate against the BPTT gradient through the last T2 steps, per tensor.

On --device cuda everything but the pool-pick report (which compares with the CPU's Winograd
kernels) runs on the GPU: compare its agreement.csv with a CPU run's to see what a GPU changes.

Writes settle.csv, agreement.csv, pool_picks.csv, summary.json and diagnose.png to --out
(default ./results/diagnose) and prints the summary. In float64 by default: the question is the
recipe's conditioning, not float32's rounding (pass --dtype float32 to see that too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from ..data import load_task
from ..energy import conditioning as cond
from ..energy.dynamics import CONV_ALGOS
from .entry import COUNT, POSITIVE, Parser, resolve_device, run_command
from .build import build_model, phases_of, seed_everything
from ..kernels import native
from ..runs import atomic_write_text, load_state_dict, write_csv
from .settings import Settings, parse_settings

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def own_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m eplcanet.app.diagnose", add_help=False, allow_abbrev=False,
               description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=COUNT, default=4, help="training images measured")
    p.add_argument("--out", default="./results/diagnose", help="output directory")
    p.add_argument("--noise", type=POSITIVE, default=1e-12,
                   help="input perturbation, relative to the input's largest magnitude")
    p.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    p.add_argument("--settle-tol", type=POSITIVE, default=1e-6,
                   help="a phase has settled once every layer changes by less than this")
    return p


def _samples(splits, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n > len(splits.train):
        raise SystemExit(f"error: --samples {n} exceeds the {len(splits.train)} training images")
    pairs = [splits.train[i] for i in range(n)]
    return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])


def _rows(name: str, result: dict[str, dict]) -> list[dict]:
    return [{"comparison": name, "tensor": t, **v} for t, v in result.items()]


def diagnose(cfg: Settings, opts) -> dict:
    """Run every measurement; returns the summary (also written to opts.out)."""
    dtype = DTYPES[opts.dtype]
    seed_everything(cfg.run.seed)
    d, alg = cfg.data, cfg.estimator.alg
    splits = load_task(d.task, data_dir=d.data_dir, data_path=d.data_path, download=d.download,
                       val_fraction=d.val_fraction, seed=cfg.run.seed, image_size=d.image_size)
    in_shape = (splits.in_channels, splits.image_size, splits.image_size)
    net = build_model(cfg, in_shape, splits.n_classes)
    if cfg.run.load_path:
        run = Path(cfg.run.load_path)
        load_state_dict(run / "best.pt" if (run / "best.pt").is_file() else
                        run / "checkpoint.pt", net)
    device = resolve_device(cfg.run.device)
    net = net.to(device=device, dtype=dtype)
    x, y = _samples(splits, opts.samples)
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    phases = phases_of(cfg)

    print(f"settling ({phases.T1} free, {phases.T2} nudged steps) ...", flush=True)
    trace = cond.settle_trace(net, x, y, phases)
    settled = cond.settle_steps(trace, opts.settle_tol)

    print("estimates ...", flush=True)
    base = cond.estimate(net, x, y, alg, phases)
    rows = []
    g = torch.Generator().manual_seed(cfg.run.seed)
    noise = torch.randn(x.shape, generator=g, dtype=dtype).to(device)
    noisy = x + opts.noise * float(x.abs().max()) * noise
    rows += _rows(f"input noise {opts.noise:g}", cond.agreement(
        cond.estimate(net, noisy, y, alg, phases), base))
    direct = cond.estimate(net.with_relaxation(conv_algo="direct"), x, y, alg, phases)
    for algo in CONV_ALGOS:
        if algo == "direct" or (algo == "winograd" and native.why_unavailable() is not None):
            continue
        fast = cond.estimate(net.with_relaxation(conv_algo=algo), x, y, alg, phases)
        rows += _rows(f"conv_algo {algo} vs direct", cond.agreement(fast, direct))
    if net.relaxation.tol is not None:  # --tol: phases stopped once settled vs all T1 / T2 steps
        fixed = cond.estimate(net.with_relaxation(tol=None), x, y, alg, phases)
        rows += _rows(f"tol {net.relaxation.tol:g} vs fixed steps", cond.agreement(base, fixed))
    if alg == "EP":
        bptt = cond.estimate(net.with_relaxation(tol=None), x, y, "BPTT", phases)
        rows += _rows("EP vs BPTT (GDU)", cond.agreement(base, bptt))
    picks = cond.pool_pick_report(net, x, phases.T1) if device.type == "cpu" else []

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    settle_df, agree_df = pd.DataFrame(trace), pd.DataFrame(rows)
    write_csv(settle_df, out / "settle.csv")
    write_csv(agree_df, out / "agreement.csv")
    write_csv(picks, out / "pool_picks.csv",
              ["step", "synapse", "raw_diff", "rule_diff", "direct_gap"])
    worst = agree_df.loc[agree_df.groupby("comparison", sort=False)["cosine"].idxmin()]
    summary = {
        "samples": opts.samples, "dtype": opts.dtype, "alg": alg, "T1": phases.T1,
        "T2": phases.T2, "settle_tol": opts.settle_tol, "settled_at_step": settled,
        "worst_tensor": {r.comparison: {"tensor": r.tensor, "cosine": r.cosine,
                                        "rel_err": r.rel_err} for r in worst.itertuples()},
        "max_rel_err": agree_df.groupby("comparison", sort=False)["rel_err"].max().to_dict(),
        "pool_picks_differing_after_tie_rule": int(sum(r["rule_diff"] for r in picks)),
        "pool_picks_differing_without_tie_rule": int(sum(r["raw_diff"] for r in picks)),
    }
    atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    _plot(settle_df, agree_df, out / "diagnose.png", opts.settle_tol)
    _print(summary, out)
    return summary


def _plot(settle: pd.DataFrame, agree: pd.DataFrame, path: Path, tol: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(dict.fromkeys(settle["phase"]))
    fig, axes = plt.subplots(1, len(phases) + 1, figsize=(4.2 * (len(phases) + 1), 3.6))
    for ax, phase in zip(axes, phases):
        part = settle[settle["phase"] == phase]
        for layer, curve in part.groupby("layer"):
            ax.semilogy(curve["step"], curve["rel_change"].clip(lower=1e-17),
                        label=f"layer {layer}")
        ax.axhline(tol, color="grey", ls=":", lw=1)
        ax.set(title=phase, xlabel="step", ylabel="relative state change")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    worst = agree.groupby("comparison", sort=False)["cosine"].min()
    ax.barh(range(len(worst)), 1 - worst.clip(upper=1.0) + 1e-17, color="tab:orange")
    ax.set_xscale("log")
    ax.set_yticks(range(len(worst)), [c.replace(" vs ", "\nvs ") for c in worst.index],
                  fontsize=7)
    ax.set(title="1 - smallest per-tensor cosine", xlabel="(smaller: closer)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print(summary: dict, out: Path) -> None:
    print(f"settled (every layer < {summary['settle_tol']:g}) at step: "
          + ", ".join(f"{k} {v if v is not None else 'not within the phase'}"
                      for k, v in summary["settled_at_step"].items()))
    print(f"{'comparison':32s} {'worst tensor':24s} {'cosine':>10s} {'max rel err':>12s}")
    for name, w in summary["worst_tensor"].items():
        print(f"{name:32s} {w['tensor']:24s} {w['cosine']:10.6f} "
              f"{summary['max_rel_err'][name]:12.2e}")
    print(f"max-pool picks of Winograd differing from direct along the free phase: "
          f"{summary['pool_picks_differing_without_tie_rule']} without the tie rule, "
          f"{summary['pool_picks_differing_after_tie_rule']} with it")
    print(f"written to {out}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        own_parser().print_help()
        print("\nEvery other flag is main_fast.py's (python main_fast.py --help).")
        raise SystemExit(0)
    opts, rest = own_parser().parse_known_args(argv)
    return diagnose(parse_settings(rest), opts)


if __name__ == "__main__":
    sys.exit(run_command(main))
