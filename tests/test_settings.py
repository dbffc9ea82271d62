"""The settings tree: one definition per flag, one field per flag, frozen, recorded and rebuilt."""

import dataclasses
import json
import shutil

import pytest

from eplcanet.app import flags
from eplcanet.app.experiment import run
from eplcanet.app.settings import (DICTLEARNING_DEFAULTS, DictLearningSettings, Settings,
                                   build_dictlearning_parser, build_parser, parse_dictlearning,
                                   parse_settings, settings_of_record)
from eplcanet.runs import read_metrics
from helpers import ROOT


def _actions(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"
            and a.help != "==SUPPRESS=="}


def _fields(tree) -> list[str]:
    return [f.name for _, kind in tree.groups() for f in dataclasses.fields(kind)]


@pytest.mark.parametrize("tree, parser", [(Settings, build_parser),
                                          (DictLearningSettings, build_dictlearning_parser)])
def test_every_flag_is_one_field_of_the_tree(tree, parser):
    names = _fields(tree)
    assert len(names) == len(set(names))  # no flag in two groups
    assert set(_actions(parser())) == set(names)


def test_every_defined_flag_belongs_to_an_application():
    used = set(_fields(Settings)) | set(_fields(DictLearningSettings))
    assert set(flags.FLAGS) == used


def test_shared_flags_have_one_definition_and_differ_only_in_the_recipe_defaults():
    main, dl = _actions(build_parser()), _actions(build_dictlearning_parser())
    shared = set(main) & set(dl)
    assert {"lca_feats", "lca_iters", "lca_eta", "lca_solver", "seed", "device",
            "data_path"} <= shared
    for dest in shared:
        a, b = main[dest], dl[dest]
        assert (a.option_strings, a.type, a.nargs) == (b.option_strings, b.type, b.nargs), dest
        if dest != "task":  # the dictionary learner also reads the photographs
            assert (a.choices, a.help) == (b.choices, b.help), dest
        if dest in DICTLEARNING_DEFAULTS:
            assert b.default == DICTLEARNING_DEFAULTS[dest] != a.default, dest
        else:
            assert a.default == b.default, dest


