"""The settings of a run: one frozen dataclass tree per application, built and validated here.

``parse_settings(argv)`` (main_fast.py) and ``parse_dictlearning(argv)`` (cifar_dictlearning.py)
build their parsers from the flag definitions of :mod:`eplcanet.app.flags`, one field of a
dataclass below per flag (the field's name is the flag's destination), check what argparse's
types and choices cannot (combinations of flags, lengths of layer lists, files) and return the
frozen tree. Everything after that reads the tree: nothing changes a setting once a run starts.

A run directory records its settings flat (``hyperparameters.json``: one key per flag, the
names of the flags, so every run directory ever written still reads). ``--load-path RUN``
rebuilds the run's settings from that record: flags it does not hold take today's defaults,
flags given on the command line win where they may (:data:`RUN_IDENTITY`,
:data:`RESUME_MAY_CHANGE`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from ..energy.activations import ANALYTIC
from ..energy.networks import POOLS
from .entry import Parser
from .flags import FLAGS, MLP_MODELS, ROBUSTNESS_TODOS, add_flag, parse_lambda_schedule
from .lca import check_dictionary_file, dictionary_file_needed

Seq = tuple  # the lists of a flag, frozen


@dataclass(frozen=True)
class DataSettings:
    TITLE: ClassVar[str] = "data"
    task: str
    data_dir: str
    data_path: str | None
    download: bool
    image_size: int | None
    val_fraction: float
    data_aug: bool
    crop_pad: int | None


@dataclass(frozen=True)
class ModelSettings:
    TITLE: ClassVar[str] = "model"
    model: str
    archi: Seq | None
    channels: Seq
    kernels: Seq | None
    strides: Seq | None
    paddings: Seq | None
    pools: str | None
    fc: Seq
    act: str
    scale: float | None
    same_update: bool
    loss: str
    softmax: bool


@dataclass(frozen=True)
class EstimatorSettings:
    TITLE: ClassVar[str] = "gradient estimator and relaxation"
    alg: str
    T1: int
    T2: int
    updates: str
    tol: float | None
    warm_start: int | None
    betas: Seq
    random_sign: bool
    cep_debug: bool
    thirdphase: bool
    hep_points: int | None


@dataclass(frozen=True)
class OptimSettings:
    TITLE: ClassVar[str] = "optimisation"
    optim: str
    lrs: Seq | None
    wds: Seq | None
    mmt: float
    lr_decay: bool
    epochs: int
    mbs: int


@dataclass(frozen=True)
class CoderSettings:
    TITLE: ClassVar[str] = "sparse coder (LCA)"
    lca_feats: int
    lca_lambda: float
    lca_tau: float
    lca_eta: float
    lca_iters: int
    lca_stride: int
    lca_ksize: int
    lca_solver: str


@dataclass(frozen=True)
class FrontendSettings:
    TITLE: ClassVar[str] = "LCA-RCNN (--model LCACNN)"
    DESCRIPTION: ClassVar[str] = (
        "A sparse-coding layer in front of the EP network: its code a drives a free copy layer "
        "s0 <- sigma(code_gain * a + scale_feedback * feedback from s1). --pools then takes one leading "
        "character for s0 ('i') before one per conv layer (exactly one per conv layer also "
        "works); extra trailing entries of --pools/--kernels/--strides/--paddings/--lrs/--wds "
        "are ignored with a warning, so the seed's commands run as written. The sparse coder "
        "group's flags apply to --model LCACNN only.")
    dict_training: str
    scale_feedback: float
    code_gain: float
    lca_dict: str
    sparse_coder: str
    mp_k: int
    dict_update_every: int
    cache_codes: bool


@dataclass(frozen=True)
class RobustnessSettings:
    TITLE: ClassVar[str] = "robustness (--todo attack / corrupt on the best model of --load-path)"
    attack_norm: str
    epsilons: Seq | None
    predict_step: Seq | None
    attack_step: Seq | None
    pgd_steps: int
    attacks: Seq | None
    hsj_samples: int
    corruptions: Seq
    severities: Seq
    attack_samples: int


@dataclass(frozen=True)
class RunSettings:
    TITLE: ClassVar[str] = "run"
    todo: str
    device: str
    seed: int
    conv_algo: str
    precision: str
    save: bool
    tensorboard: bool
    debug: bool
    results_dir: str
    load_path: str | None
    check_thm: bool
    gdu_batch: int


@dataclass(frozen=True)
class Tree:
    """What the two applications' trees share: the flat record and its inverse."""

    def flat(self) -> dict[str, Any]:
        """One key per flag, lists as lists: the hyperparameters.json record."""
        return {k: list(v) if isinstance(v, tuple) else v
                for group in fields(self) for k, v in asdict(getattr(self, group.name)).items()}

    @classmethod
    def groups(cls) -> list[tuple[str, type]]:
        return [(f.name, f.type if isinstance(f.type, type) else _GROUP_TYPES[f.type])
                for f in fields(cls)]

    @classmethod
    def from_flat(cls, values: dict[str, Any]):
        """The tree of a flat mapping of every flag (extra keys, e.g. a record's command, are
        ignored)."""
        return cls(**{name: kind(**{f.name: _frozen(values[f.name]) for f in fields(kind)})
                      for name, kind in cls.groups()})


