"""Builds a model, data, optimizer and run directory from parsed flags and runs --todo."""

from __future__ import annotations

import json
import math
import random
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import runs
from . import distributed, plots
from .cli import MLP_MODELS, RESUME_MAY_CHANGE
from ..data import WithIndex, load_task, make_loader
from ..energy.dynamics import Relaxation
from ..energy.feedforward import FF_CNN
from ..energy.learning import (Phases, StateBank, cep_step_traces, gdu_metrics, gdu_traces,
                               settling_steps, step_cosines)
from ..energy.networks import P_CNN, P_MLP, VF_CNN, VF_MLP, EnergyNet
from .entry import Interrupted, resolve_device
from .lca import build_lca_cnn, prepare_code_cache, save_dictionary_artifacts
from .robustness import ROBUSTNESS_TODOS, run_todo
from .train import EpochProgress, StopSignals, evaluate, set_matmul_precision, train_epoch


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random: two CPU runs with the same seed give identical metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(args, in_shape: tuple[int, ...], n_classes: int,
                dictionary_sync=None) -> EnergyNet:
    """The network named by --model for inputs of shape in_shape (C, H, W), relaxing with the
    --updates order and --conv-algo; dictionary_sync: a multi-process run's context, which an
    LCACNN's dictionary steps share (None: one process)."""
    if args.fc[-1] != n_classes and args.model not in MLP_MODELS:
        raise SystemExit(f"error: the last --fc size ({args.fc[-1]}) must equal the number of "
                         f"classes of --task {args.task} ({n_classes})")
    common = dict(act=args.act, softmax=args.softmax, loss=args.loss, scale=args.scale,
                  relaxation=Relaxation(args.updates, args.conv_algo, args.tol))
    if args.model in MLP_MODELS:
        d = int(np.prod(in_shape))
        archi = args.archi if args.archi else [d, *args.fc]
        if archi[0] != d or archi[-1] != n_classes:
            raise SystemExit(f"error: --archi must start with the input size {d} and end with "
                             f"the number of classes {n_classes}, got {archi}")
        if args.model == "VFMLP":
            return VF_MLP(archi, same_update=args.same_update, **common)
        return P_MLP(archi, **common)
    conv = (in_shape, args.channels, args.kernels, args.strides, args.paddings, args.pools,
            args.fc)
    if args.model == "LCACNN":
        return build_lca_cnn(args, in_shape, dictionary_sync)
    if args.model == "VFCNN":
        return VF_CNN(*conv, same_update=args.same_update, **common)
    if args.model == "FFCNN":
        return FF_CNN(*conv, **common)
    return P_CNN(*conv, **common)


def build_optimizer(args, net: EnergyNet):
    """Optimizer with one parameter group per synapse layer (--lrs, --wds) and its scheduler."""
    groups = [
        {"params": ps, "lr": lr, "weight_decay": wd}
        for ps, lr, wd in zip(net.synapse_groups(), args.lrs, args.wds)
    ]
    if args.optim == "sgd":
        opt = torch.optim.SGD(groups, lr=args.lrs[0], momentum=args.mmt)
    else:
        opt = torch.optim.Adam(groups, lr=args.lrs[0])
    sched = None
    if args.lr_decay:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=1e-5)
    return opt, sched


def phases_of(args) -> Phases:
    hep = {} if args.hep_points is None else {"hep_points": args.hep_points}  # --alg hEP only
    return Phases(args.T1, args.T2, tuple(args.betas), args.random_sign, args.thirdphase, **hep)


def apply_resume_changes(args, run_dir: Path, opt, sched, argv: list[str]) -> dict | None:
    """Resumed training with another --epochs or --lrs (cli.RESUME_MAY_CHANGE): the optimiser
    takes the new learning rates and the cosine decay runs to the new last epoch (its closed
    form at the resumed epoch). Returns the hyperparameters.json record with the new values, to
    be written once a checkpoint trained with them is (a run that diverges keeps its record)."""
    saved = runs.load_hyperparameters(run_dir)
    changed = {k: getattr(args, k) for k in RESUME_MAY_CHANGE
               if k in saved and saved[k] != getattr(args, k)}
    if not changed:
        return None
    if sched is not None:
        sched.T_max = args.epochs
        sched.base_lrs = list(args.lrs)
    for i, (group, lr) in enumerate(zip(opt.param_groups, args.lrs)):
        group["initial_lr"] = lr
        group["lr"] = lr if sched is None else sched.eta_min + (lr - sched.eta_min) * (
            1 + math.cos(math.pi * sched.last_epoch / sched.T_max)) / 2
    print("resuming with " + ", ".join(f"--{k.replace('_', '-')} {saved[k]} -> {v}"
                                       for k, v in changed.items()))
    command = saved.pop("command")
    saved["resumed_with"] = [*saved.get("resumed_with", []), shlex.join(argv)]
    return {"hparams": {**saved, **changed}, "argv": shlex.split(command)}


