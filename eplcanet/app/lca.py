"""The LCA-RCNN part of main_fast.py (--model LCACNN): flags, their checks, the model, the code
cache and the dictionary files of a run.

``cli.py`` adds the flags with :func:`add_lca_arguments` and checks them with :func:`validate_lca`
and :func:`check_lca_dictionary` before any data is loaded; ``experiment.py`` builds the model with :func:`build_lca_cnn`, fills the
code cache with :func:`prepare_code_cache` and, at every epoch end of a saved run, writes the
dictionary with :func:`save_dictionary_artifacts`.

Seed compatibility. The seed's LCACNN commands give ``--pools immmm`` and four --strides /
--paddings and five --wds for three conv layers and one fc layer: for LCACNN the first character
of --pools belongs to the copy layer s_0 (which has no pooling: 'i'), the next ones to the conv
layers, and extra trailing entries of --pools, --kernels, --strides, --paddings, --lrs and --wds
are ignored with a warning naming them. A --pools with exactly one character per conv layer is
taken as the conv layers' pools. Other models keep refusing any mismatch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..data import make_loader
from ..energy.dynamics import Relaxation
from ..energy.lcacnn import DICT_MODES, LCA_CNN
from .entry import COUNT, FINITE, NON_NEGATIVE, number
from ..sparse import DictionaryFileError, load_dictionary, make_sparse_coder, save_dictionary
from ..sparse.analysis import save_feature_grid
from ..sparse.lca import SOLVERS

SPARSE_CODER_CHOICES = ("lca", "mp")
DEFAULT_DICT = "images/lca_dictionary_cifar10.pt"
MAKE_DICT_HINT = (
    "learn one with cifar_dictlearning.py, e.g. `python cifar_dictlearning.py --task CIFAR10 "
    "--data-dir ./data --out images/lca_dictionary_cifar10.pt` (same --lca_feats, --lca_ksize "
    "and image channels), or use --dict_training learn"
)

# dest -> (flag, default): the flags that only --model LCACNN reads.
_LCA_FLAGS = {
    "lca_feats": ("--lca_feats", 64),
    "lca_lambda": ("--lca_lambda", 0.25),
    "lca_tau": ("--lca_tau", 100.0),
    "lca_eta": ("--lca_eta", 0.05),
    "lca_iters": ("--lca_iters", 600),
    "lca_stride": ("--lca_stride", 2),
    "lca_ksize": ("--lca_ksize", 9),
    "lca_solver": ("--lca-solver", "lca"),
    "dict_training": ("--dict_training", "pretrained"),
    "scale_feedback": ("--scale_feedback", 1.0),
    "lca_dict": ("--lca-dict", DEFAULT_DICT),
    "sparse_coder": ("--sparse-coder", "lca"),
    "mp_k": ("--mp-k", 32),
    "dict_update_every": ("--dict-update-every", 1),
    "cache_codes": ("--cache-codes", False),
}


def add_lca_arguments(parser: argparse.ArgumentParser) -> None:
    """The LCACNN flags (the seed's names), in their own --help group."""
    g = parser.add_argument_group(
        "LCA-RCNN (--model LCACNN)",
        "A sparse-coding layer in front of the EP network: its code a drives a free copy layer "
        "s0 <- sigma(a + scale_feedback * feedback from s1). --pools then takes one leading "
        "character for s0 ('i') before one per conv layer (exactly one per conv layer also "
        "works); extra trailing entries of --pools/--kernels/--strides/--paddings/--lrs/--wds "
        "are ignored with a warning, so the seed's commands run as written.",
    )
    a = g.add_argument
    d = {dest: default for dest, (_, default) in _LCA_FLAGS.items()}
    a("--lca_feats", type=COUNT, default=d["lca_feats"], help="number of dictionary atoms F")
    a("--lca_lambda", type=NON_NEGATIVE, default=d["lca_lambda"], help="LCA threshold lambda")
    a("--lca_tau", type=number(float, low=1.0), default=d["lca_tau"],
      help="LCA time constant tau (>= 1: the Euler step is 1/tau)")
    a("--lca_eta", type=NON_NEGATIVE, default=d["lca_eta"],
      help="Hebbian learning rate of the dictionary (finetune, learn)")
    a("--lca_iters", type=COUNT, default=d["lca_iters"], help="LCA iterations per image")
    a("--lca_stride", type=COUNT, default=d["lca_stride"], help="stride of the atoms")
    a("--lca_ksize", type=COUNT, default=d["lca_ksize"], help="atom size (odd)")
    a("--lca-solver", default=d["lca_solver"], choices=SOLVERS,
      help="lca: the seed's Euler dynamics; fista: the same optimum in fewer iterations")
    a("--dict_training", default=d["dict_training"], choices=DICT_MODES,
      help="pretrained: --lca-dict, fixed; finetune: --lca-dict, then Hebbian updates from the "
      "nudged copy layer; learn: random atoms, then the same updates")
    a("--scale_feedback", type=FINITE, default=d["scale_feedback"],
      help="weight of the top-down input of the copy layer s0 (1: gradient dynamics of Phi)")
    a("--lca-dict", default=d["lca_dict"], metavar="PATH",
      help="dictionary file (from cifar_dictlearning.py) for pretrained and finetune")
    a("--sparse-coder", default=d["sparse_coder"], choices=SPARSE_CODER_CHOICES,
      help="lca (LCAConv2D) or mp (convolutional matching pursuit, --mp-k steps)")
    a("--mp-k", type=COUNT, default=d["mp_k"], help="matching-pursuit steps per image")
    a("--dict-update-every", type=COUNT, default=d["dict_update_every"], metavar="N",
      help="a dictionary update every N minibatches (finetune, learn)")
    a("--cache-codes", action="store_true",
      help="compute the codes of every image once and reuse them (pretrained, no --data-aug)")


def _fail(message: str) -> None:
    raise SystemExit(f"error: {message}")


def _trim(args: argparse.Namespace, name: str, n: int, ignored: list[str]) -> None:
    values = getattr(args, name)
    if values is not None and len(values) > n:
        ignored.append(f"--{name} {' '.join(str(v) for v in values[n:])}")
        setattr(args, name, list(values[:n]))


def _dictionary_file_needed(args: argparse.Namespace) -> bool:
    """A new training run in pretrained/finetune loads --lca-dict (others load a checkpoint)."""
    return (args.dict_training in ("pretrained", "finetune") and args.todo == "train"
            and not args.load_path)


def validate_lca(args: argparse.Namespace) -> argparse.Namespace:
    """Check the LCACNN flags (and adapt the seed's layer lists) before the generic checks.

    Other models: refuse LCA flags that differ from their defaults. LCACNN: apply the --pools rule
    and drop extra trailing list entries with a warning (module docstring), check ranges and the
    mode combinations. Raises SystemExit with a message. The dictionary file is checked last, by
    :func:`check_lca_dictionary`.
    """
    if args.model != "LCACNN":
        given = [flag for dest, (flag, default) in _LCA_FLAGS.items()
                 if getattr(args, dest, default) != default]
        if given:
            _fail(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to "
                  "--model LCACNN")
        return args
    n = len(args.channels)
    ignored: list[str] = []
    pools = args.pools
    if pools is not None and len(pools) > n:
        if pools[0] != "i":
            _fail(f"--pools {pools!r}: for LCACNN the first character belongs to the copy layer "
                  "s0, which has no pooling: it must be 'i' (e.g. 'i' + one of m/a/i per conv "
                  "layer), or give exactly one character per conv layer")
        if len(pools) > n + 1:
            ignored.append(f"--pools {pools!r}: {pools[n + 1:]!r}")
        args.pools = pools[1:n + 1]
    for name in ("kernels", "strides", "paddings"):
        _trim(args, name, n, ignored)
    for name in ("lrs", "wds"):
        _trim(args, name, n + len(args.fc), ignored)
    if ignored:
        print(f"warning: --model LCACNN ignores the extra trailing entries {'; '.join(ignored)} "
              f"({n} conv layers, {n + len(args.fc)} synapse layers)")
    if args.lca_ksize % 2 == 0:
        _fail(f"--lca_ksize must be odd (centred atoms, 'same' padding), got {args.lca_ksize}")
    if args.lca_stride > args.lca_ksize:
        _fail(f"--lca_stride ({args.lca_stride}) must be <= --lca_ksize ({args.lca_ksize})")
    if args.dict_training != "pretrained" and args.alg != "EP":
        _fail(f"--dict_training {args.dict_training} learns the dictionary from EP's nudged "
              "phase: use --alg EP (or --dict_training pretrained)")
    if args.cache_codes:
        if args.dict_training != "pretrained":
            _fail(f"--cache-codes needs a fixed dictionary (--dict_training pretrained); with "
                  f"{args.dict_training} the codes change as the dictionary learns")
        if args.data_aug:
            _fail("--cache-codes cannot be used with --data-aug: augmented images get new codes "
                  "every epoch")
    return args


def check_lca_dictionary(args: argparse.Namespace) -> None:
    """LCACNN: the --lca-dict file of a new pretrained/finetune run exists and fits the flags
    (checked after every other flag, before any data is loaded)."""
    if args.model == "LCACNN" and _dictionary_file_needed(args):
        check_dictionary_file(args.lca_dict, args.lca_feats, args.lca_ksize, args.dict_training)


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


def build_lca_cnn(args: argparse.Namespace, in_shape: tuple[int, int, int],
                  dictionary_sync=None) -> LCA_CNN:
    """The LCACNN of the flags for images of shape (C, H, W), with its dictionary loaded when a
    new pretrained/finetune run starts (a resumed or evaluated run loads its checkpoint's);
    dictionary_sync: the multi-process context its dictionary steps share (LCA_CNN)."""
    common = {"out_neurons": args.lca_feats, "in_neurons": in_shape[0],
              "kernel_size": args.lca_ksize, "stride": args.lca_stride, "pad": "same",
              "eta": args.lca_eta}
    if args.sparse_coder == "lca":
        coder = make_sparse_coder(
            "lca", **common, lambda_=args.lca_lambda, tau=args.lca_tau, lca_iters=args.lca_iters,
            solver=args.lca_solver, input_zero_mean=False, input_unit_var=False)
    else:
        coder = make_sparse_coder("mp", **common, k=args.mp_k)
    try:
        net = LCA_CNN(in_shape, coder, args.channels, args.kernels, args.strides, args.paddings,
                      args.pools, args.fc, act=args.act, softmax=args.softmax, loss=args.loss,
                      scale=args.scale,
                      relaxation=Relaxation(args.updates, args.conv_algo, args.tol),
                      scale_feedback=args.scale_feedback,
                      dict_training=args.dict_training, dict_update_every=args.dict_update_every,
                      dictionary_sync=dictionary_sync)
    except ValueError as err:
        _fail(f"--model LCACNN on {in_shape} images: {err}")
    if _dictionary_file_needed(args):
        weight, config = check_dictionary_file(args.lca_dict, args.lca_feats, args.lca_ksize,
                                               args.dict_training)
        if weight.shape[1] != in_shape[0]:
            _fail(f"--lca-dict {args.lca_dict} has atoms for {weight.shape[1]} input channel(s), "
                  f"the images have {in_shape[0]}; {MAKE_DICT_HINT}")
        net.load_dictionary_weights(weight)
        learned = ", ".join(f"{k} {config[k]}" for k in ("task", "stride", "lambda_")
                            if k in config)
        print(f"dictionary {args.lca_dict}: {tuple(weight.shape)} ({learned})")
        if config.get("stride", args.lca_stride) != args.lca_stride:
            print(f"warning: the dictionary was learned with stride {config['stride']}, "
                  f"--lca_stride is {args.lca_stride}")
    return net


def prepare_code_cache(args: argparse.Namespace, net, splits, device) -> None:
    """With --cache-codes: code every image of the train, val and test splits once."""
    if not isinstance(net, LCA_CNN) or not getattr(args, "cache_codes", False):
        return
    t0 = time.perf_counter()
    net.enable_code_cache()
    for name in ("train", "val", "test"):
        loader = make_loader(getattr(splits, name), args.mbs, shuffle=False)
        batches = (x.to(device) for x, _ in loader)
        net.fill_code_cache(batches, total=len(loader), desc=f"codes ({name})")
    cache = net.code_cache
    print(f"cached the codes of {len(cache)} images ({cache.nbytes() / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - t0:.1f}s")


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
        "preprocessing": "per-image zero mean, unit variance",
    }
    if hasattr(coder, "lambda_") and isinstance(coder.lambda_, float):
        config["lambda_"] = coder.lambda_
    save_dictionary(run_dir / "dictionary.pt", net.dictionary, config)
    save_feature_grid(net.dictionary, run_dir / "dictionary.png")
    if net.dict_training != "pretrained":
        save_feature_grid(net.dictionary, run_dir / f"dictionary_epoch{epoch:03d}.png")
