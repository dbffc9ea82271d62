"""main_fast.py: runs a Settings tree (data, model, optimiser, run directory, resume, the
epochs) and dispatches --todo."""

from __future__ import annotations

import math
import shlex
import signal
import sys
import time
from pathlib import Path

from .. import runs
from . import distributed, plots
from ..data import CropPaddingError, WithIndex, load_task
from ..energy.learning import StateBank
from ..energy.networks import EnergyNet
from .entry import Interrupted, resolve_device, run_command
from .flags import ROBUSTNESS_TODOS
from .build import build_model, build_optimizer, phases_of, seed_everything
from .gducheck import gducheck
from .lca import prepare_code_cache, save_dictionary_artifacts
from .robustness import run_todo
from .settings import RESUME_MAY_CHANGE, Settings, parse_settings
from .train import EpochProgress, StopSignals, evaluate, set_matmul_precision, train_epoch


def main(argv: list[str] | None = None) -> int:
    """main_fast.py: parse and validate the settings, run them; returns the exit code."""
    return run_command(lambda: run(parse_settings(argv), argv), argv)


def apply_resume_changes(cfg: Settings, run_dir: Path, opt, sched, argv: list[str]) -> dict | None:
    """Resumed training with another --epochs or --lrs (settings.RESUME_MAY_CHANGE): the optimiser
    takes the new learning rates and the cosine decay runs to the new last epoch (its closed
    form at the resumed epoch). Returns the hyperparameters.json record with the new values, to
    be written once a checkpoint trained with them is (a run that diverges keeps its record)."""
    saved = runs.load_hyperparameters(run_dir)
    now = cfg.flat()
    changed = {k: now[k] for k in RESUME_MAY_CHANGE if k in saved and saved[k] != now[k]}
    if not changed:
        return None
    if sched is not None:
        sched.T_max = cfg.optim.epochs
        sched.base_lrs = list(cfg.optim.lrs)
    for i, (group, lr) in enumerate(zip(opt.param_groups, cfg.optim.lrs)):
        group["initial_lr"] = lr
        group["lr"] = lr if sched is None else sched.eta_min + (lr - sched.eta_min) * (
            1 + math.cos(math.pi * sched.last_epoch / sched.T_max)) / 2
    print("resuming with " + ", ".join(f"--{k.replace('_', '-')} {saved[k]} -> {v}"
                                       for k, v in changed.items()))
    command = saved.pop("command")
    saved["resumed_with"] = [*saved.get("resumed_with", []), shlex.join(argv)]
    return {"hparams": {**saved, **changed}, "argv": shlex.split(command)}


def _run_dir(cfg: Settings) -> Path | None:
    if cfg.run.load_path:
        return Path(cfg.run.load_path)
    if cfg.run.save:
        return runs.make_run_dir(cfg.run.results_dir, cfg.data.task, cfg.estimator.alg,
                                 cfg.model.model)
    return None


def run(cfg: Settings, argv: list[str] | None = None) -> dict:
    """Execute --todo; returns the final metrics (also written to the run directory).

    Under torchrun: one process of a data-parallel run (eplcanet.app.distributed).
    """
    with distributed.session(resolve_device(cfg.run.device)) as dist:
        return _run(cfg, sys.argv if argv is None else argv, dist)


def _run(cfg: Settings, argv: list[str], dist: distributed.DistContext) -> dict:
    device = dist.device
    set_matmul_precision(cfg.run.precision, device)
    if cfg.run.todo == "train":  # refuse a --mbs the processes cannot share, before any work
        dist.local_batch(cfg.optim.mbs)
        if cfg.estimator.warm_start is not None and dist.enabled:  # samples move
            raise SystemExit("error: --warm-start runs in a single process (its state bank is "
                             "per sample, and torchrun moves samples between processes)")
    seed_everything(cfg.run.seed)
    if cfg.run.load_path and not (Path(cfg.run.load_path) / "checkpoint.pt").is_file():
        raise SystemExit(f"error: --load-path {cfg.run.load_path} has no checkpoint.pt")
    with dist.main_first():  # with --download: one download, then the others read the files
        d = cfg.data
        try:
            splits = load_task(d.task, data_dir=d.data_dir, data_path=d.data_path,
                               download=d.download, val_fraction=d.val_fraction,
                               seed=cfg.run.seed, data_aug=d.data_aug, crop_padding=d.crop_pad,
                               image_size=d.image_size)
        except CropPaddingError as err:  # name the flag: the images' size is known only now
            raise SystemExit(f"error: --crop-pad {d.crop_pad} is too large for these images "
                             f"({err})") from None
    in_shape = (splits.in_channels, splits.image_size, splits.image_size)
    net = build_model(cfg, in_shape, splits.n_classes,
                      dictionary_sync=dist if dist.enabled else None).to(device)
    dist.prepare_model(net)
    prepare_code_cache(cfg, net, splits, device)  # LCACNN --cache-codes only
    opt, sched = build_optimizer(cfg, net)
    # Rank 0 alone creates a new run directory; every process reads a resumed one.
    run_dir = _run_dir(cfg) if dist.is_main or cfg.run.load_path else None
    if cfg.run.todo == "train":
        return _train(cfg, argv, net, opt, sched, splits, device, run_dir, dist)
    _load_trained(net, run_dir, device)
    if cfg.run.todo == "evaluate":
        test = dist.eval_loader(splits.test, cfg.optim.mbs)
        acc = evaluate(net, test, cfg.estimator.T1, device, desc="test", dist=dist,
                       precision=cfg.run.precision)
        print(f"test accuracy: {100 * acc:.2f}%")
        return {"test_acc": acc}
    if not dist.is_main:  # attacks, corruptions and the GDU check run on rank 0 alone
        return {}
    if cfg.run.todo in ROBUSTNESS_TODOS:  # attacks, corruptions: eplcanet.app.robustness
        return run_todo(cfg, net, splits, device, run_dir)
    return gducheck(cfg, net, splits, device, run_dir)