def _run_dir(args) -> Path | None:
    if args.load_path:
        return Path(args.load_path)
    if args.save:
        return runs.make_run_dir(args.results_dir, args.task, args.alg, args.model)
    return None


def run(args, argv: list[str] | None = None) -> dict:
    """Execute --todo; returns the final metrics (also written to the run directory).

    Under torchrun: one process of a data-parallel run (eplcanet.app.distributed).
    """
    with distributed.session(resolve_device(args.device)) as dist:
        return _run(args, sys.argv if argv is None else argv, dist)


def _run(args, argv: list[str], dist: distributed.DistContext) -> dict:
    device = dist.device
    set_matmul_precision(args.precision, device)
    if args.todo == "train":  # refuse a --mbs the processes cannot share, before any work
        dist.local_batch(args.mbs)
        if args.warm_start is not None and dist.enabled:  # samples move between processes
            raise SystemExit("error: --warm-start runs in a single process (its state bank is "
                             "per sample, and torchrun moves samples between processes)")
    seed_everything(args.seed)
    if args.load_path and not (Path(args.load_path) / "checkpoint.pt").is_file():
        raise SystemExit(f"error: --load-path {args.load_path} has no checkpoint.pt")
    with dist.main_first():  # with --download: one download, then the others read the files
        splits = load_task(args.task, data_dir=args.data_dir, data_path=args.data_path,
                           download=args.download, val_fraction=args.val_fraction,
                           seed=args.seed, data_aug=args.data_aug, image_size=args.image_size)
    in_shape = (splits.in_channels, splits.image_size, splits.image_size)
    net = build_model(args, in_shape, splits.n_classes,
                      dictionary_sync=dist if dist.enabled else None).to(device)
    dist.prepare_model(net)
    prepare_code_cache(args, net, splits, device)  # LCACNN --cache-codes only
    opt, sched = build_optimizer(args, net)
    # Rank 0 alone creates a new run directory; every process reads a resumed one.
    run_dir = _run_dir(args) if dist.is_main or args.load_path else None
    if args.todo == "train":
        return _train(args, argv, net, opt, sched, splits, device, run_dir, dist)
    _load_trained(net, run_dir, device)
    if args.todo == "evaluate":
        test = dist.eval_loader(splits.test, args.mbs)
        acc = evaluate(net, test, args.T1, device, desc="test", dist=dist,
                       precision=args.precision)
        print(f"test accuracy: {100 * acc:.2f}%")
        return {"test_acc": acc}
    if not dist.is_main:  # attacks, corruptions and the GDU check run on rank 0 alone
        return {}
    if args.todo in ROBUSTNESS_TODOS:  # adversarial attacks, corruptions: eplcanet.app.robustness
        return run_todo(args, net, splits, device, run_dir)
    return _gducheck(args, net, splits, device, run_dir)


def _load_trained(net: EnergyNet, run_dir: Path | None, device) -> None:
    """Load the run's best model (selected on validation), else its last checkpoint."""
    if run_dir is None:
        return
    best = run_dir / "best.pt"
    runs.load_state_dict(best if best.is_file() else run_dir / "checkpoint.pt", net)