@dataclass(frozen=True)
class Settings(Tree):
    """main_fast.py: everything a run is and does."""

    data: DataSettings
    model: ModelSettings
    estimator: EstimatorSettings
    optim: OptimSettings
    coder: CoderSettings
    frontend: FrontendSettings
    robustness: RobustnessSettings
    run: RunSettings


@dataclass(frozen=True)
class ImageSettings:
    TITLE: ClassVar[str] = "images"
    task: str
    data_path: str | None
    data_dir: str
    download: bool
    n_images: int | None
    n_eval: int


@dataclass(frozen=True)
class LearningSettings:
    TITLE: ClassVar[str] = "dictionary learning"
    epochs: int
    mbs: int
    eta_schedule: str
    lambda_schedule: str
    eval_iters: int
    whiten: int
    whiten_eps: float


@dataclass(frozen=True)
class DictRunSettings:
    TITLE: ClassVar[str] = "run"
    seed: int
    device: str
    threads: int | None
    results_dir: str
    out: str | None
    debug: bool
    overwrite: bool


@dataclass(frozen=True)
class DictLearningSettings(Tree):
    """cifar_dictlearning.py: learn a convolutional LCA dictionary."""

    data: ImageSettings
    coder: CoderSettings
    learning: LearningSettings
    run: DictRunSettings


_GROUP_TYPES = {kind.__name__: kind for kind in (
    DataSettings, ModelSettings, EstimatorSettings, OptimSettings, CoderSettings,
    FrontendSettings, RobustnessSettings, RunSettings, ImageSettings, LearningSettings,
    DictRunSettings)}

# cifar_dictlearning.py's recipe where it differs from main_fast.py's: it learns atoms from
# images (its own task, the photographs), with FISTA, which reaches the LCA optimum in about a
# sixth of the Euler dynamics' iterations (docs/sparse-coding.md), and takes large Hebbian steps
# under a cosine decay; main_fast.py's finetune mode moves a learned dictionary by small steps
# inside EP training, relaxing with the seed's LCA dynamics.
DICTLEARNING_DEFAULTS = {"task": "patches", "lca_solver": "fista", "lca_iters": 100,
                         "lca_eta": 0.5, "epochs": 2, "mbs": 64}


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def _build_parser(tree: type[Tree], overrides: dict[str, dict] | None = None,
                  **parser_kwargs) -> Parser:
    """A parser with one flag per field of `tree`; overrides: flag destination -> keywords of
    add_argument that replace the definition's (an application's default, its choices)."""
    overrides = overrides or {}
    p = Parser(formatter_class=argparse.ArgumentDefaultsHelpFormatter, **parser_kwargs)
    for _, kind in tree.groups():
        group = p.add_argument_group(kind.TITLE, getattr(kind, "DESCRIPTION", None))
        for f in fields(kind):
            add_flag(group, FLAGS[f.name], **overrides.get(f.name, {}))
    return p


