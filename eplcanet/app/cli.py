"""Command line of main_fast.py: the seed's flags, validated before any long work starts."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
from pathlib import Path

from ..data import TASKS
from .entry import (COUNT, DEVICE_HELP, FINITE, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Parser, number,
                    run_command)
from ..energy.activations import ACTIVATIONS, ANALYTIC
from ..energy.learning import ALGORITHMS
from ..energy.networks import CONV_ALGOS, LOSSES, POOLS, UPDATE_ORDERS
from .train import PRECISIONS
from .lca import add_lca_arguments, check_lca_dictionary, validate_lca
from ..corruptions import CORRUPTIONS, SEVERITIES
from .robustness import NORM_CHOICES, ROBUSTNESS_TODOS, check_args

MODELS = ("MLP", "CNN", "VFCNN", "LCACNN", "FFCNN", "VFMLP")
MLP_MODELS = ("MLP", "VFMLP")  # fully connected: --archi instead of the conv layer flags
TODOS = ("train", "evaluate", "gducheck", *ROBUSTNESS_TODOS)
OPTIMS = ("sgd", "adam")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="main_fast.py",
        description="Train an energy-based recurrent network with Equilibrium Propagation. "
        "With no flags: a small EP CNN on scikit-learn's bundled digits (offline).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    # model
    a("--model", default="CNN", choices=MODELS, help="network family")
    a("--archi", type=COUNT, nargs="+", default=None,
      help="MLP / VFMLP layer sizes: input, hidden..., classes (e.g. 64 256 10)")
    a("--channels", type=COUNT, nargs="+", default=[32, 64], help="conv feature maps per layer")
    a("--kernels", type=COUNT, nargs="+", default=None, help="conv kernel sizes (default 3 each)")
    a("--strides", type=COUNT, nargs="+", default=None, help="conv strides (default 1 each)")
    a("--paddings", type=number(int, low=0), nargs="+", default=None, help="conv paddings (default 1 each)")
    a("--pools", type=str, default=None,
      help="one of m (max), a (avg), i (none) per conv layer (default m each); "
      "LCACNN: see its group below")
    a("--fc", type=COUNT, nargs="+", default=[10], help="fully connected layers; last = classes")
    a("--act", default="my_hard_sig", choices=sorted(ACTIVATIONS), help="neuron activation")
    a("--scale", type=POSITIVE, default=None, help="multiplies the weight initialisation")
    a("--same-update", action="store_true",
      help="VFCNN / VFMLP: feedback weights get W's update (VFMLP: the one they get anyway)")
    # data
    a("--task", default="digits", choices=TASKS, help="dataset")
    a("--data-dir", default="./data", help="torchvision dataset root")
    a("--data-path", default=None, help="the .npz file for --task npz (arrays x, y)")
    a("--download", action="store_true", help="let torchvision download the dataset")
    a("--image-size", type=COUNT, default=None, help="resize digits (8x8) to this size")
    a("--val-fraction", type=FRACTION, default=0.1, help="share of training data for validation")
    a("--data-aug", action="store_true", help="random crops (and flips for colour images)")
    # algorithm
    a("--todo", default="train", choices=TODOS, help="what to do")
    a("--alg", default="EP", choices=ALGORITHMS, help="gradient estimator")
    a("--T1", type=COUNT, default=20, help="free-phase steps")
    a("--T2", type=COUNT, default=4, help="nudged-phase steps (BPTT: steps backpropagated)")
    a("--updates", default="sync", choices=UPDATE_ORDERS,
      help="relaxation order: sync (every layer from the previous step) or alternate (even "
           "layers, then odd layers from the new even ones: equilibrium in about half the steps "
           "at 1.5x the cost of a step; changes the dynamics, so off by default)")
    a("--tol", type=number(float, low=0.0, low_open=True, example="1e-6"), default=None,
      help="EP: stop each phase (training and evaluation) once the largest per-layer relative "
           "state change of a step is below TOL for every sample, tested every 5 steps; --T1, "
           "--T2 and --warm-start become caps, and the metrics log gets the steps used per "
           "epoch (mean, max). Off by default: the published recipes relax for fixed steps. "
           "1e-6 gives the fixed-step EP estimate where those steps settle; fp32 states do "
           "not settle much below 1e-7")
    a("--warm-start", type=int, default=None, metavar="STEPS",
      help="EP training: each minibatch's free phase starts from the states its samples reached "
           "in their previous free phase (kept in float16, one set per training sample) and runs "
           "STEPS steps instead of --T1; the first epoch starts from zero. Evaluation still "
           "relaxes from zero for --T1 steps. Off by default: it changes the algorithm")
    a("--betas", type=FINITE, nargs=2, default=[0.0, 0.5], metavar=("BETA1", "BETA2"))
    a("--random-sign", action="store_true", help="random sign of beta2 per minibatch")
    a("--cep-debug", action="store_true",
      help="--alg CEP: at the first minibatch of every epoch, print per parameter tensor the "
           "norm of the summed per-step updates (each divided by its learning rate) and of the "
           "one-shot one-sided EP estimate of the same minibatch from the weights before it, "
           "their cosine and relative difference (close to 0 at small --lrs: the GDU property "
           "of CEP). Computed on a copy of the network: training is unchanged")
    a("--thirdphase", action=argparse.BooleanOptionalAction, default=True,
      help="symmetric estimate: second phases at +beta2 and -beta2 (--no-thirdphase: one-sided)"
           "; ignored by --alg hEP")
    a("--hep-points", type=number(int, low=2), default=None, metavar="N",
      help="--alg hEP (holomorphic EP; default 4): nudged phases at the N complex betas "
           "|BETA2| exp(2 pi i k / N) around the free phase (BETA1 must be 0); the estimate's "
           "bias falls like |BETA2|^N (N = 2 is the symmetric estimate), a minibatch costs N "
           "real nudged phases (2 for symmetric EP). Needs --model MLP or CNN, an analytic "
           f"--act ({', '.join(ANALYTIC)}) and no max pooling; --thirdphase is ignored "
           "(docs/estimators.md)")
    a("--loss", default="cel", choices=LOSSES, help="loss nudging the output")
    a("--softmax", action=argparse.BooleanOptionalAction, default=True,
      help="last fc layer is a softmax readout (--no-softmax: the output layer is neurons)")
    # optimisation
    a("--optim", default="sgd", choices=OPTIMS)
    a("--lrs", type=NON_NEGATIVE, nargs="+", default=None,
      help="learning rate per synapse layer (default 0.1 sgd / 1e-3 adam, each)")
    a("--wds", type=NON_NEGATIVE, nargs="+", default=None, help="weight decay per synapse layer")
    a("--mmt", type=number(float, low=0.0, high=1.0, high_open=True), default=0.9,
      help="SGD momentum, in [0, 1)")
    a("--lr-decay", action="store_true", help="cosine learning-rate decay over the epochs")
    a("--epochs", type=COUNT, default=10)
    a("--mbs", type=COUNT, default=32, help="minibatch size")
    # run
    a("--device", default="auto", help=DEVICE_HELP)
    a("--seed", type=SEED, default=0)
    a("--conv-algo", default="auto", choices=CONV_ALGOS,
      help="relaxation and update convolutions: auto (Winograd F(4x4) for stride-1 3x3 layers "
           "with 128+ channels and 5x5 layers with 32+, on CPU in fp32 when its C kernels "
           "build, 1.4-2.4x faster there; direct elsewhere), winograd (every stride-1 3x3 and "
           "5x5 layer) or direct (never Winograd); all three give the direct estimate (max-pool "
           "ties follow the input: eplcanet.energy.pool_ties; check a recipe with "
           "python -m eplcanet.app.diagnose)")
    a("--precision", default="fp32", choices=PRECISIONS,
      help="bf16: autocast the free phase's convolutions (states, the nudged phases and the "
           "update stay fp32: docs/performance.md); tf32: TF32 tensor cores (CUDA)")
    a("--save", action="store_true", help="write a run directory with metrics and checkpoints")
    a("--tensorboard", action="store_true",
      help="train: also log to RUN/tensorboard (torch.utils.tensorboard): the metrics.csv "
      "columns, learning rates, per-layer activity histograms and the activity figure")
    a("--debug", action="store_true",
      help="show the traceback of an error (default: one line, exit code 2)")
    a("--results-dir", default="./results", help="where run directories go")
    a("--load-path", default=None, help="run directory to resume (train) or evaluate")
    a("--check-thm", action="store_true", help="train: run the GDU check at each epoch end")
    a("--gdu-batch", type=COUNT, default=8, help="gducheck: number of samples")
    # robustness: --todo attack / corrupt on the best model of --load-path (eplcanet.app.robustness)
    a("--attack-norm", default="both", choices=NORM_CHOICES, help="attack: PGD norm(s)")
    a("--epsilons", type=NON_NEGATIVE, nargs="+", default=None,
      help="attack: radii in pixel units (pixels in [0, 1]); needs one --attack-norm (default: "
      "Linf 0 .05 .1 .15 .2 .3 and L2 0 .5 1 1.5 2 3 for grey images, CIFAR-scale for colour)")
    a("--predict-step", type=COUNT, nargs="+", default=None,
      help="attack/corrupt: free steps before every prediction (default --T1); several values "
      "make a step study (attack.csv holds every pair, steps.png draws it)")
    a("--attack-step", type=COUNT, nargs="+", default=None,
      help="attack: the gradient flows through the last N of the --predict-step steps "
      "(default all: the exact gradient); several values: each one up to each --predict-step")
    a("--pgd-steps", type=int, default=20, help="attack: PGD iterations per radius")
    a("--attacks", nargs="+", default=None, metavar="NAME",
      help="attack: ART attacks to run, among pgd apgd-ce apgd-dlr square hopskipjump "
      "(default all)")
    a("--hsj-samples", type=number(int, low=0), default=100,
      help="attack: HopSkipJump (decision-based, thousands of predictions per image) runs on "
      "the first N attacked images (0: not at all)")
    a("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS,
      metavar="NAME", help=f"corrupt: among {' '.join(CORRUPTIONS)}")
    a("--severities", type=int, nargs="+", default=list(SEVERITIES), choices=SEVERITIES,
      help="corrupt: severities")
    a("--attack-samples", type=int, default=1000,
      help="attack/corrupt: test images used (a seeded random subset; at most the test set)")
    add_lca_arguments(p)
    return p


def _expand(name: str, values, n: int, default):
    if values is None:
        return [default] * n
    if len(values) != n:
        raise SystemExit(
            f"error: --{name} needs {n} value(s), one per conv layer (--channels has {n}), "
            f"got {len(values)}: {values}"
        )
    return list(values)


def n_synapses(args) -> int:
    """Number of synapse layers (each gets one --lrs / --wds entry)."""
    if args.model in MLP_MODELS:
        return len(args.archi) - 1 if args.archi else len(args.fc)
    return len(args.channels) + len(args.fc)


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults that depend on other flags and refuse inconsistent combinations.

    Raises SystemExit with a message saying what to give, before any data is loaded.
    """
    validate_lca(args)  # LCACNN: the seed's layer lists, the dictionary flags
    if args.model not in MLP_MODELS:
        n = len(args.channels)
        args.kernels = _expand("kernels", args.kernels, n, 3)
        args.strides = _expand("strides", args.strides, n, 1)
        args.paddings = _expand("paddings", args.paddings, n, 1)
        if args.pools is None:
            args.pools = "m" * n
        if len(args.pools) != n or any(c not in POOLS for c in args.pools):
            raise SystemExit(
                f"error: --pools needs one of 'm', 'a', 'i' per conv layer ({n}), got {args.pools!r}"
            )
    elif args.archi is not None and len(args.archi) < 2:
        raise SystemExit("error: --archi needs the input size and at least the output size")
    n = n_synapses(args)
    default_lr = 0.1 if args.optim == "sgd" else 1e-3
    for name, default in (("lrs", default_lr), ("wds", 0.0)):
        values = getattr(args, name)
        if values is None:
            setattr(args, name, [default] * n)
        elif len(values) != n:
            raise SystemExit(
                f"error: --{name} needs {n} value(s), one per synapse layer "
                f"({'conv + fc' if args.model not in MLP_MODELS else 'MLP layers'}), "
                f"got {len(values)}"
            )
    if args.alg == "BPTT" and args.T2 > args.T1:
        raise SystemExit(f"error: BPTT backpropagates T2 of T1 steps: need T2 <= T1 "
                         f"(T1={args.T1}, T2={args.T2})")
    check_feedforward(args)
    check_cep(args)
    check_holomorphic(args)
    if args.betas[0] == args.betas[1]:
        raise SystemExit(f"error: --betas must differ, got {args.betas}")
    if args.warm_start is not None:
        if args.warm_start < 1:
            raise SystemExit(f"error: --warm-start must be >= 1 steps, got {args.warm_start}")
        if args.alg != "EP":
            raise SystemExit(f"error: --warm-start applies to --alg EP, not {args.alg}")
    if args.tol is not None and args.alg != "EP":
        raise SystemExit(f"error: --tol applies to --alg EP; {args.alg} differentiates a fixed "
                         f"number of steps (drop --tol)")
    if args.random_sign and args.thirdphase:
        raise SystemExit("error: --random-sign only changes one-sided EP: add --no-thirdphase")
    if args.task == "npz" and not args.data_path:
        raise SystemExit("error: --task npz needs --data-path FILE.npz (arrays x and y)")
    if args.tensorboard:
        if not (args.save or (args.load_path and args.todo == "train")):
            raise SystemExit("error: --tensorboard logs into the run directory: add --save (or "
                             "resume a run with --load-path)")
        if importlib.util.find_spec("tensorboard") is None:
            raise SystemExit("error: --tensorboard needs the tensorboard package: "
                             "pip install tensorboard (it is in requirements.txt)")
    if args.todo == "evaluate" and not args.load_path:
        raise SystemExit("error: --todo evaluate needs --load-path RUN_DIR")
    if args.todo in ROBUSTNESS_TODOS:
        check_args(args)  # --load-path, norms, radii, steps, corruptions
    if args.same_update and args.model not in ("VFCNN", "VFMLP"):
        raise SystemExit("error: --same-update only applies to --model VFCNN or VFMLP")
    check_lca_dictionary(args)  # last: LCACNN's --lca-dict file fits the flags
    return args