def _train(args, argv, net, opt, sched, splits, device, run_dir, dist) -> dict:
    phases = phases_of(args)
    start_epoch, best, partial, record = 0, {"val_acc": -1.0, "epoch": 0}, None, None
    log = None
    writes = run_dir is not None and dist.is_main  # only rank 0 writes files
    if run_dir is not None:
        if args.load_path:
            state = runs.load_checkpoint(run_dir / "checkpoint.pt", model=net, optimizer=opt,
                                         scheduler=sched)
            start_epoch, best = state["epoch"], state["best"]
            partial = state["extra"].get("partial")
            record = apply_resume_changes(args, run_dir, opt, sched, argv)
            print(f"resuming {run_dir} after epoch {start_epoch}"
                  + (f", minibatch {partial['batches']}" if partial else ""))
        elif writes:
            hparams = vars(args) if not dist.enabled else {**vars(args),
                                                           "world_size": dist.world_size}
            runs.save_hyperparameters(run_dir, hparams, argv)
        if writes:
            log = runs.MetricsLog(run_dir, tensorboard=args.tensorboard)
            log.truncate_after(start_epoch)
        print(f"run directory: {run_dir}")
    val_loader = dist.eval_loader(splits.val, args.mbs)
    test_loader = dist.eval_loader(splits.test, args.mbs)
    train_data, bank = splits.train, None
    if args.warm_start is not None:
        train_data, bank = WithIndex(splits.train), StateBank(net, len(splits.train), device)
        print(f"warm start: {args.warm_start} free steps from each sample's last equilibrium "
              f"(state bank {bank.nbytes / 2**20:.0f} MiB on {device})")
        if start_epoch > 0 or partial:  # the bank (a state set per sample) is too big to save
            print("warning: the warm-start state bank is not in the checkpoint: each sample's "
                  "first minibatch after this resume relaxes from zero states for the full "
                  "--T1, so the run differs from an uninterrupted one")
    metrics: dict = {}
    with StopSignals() as signals:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            loader = dist.train_loader(train_data, args.mbs, seed=args.seed, epoch=epoch)
            resumed = EpochProgress(**partial) if partial and epoch == start_epoch + 1 else None
            stats, states, stopped = train_epoch(
                net, opt, loader, args.alg, phases, device, desc=f"epoch {epoch}/{args.epochs}",
                dist=dist, precision=args.precision, bank=bank, warm_T1=args.warm_start,
                progress=resumed, stop=signals.requested, epoch=epoch, cep_debug=args.cep_debug)
            if stopped is not None:
                if writes:  # the epochs done, and this one's minibatches so far
                    runs.save_checkpoint(run_dir / "checkpoint.pt", model=net, optimizer=opt,
                                         scheduler=sched, epoch=epoch - 1, best=best,
                                         extra={"partial": stopped.as_dict()})
                    record = _write_record(run_dir, record)
                raise _interrupted(args, run_dir if writes else None, signals.signum,
                                   f"epoch {epoch}, minibatch {stopped.batches}")
            if sched is not None:
                sched.step()
            dist.check_in_sync(net, f"after epoch {epoch}")
            net.eval()
            val_acc = (evaluate(net, val_loader, args.T1, device, "val", dist=dist,
                                precision=args.precision)
                       if len(splits.val) else 0.0)
            test_acc = evaluate(net, test_loader, args.T1, device, "test", dist=dist,
                                precision=args.precision)
            metrics = dict(epoch=epoch, **stats, val_acc=val_acc, test_acc=test_acc,
                           seconds=time.perf_counter() - t0)
            _print_epoch(metrics)
            improved = val_acc > best["val_acc"]
            if improved:
                best = {"val_acc": val_acc, "epoch": epoch, "test_acc": test_acc}
            if writes:
                log.append(**metrics)
                if improved:
                    runs.save_state_dict(run_dir / "best.pt", net)
                runs.save_checkpoint(run_dir / "checkpoint.pt", model=net, optimizer=opt,
                                     scheduler=sched, epoch=epoch, best=best)
                record = _write_record(run_dir, record)
                plots.plot_curves(run_dir / "metrics.csv", run_dir / "train-test_acc.png")
                activity = plots.plot_neural_activity(states, run_dir / "neural_activity.png")
                _tensorboard_extras(log.tensorboard(epoch), epoch, opt, states, activity)
                save_dictionary_artifacts(net, run_dir, epoch)  # LCACNN only
                if args.check_thm:  # drawing nothing from the RNG the processes share
                    with dist.main_only_rng():
                        _gducheck(args, net, splits, device, run_dir)
            if signals.requested() and epoch < args.epochs:  # came during the evaluation
                raise _interrupted(args, run_dir if writes else None, signals.signum,
                                   f"the end of epoch {epoch}")
    if log is not None:
        log.close()
    if metrics:
        print(f"best validation accuracy {100 * best['val_acc']:.2f}% at epoch {best['epoch']} "
              f"(test accuracy there: {100 * best.get('test_acc', 0):.2f}%)")
    return {**metrics, "best": best}


