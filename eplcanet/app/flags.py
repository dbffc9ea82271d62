"""Every command-line flag of main_fast.py and cifar_dictlearning.py, defined once.

A flag is its names, its argparse type (which refuses NaN, infinities and out-of-range values
with a message naming the flag), its choices, its default and its help. Which flags an
application has, and in which group, is decided by the settings dataclasses of
:mod:`eplcanet.app.settings` (one field per flag); an application may give a flag another
default there (the dictionary-learning recipe), never another meaning. Nothing here imports
the rest of the application.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..corruptions import CORRUPTIONS, SEVERITIES
from ..data import TASKS
from ..energy.activations import ACTIVATIONS, ANALYTIC
from ..energy.estimators import ALGORITHMS
from ..energy.lcacnn import DICT_MODES
from ..energy.dynamics import CONV_ALGOS, UPDATE_ORDERS
from ..energy.networks import LOSSES
from ..sparse.lca import SOLVERS
from .entry import COUNT, DEVICE_HELP, FINITE, FRACTION, NON_NEGATIVE, POSITIVE, SEED, number
from .robustness import ATTACK_NAMES, NORM_CHOICES
from .train import PRECISIONS

MODELS = ("MLP", "CNN", "VFCNN", "LCACNN", "FFCNN", "VFMLP")
MLP_MODELS = ("MLP", "VFMLP")  # fully connected: --archi instead of the conv layer flags
ROBUSTNESS_TODOS = ("attack", "corrupt")
TODOS = ("train", "evaluate", "gducheck", *ROBUSTNESS_TODOS)
OPTIMS = ("sgd", "adam")
SPARSE_CODERS = ("lca", "mp")
DEFAULT_DICT = "images/lca_dictionary_cifar10.pt"
DICTLEARNING_TASKS = ("patches", *TASKS)


def task_name(text: str) -> str:
    """--task, case-insensitive (the seed's scripts spell it cifar10 and CIFAR10)."""
    canonical = {t.lower(): t for t in DICTLEARNING_TASKS}
    return canonical.get(text.lower(), text)  # an unknown name is left for `choices` to refuse


def lambda_schedule(spec: str) -> str:
    """--lambda-schedule: 'constant' or 'linear:START:EPOCHS' (START >= 0, EPOCHS > 0)."""
    parse_lambda_schedule(spec, 1.0)
    return spec


def parse_lambda_schedule(spec: str, target: float) -> tuple[float, float]:
    """(start, warmup_epochs) of a --lambda-schedule ramping lambda to `target`."""
    if spec == "constant":
        return target, 0.0
    parts = spec.split(":")
    try:
        if parts[0] != "linear" or len(parts) != 3:
            raise ValueError
        start, epochs = float(parts[1]), float(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'constant' or 'linear:START:EPOCHS', got {spec!r}") from None
    if not (start >= 0 and epochs > 0):
        raise argparse.ArgumentTypeError(f"{spec!r}: START must be >= 0 and EPOCHS > 0")
    return start, epochs


@dataclass(frozen=True)
class Flag:
    """One flag: its names (the first is the canonical one) and its add_argument keywords."""

    names: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)
    deprecated: tuple[str, ...] = ()  # old spellings: accepted with a warning, not in --help

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-").replace("-", "_")


class _Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new one's destination and says so."""

    def __init__(self, option_strings, dest, canonical: str, **kwargs):
        self.canonical = canonical
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.canonical} (same meaning)")
        setattr(namespace, self.dest, values)


def add_flag(group, flag: Flag, **override) -> None:
    """Add `flag` to an argparse parser or group, with `override`n keywords (a default)."""
    kwargs = {**flag.kwargs, **override}
    group.add_argument(*flag.names, **kwargs)
    for old in flag.deprecated:
        group.add_argument(old, dest=flag.dest, action=_Deprecated, canonical=flag.names[0],
                           help=argparse.SUPPRESS,
                           **{k: v for k, v in kwargs.items() if k in ("type", "choices")})


def _f(*names: str, deprecated: tuple[str, ...] = (), **kwargs) -> Flag:
    return Flag(names, kwargs, deprecated)