def check_holomorphic(args: argparse.Namespace) -> None:
    """--alg hEP needs dynamics that are holomorphic in the states: an energy-based MLP or CNN
    with an analytic activation and no max pooling, nudged on a circle around beta = 0."""
    if args.alg != "hEP":
        if args.hep_points is not None:
            raise SystemExit(f"error: --hep-points applies to --alg hEP, not {args.alg}")
        return
    if args.hep_points is None:
        args.hep_points = 4
    if args.model not in ("MLP", "CNN"):
        raise SystemExit(f"error: --alg hEP needs --model MLP or CNN (symmetric weights, an "
                         f"energy); got --model {args.model}")
    if args.act not in ANALYTIC:
        raise SystemExit(f"error: --alg hEP needs an analytic activation (--act "
                         f"{' | '.join(ANALYTIC)}); got --act {args.act}")
    if args.model == "CNN" and "m" in args.pools:
        raise SystemExit(f"error: --alg hEP needs holomorphic dynamics and max pooling is not "
                         f"(--pools {args.pools}); accepted per layer: a (average), i (none)")
    if args.betas[0] != 0.0:
        raise SystemExit(f"error: --alg hEP nudges on a circle around the free phase: needs "
                         f"--betas 0 R (radius |R|), got --betas {_shown(args.betas)}")
    if args.tol is not None:
        raise SystemExit("error: --alg hEP relaxes each nudged phase for exactly --T2 steps; "
                         "--tol applies to --alg EP (drop --tol)")
    if args.random_sign:
        raise SystemExit("error: --random-sign only changes one-sided EP, not --alg hEP")