def test_settings_are_frozen_and_hold_no_lists():
    cfg = parse_settings(["--channels", "4", "8", "--lrs", "0.1", "0.2", "0.3"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.channels = (1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = None
    values = cfg.flat()
    assert cfg.model.channels == (4, 8) and values["channels"] == [4, 8]
    assert not any(isinstance(getattr(group, f.name), list)
                   for group in (getattr(cfg, name) for name, _ in Settings.groups())
                   for f in dataclasses.fields(group))


def test_the_record_is_flat_json_and_rebuilds_the_same_settings():
    cfg = parse_settings(["--model", "MLP", "--archi", "64", "16", "10", "--alg", "CEP",
                          "--no-thirdphase", "--mmt", "0", "--T1", "7", "--seed", "3"])
    record = json.loads(json.dumps(cfg.flat()))
    assert Settings.from_flat(record) == cfg
    assert settings_of_record(record) == cfg
    # a record of an older version lacks newer flags: they take today's defaults
    old = {k: v for k, v in record.items() if k not in ("updates", "tol", "hsj_samples")}
    rebuilt = settings_of_record(old)
    assert rebuilt.estimator.updates == "sync" and rebuilt.estimator.tol is None
    assert rebuilt.robustness.hsj_samples == 100 and rebuilt.model.archi == (64, 16, 10)
    with pytest.raises(ValueError, match="unknown flag name"):
        settings_of_record(record, T3=4)


def test_validation_fills_the_layer_lists():
    cfg = parse_settings(["--channels", "4", "8", "16", "--optim", "adam"])
    m = cfg.model
    assert (m.kernels, m.strides, m.paddings, m.pools) == ((3, 3, 3), (1, 1, 1), (1, 1, 1), "mmm")
    assert cfg.optim.lrs == (1e-3,) * 4 and cfg.optim.wds == (0.0,) * 4


def test_old_solver_spelling_still_works_with_a_warning(capsys):
    new = parse_dictlearning(["--lca-solver", "lca"])
    assert "deprecated" not in capsys.readouterr().out
    old = parse_dictlearning(["--solver", "lca"])
    assert "--solver is deprecated; use --lca-solver" in capsys.readouterr().out
    assert old == new and old.coder.lca_solver == "lca"
    assert "--solver" not in build_dictlearning_parser().format_help()
    with pytest.raises(SystemExit):
        parse_dictlearning(["--solver", "ista"])  # the alias keeps the flag's choices


def test_task_names_are_case_insensitive_in_both_applications():
    assert parse_settings(["--task", "DIGITS"]).data.task == "digits"
    assert parse_dictlearning(["--task", "Patches"]).data.task == "patches"
    with pytest.raises(SystemExit):
        parse_settings(["--task", "patches"])  # the photographs have no labels to train on


def test_lambda_schedule_is_checked_by_its_type(capsys):
    with pytest.raises(SystemExit):
        parse_dictlearning(["--lambda-schedule", "linear:-1:2"])
    assert "--lambda-schedule: 'linear:-1:2': START must be >= 0" in capsys.readouterr().err
    assert parse_dictlearning(["--lambda-schedule", "linear:0.1:2"]).learning.lambda_schedule \
        == "linear:0.1:2"


def test_crop_pad_needs_data_aug_and_a_non_negative_count(capsys):
    assert parse_settings(["--data-aug", "--crop-pad", "2"]).data.crop_pad == 2
    assert parse_settings(["--data-aug"]).data.crop_pad is None  # the image-size rule
    with pytest.raises(SystemExit, match="--crop-pad 2 sets the padding of --data-aug's"):
        parse_settings(["--crop-pad", "2"])
    with pytest.raises(SystemExit):
        parse_settings(["--data-aug", "--crop-pad", "-1"])
    assert "--crop-pad" in capsys.readouterr().err


# A run directory written by the version before the settings tree (its best.pt, checkpoint.pt,
# hyperparameters.json and metrics.csv, figures dropped): python main_fast.py --channels 4 4
# --fc 10 --T1 6 --T2 2 --epochs 1 --mbs 64 --save.
OLD_RUN = ROOT / "tests" / "data" / "run_v0"


@pytest.mark.slow
def test_a_run_directory_of_the_previous_version_evaluates_and_resumes(tmp_path, capsys):
    run_dir = tmp_path / "run_v0"
    shutil.copytree(OLD_RUN, run_dir)
    recorded = read_metrics(run_dir)[0]
    # evaluate: the same network, weights and test split as when it was written
    acc = run(parse_settings(["--todo", "evaluate", "--load-path", str(run_dir)]))["test_acc"]
    assert acc == pytest.approx(recorded["test_acc"], abs=1e-12)
    # resume: its epoch 2 is the epoch 2 of the same run trained now from the start
    flags = ["--channels", "4", "4", "--fc", "10", "--T1", "6", "--T2", "2", "--mbs", "64"]
    run(parse_settings(["--load-path", str(run_dir), "--epochs", "2"]))
    run(parse_settings([*flags, "--epochs", "2", "--save", "--results-dir", str(tmp_path / "new")]))
    (fresh,) = (tmp_path / "new").rglob("metrics.csv")
    columns = ("train_loss", "train_acc", "val_acc", "test_acc")
    resumed, now = ([[r[c] for c in columns] for r in read_metrics(f)] for f in (run_dir, fresh))
    # to rounding: the recorded epoch was computed on another thread count, which changes the
    # order of float sums in the convolutions (a last-digit change of its weights)
    assert len(resumed) == len(now) == 2
    for a, b in zip(resumed, now):
        assert a == pytest.approx(b, rel=1e-6)