def _load_trained(net: EnergyNet, run_dir: Path | None, device) -> None:
    """Load the run's best model (selected on validation), else its last checkpoint."""
    if run_dir is None:
        return
    best = run_dir / "best.pt"
    runs.load_state_dict(best if best.is_file() else run_dir / "checkpoint.pt", net)


def _train(cfg: Settings, argv, net, opt, sched, splits, device, run_dir, dist) -> dict:
    phases = phases_of(cfg)
    start_epoch, best, partial, record = 0, {"val_acc": -1.0, "epoch": 0}, None, None
    log = None
    writes = run_dir is not None and dist.is_main  # only rank 0 writes files
    if run_dir is not None:
        if cfg.run.load_path:
            state = runs.load_checkpoint(run_dir / "checkpoint.pt", model=net, optimizer=opt,
                                         scheduler=sched)
            start_epoch, best = state["epoch"], state["best"]
            partial = state["extra"].get("partial")
            record = apply_resume_changes(cfg, run_dir, opt, sched, argv)
            print(f"resuming {run_dir} after epoch {start_epoch}"
                  + (f", minibatch {partial['batches']}" if partial else ""))
        elif writes:
            hparams = cfg.flat() if not dist.enabled else {**cfg.flat(),
                                                           "world_size": dist.world_size}
            runs.save_hyperparameters(run_dir, hparams, argv)
        if writes:
            log = runs.MetricsLog(run_dir, tensorboard=cfg.run.tensorboard)
            log.truncate_after(start_epoch)
        print(f"run directory: {run_dir}")
    val_loader = dist.eval_loader(splits.val, cfg.optim.mbs)
    test_loader = dist.eval_loader(splits.test, cfg.optim.mbs)
    train_data, bank = splits.train, None
    if cfg.estimator.warm_start is not None:
        train_data, bank = WithIndex(splits.train), StateBank(net, len(splits.train), device)
        print(f"warm start: {cfg.estimator.warm_start} free steps from each sample's last "
              f"equilibrium (state bank {bank.nbytes / 2**20:.0f} MiB on {device})")
        if start_epoch > 0 or partial:  # the bank (a state set per sample) is too big to save
            print("warning: the warm-start state bank is not in the checkpoint: each sample's "
                  "first minibatch after this resume relaxes from zero states for the full "
                  "--T1, so the run differs from an uninterrupted one")
    metrics: dict = {}
    with StopSignals() as signals:
        for epoch in range(start_epoch + 1, cfg.optim.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            loader = dist.train_loader(train_data, cfg.optim.mbs, seed=cfg.run.seed, epoch=epoch)
            resumed = EpochProgress(**partial) if partial and epoch == start_epoch + 1 else None
            stats, states, stopped = train_epoch(
                net, opt, loader, cfg.estimator.alg, phases, device,
                desc=f"epoch {epoch}/{cfg.optim.epochs}", dist=dist, precision=cfg.run.precision,
                bank=bank, warm_T1=cfg.estimator.warm_start, progress=resumed,
                stop=signals.requested, epoch=epoch, cep_debug=cfg.estimator.cep_debug)
            if stopped is not None:
                if writes:  # the epochs done, and this one's minibatches so far
                    runs.save_checkpoint(run_dir / "checkpoint.pt", model=net, optimizer=opt,
                                         scheduler=sched, epoch=epoch - 1, best=best,
                                         extra={"partial": stopped.as_dict()})
                    record = _write_record(run_dir, record)
                raise _interrupted(cfg, run_dir if writes else None, signals.signum,
                                   f"epoch {epoch}, minibatch {stopped.batches}")
            if sched is not None:
                sched.step()
            dist.check_in_sync(net, f"after epoch {epoch}")
            net.eval()
            val_acc = (evaluate(net, val_loader, cfg.estimator.T1, device, "val", dist=dist,
                                precision=cfg.run.precision)
                       if len(splits.val) else 0.0)
            test_acc = evaluate(net, test_loader, cfg.estimator.T1, device, "test", dist=dist,
                                precision=cfg.run.precision)
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
                if cfg.run.check_thm:  # drawing nothing from the RNG the processes share
                    with dist.main_only_rng():
                        gducheck(cfg, net, splits, device, run_dir)
            if signals.requested() and epoch < cfg.optim.epochs:  # came during the evaluation
                raise _interrupted(cfg, run_dir if writes else None, signals.signum,
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


def _interrupted(cfg: Settings, run_dir: Path | None, signum: int, where: str) -> Interrupted:
    """The one-line message of a run stopped by a signal: where, and how to go on."""
    name = signal.Signals(signum).name
    if run_dir is None:
        return Interrupted(f"{name}: stopped at {where}; nothing was saved (no --save)", signum)
    device = f" --device {cfg.run.device}" if cfg.run.device != "auto" else ""
    return Interrupted(f"{name}: stopped at {where}, checkpoint saved; resume with: "
                       f"python main_fast.py --load-path {run_dir}{device}", signum)