def check_cep(args: argparse.Namespace) -> None:
    """--alg CEP (continual EP: the weights move after every nudged step) runs where the
    reference ran it, on the MLPs, one-sided, each step a plain SGD step; --cep-debug needs it."""
    if args.cep_debug and args.alg != "CEP":
        raise SystemExit(f"error: --cep-debug compares CEP's per-step updates with EP: it applies "
                         f"to --alg CEP, not --alg {args.alg}")
    if args.alg != "CEP":
        return
    if args.model not in MLP_MODELS:
        raise SystemExit(f"error: --alg CEP runs on the fully connected networks, as in the "
                         f"reference: --model {' or '.join(MLP_MODELS)}, not --model {args.model}")
    if args.thirdphase:
        raise SystemExit("error: --alg CEP is one-sided (each nudged step moves the weights, so "
                         "there is no second phase from the same weights): add --no-thirdphase")
    if args.todo != "train":
        return
    if args.optim != "sgd":
        raise SystemExit(f"error: --alg CEP applies a plain SGD step (the --lrs of each layer) "
                         f"after every nudged step; --optim {args.optim} is not that: "
                         f"accepted: --optim sgd")
    if args.mmt != 0:
        raise SystemExit(f"error: --alg CEP applies plain SGD steps: momentum would carry each "
                         f"step's update into the later steps and minibatches; add --mmt 0 "
                         f"(got --mmt {args.mmt:g})")


