"""``--todo gducheck`` and ``--check-thm``: the EP estimate (CEP: its per-step updates) of a few
training samples against BPTT, per parameter (gdu.json and one figure per parameter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import runs
from ..data import make_loader
from ..energy.learning import (cep_step_traces, gdu_metrics, gdu_traces, settling_steps,
                               step_cosines)
from . import plots
from .build import phases_of
from .settings import Settings


def gducheck(cfg: Settings, net, splits, device, run_dir) -> dict:
    """GDU check on a few training samples: writes gdu.json and per-parameter plots."""
    loader = make_loader(splits.train, cfg.run.gdu_batch, shuffle=True, seed=cfg.run.seed)
    x, y = next(iter(loader))
    net64 = net.double()
    e = cfg.estimator
    traces = gdu_traces(net64, x.to(device).double(), y.to(device), e.T1, e.T2, e.betas[1])
    if e.tol is not None:  # the same samples, a full EP minibatch on a copy
        used = settling_steps(net64, x.to(device).double(), y.to(device), phases_of(cfg))
        print(f"--tol {e.tol:g}: free phase settled in {used['free_steps']} of {e.T1} "
              f"steps, nudged phases in {used['nudged_steps']} of {e.T2}")
    net.float()
    # CEP: its per-step updates (the one-sided trace's increments) against BPTT's per-step
    # gradients; the plots keep the cumulative traces, of which these are the steps
    key, label = ("cep", "CEP step vs BPTT step") if cfg.estimator.alg == "CEP" else (
        "ep_symmetric", "symmetric EP vs BPTT")
    steps = cep_step_traces(traces) if cfg.estimator.alg == "CEP" else None
    result = gdu_metrics(steps if steps is not None else traces)
    if steps is not None:  # the last steps are near zero: every step's cosine
        for name, cos in step_cosines(steps).items():
            result[name]["cep"]["cosine_per_step"] = cos
    for name, variants in result.items():
        sym = variants[key]
        print(f"{name:28s} {label}: cosine {sym['cosine']:.4f} "
              f"rel RMSE {sym['rel_rmse']:.4f} sign agreement {sym['sign_agreement']:.3f}"
              + ("" if steps is None else " per step " + " ".join(
                  "-" if c is None else f"{c:.4f}" for c in sym["cosine_per_step"])))
    out_dir = run_dir if run_dir is not None else Path(cfg.run.results_dir) / "gducheck"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(json.dumps(result, indent=2), out_dir / "gdu.json")
    rng = np.random.default_rng(cfg.run.seed)
    picked = {}
    for name, tr in traces.items():
        flat = {k: v.flatten(1).cpu().numpy() for k, v in tr.items()}
        idx = rng.choice(flat["bptt"].shape[1], size=min(5, flat["bptt"].shape[1]), replace=False)
        picked[name] = {k: v[:, idx] for k, v in flat.items()}
    plots.plot_gdu(picked, out_dir)
    print(f"GDU check written to {out_dir}")
    return result