def build_parser() -> Parser:
    """main_fast.py's parser: every field of :class:`Settings` as a flag."""
    return _build_parser(
        Settings, prog="main_fast.py",
        description="Train an energy-based recurrent network with Equilibrium Propagation. "
        "With no flags: a small EP CNN on scikit-learn's bundled digits (offline).")


def build_dictlearning_parser() -> Parser:
    """cifar_dictlearning.py's parser: every field of :class:`DictLearningSettings`."""
    from .flags import DICTLEARNING_TASKS

    overrides = {dest: {"default": value} for dest, value in DICTLEARNING_DEFAULTS.items()}
    # its own task: 32x32 crops of the photographs, offline
    overrides["task"].update(choices=DICTLEARNING_TASKS, help=(
        "'patches' = 32x32 crops of scikit-image's photographs (offline); npz = the "
        "--data-path file; or a torchvision dataset"))
    return _build_parser(DictLearningSettings, overrides, prog="cifar_dictlearning.py",
                         description="Learn a convolutional LCA dictionary with the Hebbian rule.")


# --------------------------------------------------------------------------------------------
# main_fast.py's checks (on the parsed namespace, before it is frozen)


def _fail(message: str):
    raise SystemExit(f"error: {message}")


def _expand(name: str, values, n: int, default):
    if values is None:
        return [default] * n
    if len(values) != n:
        _fail(f"--{name} needs {n} value(s), one per conv layer (--channels has {n}), "
              f"got {len(values)}: {values}")
    return list(values)


def n_synapses(a) -> int:
    """Number of synapse layers (each gets one --lrs / --wds entry)."""
    if a.model in MLP_MODELS:
        return len(a.archi) - 1 if a.archi else len(a.fc)
    return len(a.channels) + len(a.fc)