def check_feedforward(args: argparse.Namespace) -> None:
    """--model FFCNN (the feed-forward baseline) trains with --alg BP only, and BP applies to it
    only; its relaxation computes the feed-forward pass once it runs one step per layer
    (eplcanet/energy/feedforward.py), so --T1 (the prediction's steps) must reach that."""
    if (args.model == "FFCNN") != (args.alg == "BP"):
        raise SystemExit(f"error: --alg BP trains the feed-forward --model FFCNN and FFCNN "
                         f"trains with BP only (got --model {args.model} --alg {args.alg})")
    if args.model != "FFCNN":
        return
    if args.todo == "gducheck" or args.check_thm:
        raise SystemExit("error: the GDU check compares EP with BPTT on an energy-based model; "
                         "--model FFCNN has no energy (use --model CNN)")
    layers = len(args.channels) + len(args.fc) - int(args.softmax)
    # (--predict-step and --attack-step default to --T1; a shorter attack gradient would be
    # truncated, which the feed-forward network never needs)
    for flag in ("--T1", "--predict-step", "--attack-step"):
        value = getattr(args, flag[2:].replace("-", "_"))
        value = min(value) if isinstance(value, list) else value  # the step flags take lists
        if value is not None and value < layers:
            raise SystemExit(f"error: --model FFCNN computes its {layers} layers in {layers} "
                             f"relaxation steps: need {flag} >= {layers}, got {value}")