_ALL = (
    # data
    _f("--task", default="digits", type=task_name, choices=TASKS, help="dataset"),
    _f("--data-dir", default="./data", help="torchvision dataset root"),
    _f("--data-path", default=None, help="the .npz file for --task npz (arrays x, y)"),
    _f("--download", action="store_true", help="let torchvision download the dataset"),
    _f("--image-size", type=COUNT, default=None, help="resize digits (8x8) to this size"),
    _f("--val-fraction", type=FRACTION, default=0.1, help="share of training data for validation"),
    _f("--data-aug", action="store_true", help="random crops (and flips for colour images)"),
    _f("--crop-pad", type=number(int, low=0), default=None,
       help="--data-aug's crop padding in pixels (edge replicated; shifts of up to this many "
            "pixels); default 4 at 32x32, scaled with the image size (4 for 28x28 MNIST)"),
    _f("--n-images", type=COUNT, default=None,
       help="training images used (default: all; 512 for patches)"),
    _f("--n-eval", type=COUNT, default=128, help="held-out images for evaluation"),
    # model
    _f("--model", default="CNN", choices=MODELS, help="network family"),
    _f("--archi", type=COUNT, nargs="+", default=None,
       help="MLP / VFMLP layer sizes: input, hidden..., classes (e.g. 64 256 10)"),
    _f("--channels", type=COUNT, nargs="+", default=[32, 64], help="conv feature maps per layer"),
    _f("--kernels", type=COUNT, nargs="+", default=None, help="conv kernel sizes (default 3 each)"),
    _f("--strides", type=COUNT, nargs="+", default=None, help="conv strides (default 1 each)"),
    _f("--paddings", type=number(int, low=0), nargs="+", default=None,
       help="conv paddings (default 1 each)"),
    _f("--pools", type=str, default=None,
       help="one of m (max), a (avg), i (none) per conv layer (default m each); "
       "LCACNN: see its group below"),
    _f("--fc", type=COUNT, nargs="+", default=[10], help="fully connected layers; last = classes"),
    _f("--act", default="my_hard_sig", choices=sorted(ACTIVATIONS), help="neuron activation"),
    _f("--scale", type=POSITIVE, default=None, help="multiplies the weight initialisation"),
    _f("--same-update", action="store_true",
       help="VFCNN / VFMLP: feedback weights get W's update (VFMLP: the one they get anyway)"),
    _f("--loss", default="cel", choices=LOSSES, help="loss nudging the output"),
    _f("--softmax", action=argparse.BooleanOptionalAction, default=True,
       help="last fc layer is a softmax readout (--no-softmax: the output layer is neurons)"),
    # estimator
    _f("--alg", default="EP", choices=ALGORITHMS, help="gradient estimator"),
    _f("--T1", type=COUNT, default=20, help="free-phase steps"),
    _f("--T2", type=COUNT, default=4, help="nudged-phase steps (BPTT: steps backpropagated)"),
    _f("--updates", default="sync", choices=UPDATE_ORDERS,
       help="relaxation order: sync (every layer from the previous step) or alternate (even "
       "layers, then odd layers from the new even ones: equilibrium in about half the steps "
       "at 1.5x the cost of a step; changes the dynamics, so off by default)"),
    _f("--tol", type=number(float, low=0.0, low_open=True, example="1e-6"), default=None,
       help="EP: stop each phase (training and evaluation) once the largest per-layer relative "
       "state change of a step is below TOL for every sample, tested every 5 steps; --T1, "
       "--T2 and --warm-start become caps, and the metrics log gets the steps used per "
       "epoch (mean, max). Off by default: the published recipes relax for fixed steps. "
       "1e-6 gives the fixed-step EP estimate where those steps settle; fp32 states do "
       "not settle much below 1e-7"),
    _f("--warm-start", type=COUNT, default=None, metavar="STEPS",
       help="EP training: each minibatch's free phase starts from the states its samples "
       "reached in their previous free phase (kept in float16, one set per training sample) "
       "and runs STEPS steps instead of --T1; the first epoch starts from zero. Evaluation "
       "still relaxes from zero for --T1 steps. Off by default: it changes the algorithm"),
    _f("--betas", type=FINITE, nargs=2, default=[0.0, 0.5], metavar=("BETA1", "BETA2")),
    _f("--random-sign", action="store_true", help="random sign of beta2 per minibatch"),
    _f("--cep-debug", action="store_true",
       help="--alg CEP: at the first minibatch of every epoch, print per parameter tensor the "
       "norm of the summed per-step updates (each divided by its learning rate) and of the "
       "one-shot one-sided EP estimate of the same minibatch from the weights before it, "
       "their cosine and relative difference (close to 0 at small --lrs: the GDU property "
       "of CEP). Computed on a copy of the network: training is unchanged"),
    _f("--thirdphase", action=argparse.BooleanOptionalAction, default=True,
       help="symmetric estimate: second phases at +beta2 and -beta2 (--no-thirdphase: "
       "one-sided); ignored by --alg hEP"),
    _f("--hep-points", type=number(int, low=2), default=None, metavar="N",
       help="--alg hEP (holomorphic EP; default 4): nudged phases at the N complex betas "
       "|BETA2| exp(2 pi i k / N) around the free phase (BETA1 must be 0); the estimate's "
       "bias falls like |BETA2|^N (N = 2 is the symmetric estimate), a minibatch costs N "
       "real nudged phases (2 for symmetric EP). Needs --model MLP or CNN, an analytic "
       f"--act ({', '.join(ANALYTIC)}) and no max pooling; --thirdphase is ignored "
       "(docs/estimators.md)"),
    # optimisation
    _f("--optim", default="sgd", choices=OPTIMS),
    _f("--lrs", type=NON_NEGATIVE, nargs="+", default=None,
       help="learning rate per synapse layer (default 0.1 sgd / 1e-3 adam, each)"),
    _f("--wds", type=NON_NEGATIVE, nargs="+", default=None, help="weight decay per synapse layer"),
    _f("--mmt", type=number(float, low=0.0, high=1.0, high_open=True), default=0.9,
       help="SGD momentum, in [0, 1)"),
    _f("--lr-decay", action="store_true", help="cosine learning-rate decay over the epochs"),
    _f("--epochs", type=COUNT, default=10),
    _f("--mbs", type=COUNT, default=32, help="minibatch size"),
    _f("--eta-schedule", default="cosine", choices=("constant", "cosine"),
       help="cosine: eta decays from --lca_eta to 0 over the run (large early steps shape the "
       "atoms, small late ones settle them)"),
    _f("--lambda-schedule", type=lambda_schedule, default="constant",
       help="'constant', or 'linear:START:EPOCHS' to ramp lambda linearly from START "
       "to --lca_lambda over the first EPOCHS epochs (fractions allowed)"),
    _f("--eval-iters", type=COUNT, default=300, help="solver iterations to evaluate"),
    _f("--whiten", type=number(int, low=0), default=0, metavar="K",
       help="learn on ZCA-whitened images: the whitening of K x K patches (K odd) fitted on "
       "the training images and applied as a convolution; it is saved with the dictionary "
       "and every model coding with it whitens the same way (0: off, standardised images)"),
    _f("--whiten-eps", type=POSITIVE, default=0.1,
       help="added to the patch covariance's eigenvalues (standardised pixels: mean "
       "eigenvalue 1); larger keeps more of the low frequencies"),
    # sparse coder (the LCA layer of main_fast.py --model LCACNN and of cifar_dictlearning.py)
    _f("--lca_feats", type=COUNT, default=64, help="number of dictionary atoms F"),
    _f("--lca_lambda", type=NON_NEGATIVE, default=0.25, help="LCA threshold lambda"),
    _f("--lca_tau", type=number(float, low=1.0), default=100.0,
       help="LCA time constant tau (>= 1: the Euler step is 1/tau; --lca-solver lca)"),
    _f("--lca_eta", type=POSITIVE, default=0.05,
       help="Hebbian learning rate of the dictionary (dictionary learning; LCACNN finetune, "
       "learn)"),
    _f("--lca_iters", type=COUNT, default=600,
       help="solver iterations per minibatch (its images' codes settle together)"),
    _f("--lca_stride", type=COUNT, default=2, help="stride of the atoms"),
    _f("--lca_ksize", type=COUNT, default=9, help="atom size (odd)"),
    _f("--lca-solver", default="lca", choices=SOLVERS, deprecated=("--solver",),
       help="lca: the seed's Euler dynamics; fista: the same optimum in far fewer iterations"),
    # LCA-RCNN frontend
    _f("--dict_training", default="pretrained", choices=DICT_MODES,
       help="pretrained: --lca-dict, fixed; finetune: --lca-dict, then Hebbian updates from "
       "the nudged copy layer; learn: random atoms, then the same updates"),
    _f("--scale_feedback", type=FINITE, default=1.0,
       help="weight of the top-down input of the copy layer s0 (1: gradient dynamics of Phi)"),
    _f("--code-gain", type=POSITIVE, default=1.0,
       help="factor of the sparse code in the drive of the copy layer s0 (and in Phi); LASSO "
       "codes are small, so 1 drives the network weakly"),
    _f("--lca-dict", default=DEFAULT_DICT, metavar="PATH",
       help="dictionary file (from cifar_dictlearning.py) for pretrained and finetune"),
    _f("--sparse-coder", default="lca", choices=SPARSE_CODERS,
       help="lca (LCAConv2D) or mp (convolutional matching pursuit, --mp-k steps)"),
    _f("--mp-k", type=COUNT, default=32, help="matching-pursuit steps per image"),
    _f("--dict-update-every", type=COUNT, default=1, metavar="N",
       help="a dictionary update every N minibatches (finetune, learn)"),
    _f("--cache-codes", action="store_true",
       help="compute the codes of every image once and reuse them (pretrained, no --data-aug)"),
    # robustness: --todo attack / corrupt on the best model of --load-path
    _f("--attack-norm", default="both", choices=NORM_CHOICES, help="attack: norm(s)"),
    _f("--epsilons", type=NON_NEGATIVE, nargs="+", default=None,
       help="attack: radii in pixel units (pixels in [0, 1]); needs one --attack-norm "
       "(default: Linf 0 .05 .1 .15 .2 .3 and L2 0 .5 1 1.5 2 3 for grey images, CIFAR-scale "
       "for colour)"),
    _f("--predict-step", type=COUNT, nargs="+", default=None,
       help="attack/corrupt: free steps before every prediction (default --T1); several "
       "values make a step study (attack.csv holds every pair, steps.png draws it)"),
    _f("--attack-step", type=COUNT, nargs="+", default=None,
       help="attack: the gradient flows through the last N of the --predict-step steps "
       "(default all: the exact gradient); several values: each one up to each "
       "--predict-step"),
    _f("--pgd-steps", type=COUNT, default=20, help="attack: PGD iterations per radius"),
    _f("--attacks", nargs="+", default=None, choices=ATTACK_NAMES, metavar="NAME",
       help=f"attack: ART attacks to run, among {' '.join(ATTACK_NAMES)} (default all)"),
    _f("--hsj-samples", type=number(int, low=0), default=100,
       help="attack: HopSkipJump (decision-based, thousands of predictions per image) runs on "
       "the first N attacked images (0: not at all)"),
    _f("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS,
       metavar="NAME", help=f"corrupt: among {' '.join(CORRUPTIONS)}"),
    _f("--severities", type=int, nargs="+", default=list(SEVERITIES), choices=SEVERITIES,
       help="corrupt: severities"),
    _f("--attack-samples", type=COUNT, default=1000,
       help="attack/corrupt: test images used (a seeded random subset; at most the test set)"),
    # run
    _f("--todo", default="train", choices=TODOS, help="what to do"),
    _f("--device", default="auto", help=DEVICE_HELP),
    _f("--seed", type=SEED, default=0),
    _f("--conv-algo", default="auto", choices=CONV_ALGOS,
       help="relaxation and update convolutions: auto (Winograd F(4x4) for stride-1 3x3 layers "
       "with 128+ channels and 5x5 layers with 32+, on CPU in fp32 when its C kernels "
       "build, 1.4-2.4x faster there; direct elsewhere), winograd (every stride-1 3x3 and "
       "5x5 layer) or direct (never Winograd); all three give the direct estimate (max-pool "
       "ties follow the input: eplcanet.energy.pool_ties; check a recipe with "
       "python -m eplcanet.app.diagnose)"),
    _f("--precision", default="fp32", choices=PRECISIONS,
       help="bf16: autocast the free phase's convolutions (states, the nudged phases and the "
       "update stay fp32: docs/performance.md); tf32: TF32 tensor cores (CUDA)"),
    _f("--threads", type=COUNT, default=None,
       help="CPU threads for torch; default: 1 when other processes already keep half the "
       "cores busy (OpenMP threads then wait on each other), else torch's choice"),
    _f("--save", action="store_true", help="write a run directory with metrics and checkpoints"),
    _f("--tensorboard", action="store_true",
       help="train: also log to RUN/tensorboard (torch.utils.tensorboard): the metrics.csv "
       "columns, learning rates, per-layer activity histograms and the activity figure"),
    _f("--debug", action="store_true",
       help="show the traceback of an error (default: one line, exit code 2)"),
    _f("--results-dir", default="./results", help="where run directories go"),
    _f("--load-path", default=None, help="run directory to resume (train) or evaluate"),
    _f("--check-thm", action="store_true", help="train: run the GDU check at each epoch end"),
    _f("--gdu-batch", type=COUNT, default=8, help="gducheck: number of samples"),
    _f("--out", default=None, help="dictionary file (default: RUN_DIR/dictionary.pt)"),
    _f("--overwrite", action="store_true",
       help="allow --out to replace an existing dictionary file"),
)

FLAGS: dict[str, Flag] = {f.dest: f for f in _ALL}