def validate(a: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults that depend on other flags and refuse inconsistent combinations, before
    any data is loaded (SystemExit naming the flags and what to give)."""
    _validate_frontend(a)  # LCACNN: the seed's layer lists, the dictionary flags
    if a.crop_pad is not None and not a.data_aug:
        _fail(f"--crop-pad {a.crop_pad} sets the padding of --data-aug's random crops: add "
              "--data-aug, or drop --crop-pad")
    if a.model not in MLP_MODELS:
        n = len(a.channels)
        a.kernels = _expand("kernels", a.kernels, n, 3)
        a.strides = _expand("strides", a.strides, n, 1)
        a.paddings = _expand("paddings", a.paddings, n, 1)
        if a.pools is None:
            a.pools = "m" * n
        if len(a.pools) != n or any(c not in POOLS for c in a.pools):
            _fail(f"--pools needs one of 'm', 'a', 'i' per conv layer ({n}), got {a.pools!r}")
    elif a.archi is not None and len(a.archi) < 2:
        _fail("--archi needs the input size and at least the output size")
    n = n_synapses(a)
    default_lr = 0.1 if a.optim == "sgd" else 1e-3
    for name, default in (("lrs", default_lr), ("wds", 0.0)):
        values = getattr(a, name)
        if values is None:
            setattr(a, name, [default] * n)
        elif len(values) != n:
            _fail(f"--{name} needs {n} value(s), one per synapse layer "
                  f"({'conv + fc' if a.model not in MLP_MODELS else 'MLP layers'}), "
                  f"got {len(values)}")
    if a.alg == "BPTT" and a.T2 > a.T1:
        _fail(f"BPTT backpropagates T2 of T1 steps: need T2 <= T1 (T1={a.T1}, T2={a.T2})")
    _check_feedforward(a)
    _check_cep(a)
    _check_holomorphic(a)
    if a.betas[0] == a.betas[1]:
        _fail(f"--betas must differ, got {a.betas}")
    if a.warm_start is not None and a.alg != "EP":
        _fail(f"--warm-start applies to --alg EP, not {a.alg}")
    if a.tol is not None and a.alg != "EP":
        _fail(f"--tol applies to --alg EP; {a.alg} differentiates a fixed number of steps "
              f"(drop --tol)")
    if a.random_sign and a.thirdphase:
        _fail("--random-sign only changes one-sided EP: add --no-thirdphase")
    if a.task == "npz" and not a.data_path:
        _fail("--task npz needs --data-path FILE.npz (arrays x and y)")
    if a.tensorboard:
        if not (a.save or (a.load_path and a.todo == "train")):
            _fail("--tensorboard logs into the run directory: add --save (or resume a run "
                  "with --load-path)")
        if importlib.util.find_spec("tensorboard") is None:
            _fail("--tensorboard needs the tensorboard package: pip install tensorboard (it "
                  "is in requirements.txt)")
    if a.todo == "evaluate" and not a.load_path:
        _fail("--todo evaluate needs --load-path RUN_DIR")
    if a.todo in ROBUSTNESS_TODOS:
        _check_robustness(a)
    if a.same_update and a.model not in ("VFCNN", "VFMLP"):
        _fail("--same-update only applies to --model VFCNN or VFMLP")
    if a.model == "LCACNN" and dictionary_file_needed(a.dict_training, a.todo, a.load_path):
        # last: the file of a new run fits the flags
        check_dictionary_file(a.lca_dict, a.lca_feats, a.lca_ksize, a.dict_training)
    return a


def _check_holomorphic(a: argparse.Namespace) -> None:
    """--alg hEP needs dynamics that are holomorphic in the states: an energy-based MLP or CNN
    with an analytic activation and no max pooling, nudged on a circle around beta = 0."""
    if a.alg != "hEP":
        if a.hep_points is not None:
            _fail(f"--hep-points applies to --alg hEP, not {a.alg}")
        return
    if a.hep_points is None:
        a.hep_points = 4
    if a.model not in ("MLP", "CNN"):
        _fail(f"--alg hEP needs --model MLP or CNN (symmetric weights, an energy); got "
              f"--model {a.model}")
    if a.act not in ANALYTIC:
        _fail(f"--alg hEP needs an analytic activation (--act {' | '.join(ANALYTIC)}); got "
              f"--act {a.act}")
    if a.model == "CNN" and "m" in a.pools:
        _fail(f"--alg hEP needs holomorphic dynamics and max pooling is not (--pools "
              f"{a.pools}); accepted per layer: a (average), i (none)")
    if a.betas[0] != 0.0:
        _fail(f"--alg hEP nudges on a circle around the free phase: needs --betas 0 R "
              f"(radius |R|), got --betas {_shown(a.betas)}")
    if a.tol is not None:
        _fail("--alg hEP relaxes each nudged phase for exactly --T2 steps; --tol applies to "
              "--alg EP (drop --tol)")
    if a.random_sign:
        _fail("--random-sign only changes one-sided EP, not --alg hEP")


def _check_cep(a: argparse.Namespace) -> None:
    """--alg CEP (continual EP: the weights move after every nudged step) runs where the
    reference ran it, on the MLPs, one-sided, each step a plain SGD step; --cep-debug needs it."""
    if a.cep_debug and a.alg != "CEP":
        _fail(f"--cep-debug compares CEP's per-step updates with EP: it applies to --alg CEP, "
              f"not --alg {a.alg}")
    if a.alg != "CEP":
        return
    if a.model not in MLP_MODELS:
        _fail(f"--alg CEP runs on the fully connected networks, as in the reference: --model "
              f"{' or '.join(MLP_MODELS)}, not --model {a.model}")
    if a.thirdphase:
        _fail("--alg CEP is one-sided (each nudged step moves the weights, so there is no "
              "second phase from the same weights): add --no-thirdphase")
    if a.todo != "train":
        return
    if a.optim != "sgd":
        _fail(f"--alg CEP applies a plain SGD step (the --lrs of each layer) after every "
              f"nudged step; --optim {a.optim} is not that: accepted: --optim sgd")
    if a.mmt != 0:
        _fail(f"--alg CEP applies plain SGD steps: momentum would carry each step's update into "
              f"the later steps and minibatches; add --mmt 0 (got --mmt {a.mmt:g})")


def _check_feedforward(a: argparse.Namespace) -> None:
    """--model FFCNN (the feed-forward baseline) trains with --alg BP only, and BP applies to it
    only; its relaxation computes the feed-forward pass once it runs one step per layer
    (eplcanet/energy/feedforward.py), so --T1 (the prediction's steps) must reach that."""
    if (a.model == "FFCNN") != (a.alg == "BP"):
        _fail(f"--alg BP trains the feed-forward --model FFCNN and FFCNN trains with BP only "
              f"(got --model {a.model} --alg {a.alg})")
    if a.model != "FFCNN":
        return
    if a.todo == "gducheck" or a.check_thm:
        _fail("the GDU check compares EP with BPTT on an energy-based model; --model FFCNN "
              "has no energy (use --model CNN)")
    layers = len(a.channels) + len(a.fc) - int(a.softmax)
    # (--predict-step and --attack-step default to --T1; a shorter attack gradient would be
    # truncated, which the feed-forward network never needs)
    for flag in ("--T1", "--predict-step", "--attack-step"):
        value = getattr(a, flag[2:].replace("-", "_"))
        value = min(value) if isinstance(value, list) else value  # the step flags take lists
        if value is not None and value < layers:
            _fail(f"--model FFCNN computes its {layers} layers in {layers} relaxation steps: "
                  f"need {flag} >= {layers}, got {value}")


def _check_robustness(a: argparse.Namespace) -> None:
    """--todo attack / corrupt: a trained run, one norm for explicit radii, the step lists (a
    step study when either has several values; sorted, without repeats)."""
    if not a.load_path:
        _fail(f"--todo {a.todo} needs --load-path RUN_DIR (a trained run)")
    if a.epsilons is not None and a.attack_norm == "both":
        _fail("--epsilons needs --attack-norm Linf or L2 (Linf and L2 radii have different "
              "scales; leave --epsilons out for both defaults)")
    # a run saved before the step flags took lists holds one number
    a.predict_step = _steps(a.predict_step) or [a.T1]
    a.attack_step = _steps(a.attack_step)
    if a.attack_step is not None:
        top = max(a.predict_step)
        bad = [s for s in a.attack_step if s > top]
        if bad:
            _fail(f"--attack-step must be in [1, --predict-step ({top})], got {_shown(bad)}")


def _steps(value) -> list[int] | None:
    if value is None:
        return None
    return sorted(set([value] if isinstance(value, int) else value))


# The LCA-RCNN: the seed's commands give --pools immmm and four --strides / --paddings and five
# --wds for three conv layers and one fc layer: for LCACNN the first character of --pools belongs
# to the copy layer s0 (no pooling: 'i'), the next ones to the conv layers, and extra trailing
# entries of --pools, --kernels, --strides, --paddings, --lrs and --wds are ignored with a warning
# naming them. A --pools with exactly one character per conv layer is taken as the conv layers'.
# Other models keep refusing any mismatch.
_FRONTEND = [f.name for kind in (CoderSettings, FrontendSettings) for f in fields(kind)]


@functools.lru_cache(maxsize=1)
def _main_defaults() -> dict[str, Any]:
    return vars(build_parser().parse_args([]))


def _flag_defaults() -> dict[str, Any]:
    """main_fast.py's defaults, as the flag definitions give them (not a loaded run's); parsed
    once per process (validation asks for them on every parse), a deep copy per call so that
    no caller can change the cached lists."""
    return copy.deepcopy(_main_defaults())


def _trim(a: argparse.Namespace, name: str, n: int, ignored: list[str]) -> None:
    values = getattr(a, name)
    if values is not None and len(values) > n:
        ignored.append(f"--{name} {' '.join(str(v) for v in values[n:])}")
        setattr(a, name, list(values[:n]))


def _validate_frontend(a: argparse.Namespace) -> None:
    """Other models: refuse LCA flags that differ from their defaults. LCACNN: apply the --pools
    rule, drop extra trailing list entries with a warning, check the coder and the modes."""
    if a.model != "LCACNN":
        defaults = _flag_defaults()
        given = [FLAGS[dest].names[0] for dest in _FRONTEND if getattr(a, dest) != defaults[dest]]
        if given:
            _fail(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to "
                  "--model LCACNN")
        return
    n = len(a.channels)
    ignored: list[str] = []
    pools = a.pools
    if pools is not None and len(pools) > n:
        if pools[0] != "i":
            _fail(f"--pools {pools!r}: for LCACNN the first character belongs to the copy layer "
                  "s0, which has no pooling: it must be 'i' (e.g. 'i' + one of m/a/i per conv "
                  "layer), or give exactly one character per conv layer")
        if len(pools) > n + 1:
            ignored.append(f"--pools {pools!r}: {pools[n + 1:]!r}")
        a.pools = pools[1:n + 1]
    for name in ("kernels", "strides", "paddings"):
        _trim(a, name, n, ignored)
    for name in ("lrs", "wds"):
        _trim(a, name, n + len(a.fc), ignored)
    if ignored:
        print(f"warning: --model LCACNN ignores the extra trailing entries {'; '.join(ignored)} "
              f"({n} conv layers, {n + len(a.fc)} synapse layers)")
    check_atoms(a)
    if a.dict_training != "pretrained" and a.alg != "EP":
        _fail(f"--dict_training {a.dict_training} learns the dictionary from EP's nudged "
              "phase: use --alg EP (or --dict_training pretrained)")
    if a.cache_codes:
        if a.dict_training != "pretrained":
            _fail(f"--cache-codes needs a fixed dictionary (--dict_training pretrained); with "
                  f"{a.dict_training} the codes change as the dictionary learns")
        if a.data_aug:
            _fail("--cache-codes cannot be used with --data-aug: augmented images get new codes "
                  "every epoch")


def check_atoms(a) -> None:
    """The atoms of both applications: odd (centred, 'same' padding), stride within the atom."""
    if a.lca_ksize % 2 == 0:
        _fail(f"--lca_ksize must be odd (centred atoms, 'same' padding), got {a.lca_ksize}")
    if a.lca_stride > a.lca_ksize:
        _fail(f"--lca_stride ({a.lca_stride}) must be <= --lca_ksize ({a.lca_ksize})")


# --------------------------------------------------------------------------------------------
# Loaded runs

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
        _fail(f"--load-path {load_path}: cannot read {record.name} ({err})")
    if not isinstance(saved, dict) or "model" not in saved or "alg" not in saved:
        _fail(f"--load-path {load_path} is not a main_fast.py run (its {record.name} names no "
              f"--model / --alg; a cifar_dictlearning.py run's dictionary.pt goes to --lca-dict)")
    if saved.get("alg") != "hEP":  # runs of one version stored --hep-points' default for every alg
        saved.pop("hep_points", None)
    return {k: v for k, v in saved.items() if k in known and k not in _PER_INVOCATION}


def _given(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not defaulted)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_known_args(argv)[0]))