# What one invocation does, not what the run is: never taken from a loaded run.
_PER_INVOCATION = {"todo", "load_path", "device", "save", "results_dir", "download", "debug",
                   "tensorboard"}
# What a run is (its network and its data split): every use of a loaded run takes these from its
# hyperparameters.json, and a flag that contradicts them is an error.
RUN_IDENTITY = {"model", "archi", "channels", "kernels", "strides", "paddings", "pools", "fc",
                "act", "softmax", "loss", "same_update", "lca_feats", "lca_ksize", "lca_stride",
                "sparse_coder", "dict_training", "task", "data_path", "image_size",
                "val_fraction", "seed"}
# What may change when training resumes (applied from the resumed epoch on: the learning rates
# replace the optimiser's, the cosine decay stretches to the new --epochs); every other flag
# of the run must stay as it was. Evaluation and the robustness todos may change anything
# outside RUN_IDENTITY (they measure the trained network with other settings).
RESUME_MAY_CHANGE = {"epochs", "lrs", "check_thm", "gdu_batch", "conv_algo", "precision",
                     "cep_debug"}


def run_defaults(parser: argparse.ArgumentParser, load_path: str) -> dict:
    """The flags a run at load_path was made with (its hyperparameters.json), as parser defaults:
    `--todo evaluate --load-path RUN` then rebuilds the run's network, data split (--seed) and
    dynamics without repeating its flags; a flag given on the command line still wins."""
    record = Path(load_path) / "hyperparameters.json"
    if not record.is_file():
        return {}
    known = {action.dest for action in parser._actions}
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: --load-path {load_path}: cannot read {record.name} ({err})")
    if not isinstance(saved, dict) or "model" not in saved or "alg" not in saved:
        raise SystemExit(f"error: --load-path {load_path} is not a main_fast.py run (its "
                         f"{record.name} names no --model / --alg; a cifar_dictlearning.py run's "
                         f"dictionary.pt goes to --lca-dict)")
    if saved.get("alg") != "hEP":  # runs of one version stored --hep-points' default for every alg
        saved.pop("hep_points", None)
    return {k: v for k, v in saved.items() if k in known and k not in _PER_INVOCATION}


