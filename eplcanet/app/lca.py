"""The LCA-RCNN of main_fast.py (--model LCACNN): its construction from the settings, the
dictionary file a new run starts from, the code cache and the dictionary files of a run.

The LCACNN flags and their checks are in :mod:`eplcanet.app.flags` and
:mod:`eplcanet.app.settings` (which also hold the seed-compatibility rule for its layer lists).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data import make_loader
from ..energy.dynamics import Relaxation
from ..energy.lcacnn import LCA_CNN
from ..sparse import (
    DictionaryFileError,
    load_dictionary,
    make_sparse_coder,
    preprocessing_note,
    save_dictionary,
    whitening_entry,
    whitening_from_config,
)
from ..sparse.analysis import save_feature_grid

if TYPE_CHECKING:  # the settings check dictionary files with this module
    from .settings import Settings

MAKE_DICT_HINT = (
    "learn one with cifar_dictlearning.py, e.g. `python cifar_dictlearning.py --task CIFAR10 "
    "--data-dir ./data --out images/lca_dictionary_cifar10.pt` (same --lca_feats, --lca_ksize "
    "and image channels), or use --dict_training learn"
)


def _fail(message: str) -> None:
    raise SystemExit(f"error: {message}")


def dictionary_file_needed(dict_training: str, todo: str, load_path: str | None) -> bool:
    """A new training run in pretrained/finetune loads --lca-dict (others load a checkpoint)."""
    return dict_training in ("pretrained", "finetune") and todo == "train" and not load_path


def check_dictionary_file(
    path: str, feats: int, ksize: int, mode: str
) -> tuple[torch.Tensor, dict]:
    """Load a dictionary file and check its atoms against --lca_feats and --lca_ksize."""
    where = f"--lca-dict {path} (--dict_training {mode})"
    if not Path(path).is_file():
        _fail(f"{where}: no such file; {MAKE_DICT_HINT}")
    try:
        weight, config = load_dictionary(path)
    except DictionaryFileError as err:
        _fail(f"{where}: {err}")
    if weight.dim() != 4 or weight.shape[0] != feats or tuple(weight.shape[2:]) != (ksize, ksize):
        _fail(f"{where} holds atoms of shape {tuple(weight.shape)}; --lca_feats {feats} and "
              f"--lca_ksize {ksize} need ({feats}, C, {ksize}, {ksize}); {MAKE_DICT_HINT}")
    return weight, config


def build_lca_cnn(cfg: Settings, in_shape: tuple[int, int, int],
                  dictionary_sync=None) -> LCA_CNN:
    """The LCACNN of the settings for images of shape (C, H, W), with its dictionary loaded
    when a new pretrained/finetune run starts (a resumed or evaluated run loads its
    checkpoint's); dictionary_sync: the multi-process context its dictionary steps share."""
    c, fe, m = cfg.coder, cfg.frontend, cfg.model
    common = {"out_neurons": c.lca_feats, "in_neurons": in_shape[0],
              "kernel_size": c.lca_ksize, "stride": c.lca_stride, "pad": "same",
              "eta": c.lca_eta}
    if fe.sparse_coder == "lca":
        coder = make_sparse_coder(
            "lca", **common, lambda_=c.lca_lambda, tau=c.lca_tau, lca_iters=c.lca_iters,
            solver=c.lca_solver, input_zero_mean=False, input_unit_var=False)
    else:
        coder = make_sparse_coder("mp", **common, k=fe.mp_k)
    try:
        net = LCA_CNN(in_shape, coder, m.channels, m.kernels, m.strides, m.paddings, m.pools,
                      m.fc, act=m.act, softmax=m.softmax, loss=m.loss, scale=m.scale,
                      relaxation=Relaxation(cfg.estimator.updates, cfg.run.conv_algo,
                                            cfg.estimator.tol),
                      scale_feedback=fe.scale_feedback, code_gain=fe.code_gain,
                      dict_training=fe.dict_training,
                      dict_update_every=fe.dict_update_every, dictionary_sync=dictionary_sync)
    except ValueError as err:
        _fail(f"--model LCACNN on {in_shape} images: {err}")
    if dictionary_file_needed(fe.dict_training, cfg.run.todo, cfg.run.load_path):
        weight, config = check_dictionary_file(fe.lca_dict, c.lca_feats, c.lca_ksize,
                                               fe.dict_training)
        if weight.shape[1] != in_shape[0]:
            _fail(f"--lca-dict {fe.lca_dict} has atoms for {weight.shape[1]} input channel(s), "
                  f"the images have {in_shape[0]}; {MAKE_DICT_HINT}")
        net.load_dictionary_weights(weight)
        try:
            whitening = whitening_from_config(config, in_shape[0])
        except DictionaryFileError as err:
            _fail(f"--lca-dict {fe.lca_dict}: {err}")
        if whitening is not None:
            net.set_whitening(*whitening)
        learned = ", ".join(f"{k} {config[k]}" for k in ("task", "stride", "lambda_")
                            if k in config)
        if whitening is not None:
            size = whitening[0].shape[-1]
            learned += f", whitened images ({size}x{size} ZCA)"
        print(f"dictionary {fe.lca_dict}: {tuple(weight.shape)} ({learned})")
        if config.get("stride", c.lca_stride) != c.lca_stride:
            print(f"warning: the dictionary was learned with stride {config['stride']}, "
                  f"--lca_stride is {c.lca_stride}")
    return net


# The splits whose clean images each --todo codes more than once (attacked and corrupted images
# are new images, coded live; the GDU check codes its few minibatches once).
CACHED_SPLITS = {"train": ("train", "val", "test"), "evaluate": ("test",), "attack": ("test",),
                 "corrupt": ("test",)}


def prepare_code_cache(cfg: Settings, net, splits, device) -> None:
    """With --cache-codes: code every image of the splits the --todo reads (CACHED_SPLITS) once."""
    names = CACHED_SPLITS.get(cfg.run.todo, ())
    if not isinstance(net, LCA_CNN) or not cfg.frontend.cache_codes or not names:
        return
    t0 = time.perf_counter()
    net.enable_code_cache()
    # the bars show on a terminal only; a log file gets this line before minutes of coding
    total = sum(len(getattr(splits, name)) for name in names)
    print(f"coding the {total} images of the {', '.join(names)} split(s) once (--cache-codes)",
          flush=True)
    for name in names:
        loader = make_loader(getattr(splits, name), cfg.optim.mbs, shuffle=False)
        batches = (x.to(device) for x, _ in loader)
        net.fill_code_cache(batches, total=len(loader), desc=f"codes ({name})")
    cache = net.code_cache
    stats = cache.stats()
    print(f"cached the codes of {len(cache)} images ({cache.nbytes() / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - t0:.1f}s; {100 * stats['nonzero']:.1f}% nonzero, nonzero "
          f"magnitudes: median {stats['median']:.3g}, 99th percentile {stats['p99']:.3g} (the "
          f"copy layer is driven by --code-gain {net.code_gain:g} times them)")


def save_dictionary_artifacts(net, run_dir: Path, epoch: int) -> None:
    """Write the run's dictionary (dictionary.pt, loadable with --lca-dict) and its grid
    (dictionary.png; also dictionary_epochNNN.png when the dictionary learns)."""
    if not isinstance(net, LCA_CNN):
        return
    coder = net.coder
    config = {
        "kernel_size": list(coder.kernel_size) if isinstance(coder.kernel_size, tuple)
        else coder.kernel_size,
        "stride": coder.stride[0] if isinstance(coder.stride, tuple) else coder.stride,
        "pad": coder.pad,
        "in_neurons": coder.in_neurons,
        "out_neurons": coder.out_neurons,
        "dict_training": net.dict_training,
        "epoch": epoch,
    }
    if net.whiten_kernel is not None:
        config["whitening"] = whitening_entry(net.whiten_kernel, net.whiten_bias)
    config["preprocessing"] = preprocessing_note(config.get("whitening"))
    if hasattr(coder, "lambda_") and isinstance(coder.lambda_, float):
        config["lambda_"] = coder.lambda_
    save_dictionary(run_dir / "dictionary.pt", net.dictionary, config)
    save_feature_grid(net.dictionary, run_dir / "dictionary.png")
    if net.dict_training != "pretrained":
        save_feature_grid(net.dictionary, run_dir / f"dictionary_epoch{epoch:03d}.png")