def _tensorboard_extras(writer, epoch: int, opt, states, activity_png: Path) -> None:
    """What only TensorBoard gets each epoch (with --tensorboard): each synapse layer's learning
    rate, a histogram of each layer's free-phase states and the neural activity figure."""
    if writer is None:
        return
    from matplotlib.image import imread

    for i, group in enumerate(opt.param_groups):
        writer.add_scalar(f"lr/group_{i}", group["lr"], epoch)
    for i, s in enumerate(states):
        writer.add_histogram(f"activity/layer_{i}", s.detach().float().cpu(), epoch)
    writer.add_image("neural_activity", imread(activity_png)[..., :3], epoch, dataformats="HWC")
    writer.flush()


def _write_record(run_dir: Path, record: dict | None) -> None:
    """Write a resume's hyperparameters.json record (apply_resume_changes); returns None, what
    is left to write."""
    if record is not None:
        runs.save_hyperparameters(run_dir, record["hparams"], record["argv"])


def _print_epoch(m: dict) -> None:
    print(f"epoch {m['epoch']}: loss {m['train_loss']:.4f} train {100 * m['train_acc']:.2f}%"
          f" val {100 * m['val_acc']:.2f}% test {100 * m['test_acc']:.2f}% ({m['seconds']:.1f}s)"
          + (f" steps free {m['free_steps_mean']:.1f} (max {m['free_steps_max']}),"
             f" nudged {m['nudged_steps_mean']:.1f} (max {m['nudged_steps_max']})"
             if "free_steps_mean" in m else ""))


def _interrupted(args, run_dir: Path | None, signum: int, where: str) -> Interrupted:
    """The one-line message of a run stopped by a signal: where, and how to go on."""
    name = signal.Signals(signum).name
    if run_dir is None:
        return Interrupted(f"{name}: stopped at {where}; nothing was saved (no --save)", signum)
    device = f" --device {args.device}" if args.device != "auto" else ""
    return Interrupted(f"{name}: stopped at {where}, checkpoint saved; resume with: "
                       f"python main_fast.py --load-path {run_dir}{device}", signum)


def _gducheck(args, net, splits, device, run_dir) -> dict:
    """GDU check on a few training samples: writes gdu.json and per-parameter plots."""
    loader = make_loader(splits.train, args.gdu_batch, shuffle=True, seed=args.seed)
    x, y = next(iter(loader))
    net64 = net.double()
    traces = gdu_traces(net64, x.to(device).double(), y.to(device), args.T1, args.T2,
                        args.betas[1])
    if args.tol is not None:  # the same samples, a full EP minibatch on a copy
        used = settling_steps(net64, x.to(device).double(), y.to(device), phases_of(args))
        print(f"--tol {args.tol:g}: free phase settled in {used['free_steps']} of {args.T1} "
              f"steps, nudged phases in {used['nudged_steps']} of {args.T2}")
    net.float()
    # CEP: its per-step updates (the one-sided trace's increments) against BPTT's per-step
    # gradients; the plots keep the cumulative traces, of which these are the steps
    key, label = ("cep", "CEP step vs BPTT step") if args.alg == "CEP" else (
        "ep_symmetric", "symmetric EP vs BPTT")
    steps = cep_step_traces(traces) if args.alg == "CEP" else None
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
    out_dir = run_dir if run_dir is not None else Path(args.results_dir) / "gducheck"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(json.dumps(result, indent=2), out_dir / "gdu.json")
    rng = np.random.default_rng(args.seed)
    picked = {}
    for name, tr in traces.items():
        flat = {k: v.flatten(1).cpu().numpy() for k, v in tr.items()}
        idx = rng.choice(flat["bptt"].shape[1], size=min(5, flat["bptt"].shape[1]), replace=False)
        picked[name] = {k: v[:, idx] for k, v in flat.items()}
    plots.plot_gdu(picked, out_dir)
    print(f"GDU check written to {out_dir}")
    return result