def main(argv: list[str] | None = None) -> int:
    """main_fast.py: parse, validate and run; returns the exit code (eplcanet.app.entry)."""
    from .experiment import run  # the application below the flags, loaded once they are valid

    return run_command(lambda: run(parse_args(argv), argv), argv)


def _given(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not defaulted)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_known_args(argv)[0]))


def check_loaded_run(parser, args: argparse.Namespace, saved: dict,
                     argv: list[str] | None) -> None:
    """Refuse flags that contradict the loaded run (RUN_IDENTITY; for resumed training, all but
    RESUME_MAY_CHANGE), compared after validation fills and trims the layer lists, naming
    every difference."""
    free = _PER_INVOCATION | (RESUME_MAY_CHANGE if args.todo == "train" else
                              set(saved) - RUN_IDENTITY)
    differ = [k for k in sorted(_given(argv) & set(saved) - free) if getattr(args, k) != saved[k]]
    if differ:
        try:
            normal = validate(copy.deepcopy(args))
            differ = [k for k in differ if getattr(normal, k) != saved[k]]
        except SystemExit:
            pass
    if differ:
        flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
        what = "; ".join(f"{flag[k]} {_shown(getattr(args, k))} (the run has {_shown(saved[k])})"
                         for k in differ)
        allowed = (f"resuming may change {', '.join(flag[k] for k in sorted(RESUME_MAY_CHANGE))}"
                   if args.todo == "train" else "the network and data split are the run's")
        raise SystemExit(f"error: --load-path {args.load_path} was made with other values: "
                         f"{what}; drop these flags ({allowed}), or train a new run")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    saved = run_defaults(parser, first.load_path) if first.load_path else {}
    parser.set_defaults(**saved)
    args = parser.parse_args(argv)
    if saved:
        check_loaded_run(parser, args, saved, argv)
    args = validate(args)
    # The relaxation order is a flag, not part of the weights: an explicit other order measures
    # the loaded run with other dynamics, so say so (runs from before the flag relaxed in sync).
    trained = saved.get("updates", "sync")
    if saved and trained != args.updates:
        print(f"warning: {args.load_path} was trained with --updates {trained}; this run relaxes "
              f"with --updates {args.updates} (pass --updates {trained} to match)")
    return args