def check_loaded_run(parser, a: argparse.Namespace, saved: dict,
                     argv: list[str] | None) -> None:
    """Refuse flags that contradict the loaded run (RUN_IDENTITY; for resumed training, all but
    RESUME_MAY_CHANGE), compared after validation fills and trims the layer lists, naming
    every difference."""
    free = _PER_INVOCATION | (RESUME_MAY_CHANGE if a.todo == "train" else
                              set(saved) - RUN_IDENTITY)
    differ = [k for k in sorted(_given(argv) & set(saved) - free) if getattr(a, k) != saved[k]]
    if differ:
        try:
            normal = validate(copy.deepcopy(a))
            differ = [k for k in differ if getattr(normal, k) != saved[k]]
        except SystemExit:
            pass
    if differ:
        flag = {x.dest: x.option_strings[0] for x in parser._actions if x.option_strings}
        what = "; ".join(f"{flag[k]} {_shown(getattr(a, k))} (the run has {_shown(saved[k])})"
                         for k in differ)
        allowed = (f"resuming may change {', '.join(flag[k] for k in sorted(RESUME_MAY_CHANGE))}"
                   if a.todo == "train" else "the network and data split are the run's")
        _fail(f"--load-path {a.load_path} was made with other values: {what}; drop these "
              f"flags ({allowed}), or train a new run")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def parse_settings(argv: list[str] | None = None) -> Settings:
    """main_fast.py's flags (argv; None: sys.argv) as validated, frozen Settings."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    saved = run_defaults(parser, first.load_path) if first.load_path else {}
    parser.set_defaults(**saved)
    a = parser.parse_args(argv)
    if saved:
        check_loaded_run(parser, a, saved, argv)
    a = validate(a)
    # The relaxation order is a flag, not part of the weights: an explicit other order measures
    # the loaded run with other dynamics, so say so (runs from before the flag relaxed in sync).
    trained = saved.get("updates", "sync")
    if saved and trained != a.updates:
        print(f"warning: {a.load_path} was trained with --updates {trained}; this run relaxes "
              f"with --updates {a.updates} (pass --updates {trained} to match)")
    return Settings.from_flat(vars(a))


def settings_of_record(record: dict[str, Any], **overrides: Any) -> Settings:
    """The Settings of a run's hyperparameters.json record, unvalidated (the run was validated
    when it started): flags the record does not hold take today's defaults; `overrides`
    (flag destinations) replace recorded values. Unknown names are a ValueError."""
    defaults = _flag_defaults()
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown flag name(s) {unknown}; use main_fast.py's names (e.g. T1)")
    known = {k: v for k, v in record.items() if k in defaults}
    return Settings.from_flat({**defaults, **known, **overrides})


# --------------------------------------------------------------------------------------------
# cifar_dictlearning.py


def parse_dictlearning(argv: list[str] | None = None) -> DictLearningSettings:
    """cifar_dictlearning.py's flags as validated, frozen settings (before any data is read)."""
    a = build_dictlearning_parser().parse_args(argv)
    if a.task == "npz" and a.data_path is None:
        _fail("--task npz needs --data-path FILE.npz")
    if a.task == "npz" and not Path(a.data_path).is_file():
        _fail(f"--data-path {a.data_path!r}: no such file")
    if a.task != "npz" and a.data_path is not None:
        _fail("--data-path is used only with --task npz")
    check_atoms(a)
    if a.whiten and a.whiten % 2 == 0:
        _fail(f"--whiten {a.whiten}: the whitening size must be odd (e.g. 5, 7, 9), or 0 (off)")
    if a.out is not None and Path(a.out).exists() and not a.overwrite:
        _fail(f"--out {a.out} exists (a learned dictionary would be lost): give another path, "
              "or --overwrite to replace it")
    return DictLearningSettings.from_flat(vars(a))


def lambda_start(s: DictLearningSettings) -> tuple[float, float]:
    """(start, warmup_epochs) of the run's lambda ramp to --lca_lambda."""
    return parse_lambda_schedule(s.learning.lambda_schedule, s.coder.lca_lambda)
