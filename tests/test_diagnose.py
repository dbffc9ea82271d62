"""python -m eplcanet.app.diagnose: the conditioning diagnostic with main_fast.py's flags."""

import json

import pandas as pd
import pytest

from eplcanet.app.diagnose import main

TINY = ["--channels", "4", "8", "--T1", "6", "--T2", "2", "--thirdphase", "--betas", "0", "0.5"]


def test_writes_tables_summary_and_figure(tmp_path):
    out = tmp_path / "diag"
    summary = main(TINY + ["--samples", "3", "--out", str(out)])
    for name in ("settle.csv", "agreement.csv", "pool_picks.csv", "summary.json",
                 "diagnose.png"):
        assert (out / name).is_file(), name
    settle = pd.read_csv(out / "settle.csv")
    # 6 free + 2 x 2 nudged steps, two layers of states each (the softmax readout has none).
    assert set(settle["phase"]) == {"free", "nudged +beta", "nudged -beta"}
    assert len(settle) == (6 + 2 + 2) * 2
    agree = pd.read_csv(out / "agreement.csv")
    comparisons = set(agree["comparison"])
    assert "input noise 1e-12" in comparisons and "EP vs BPTT (GDU)" in comparisons
    assert "conv_algo auto vs direct" in comparisons
    # One row per parameter tensor per comparison, each judged on its own.
    assert agree.groupby("comparison").size().nunique() == 1
    assert (agree.groupby("comparison").size() == 6).all()  # 3 synapses x (weight, bias)
    fast = agree[agree["comparison"].str.startswith("conv_algo")]
    assert (fast["cosine"] > 0.9999).all() and (fast["rel_err"] < 1e-9).all()
    assert json.loads((out / "summary.json").read_text()) == summary


def test_tol_run_compares_the_settled_estimate_with_the_fixed_step_one(tmp_path):
    out = tmp_path / "diag"
    flags = ["--channels", "4", "8", "--T1", "60", "--T2", "30", "--thirdphase", "--betas", "0",
             "0.5", "--tol", "1e-6", "--samples", "2", "--out", str(out)]
    summary = main(flags)
    assert summary["worst_tensor"]["tol 1e-06 vs fixed steps"]["cosine"] > 0.999
    assert summary["max_rel_err"]["tol 1e-06 vs fixed steps"] < 1e-4
    # and the comparison can fail: a loose tol stops before the estimate has converged
    loose = main(flags[:-5] + ["1e-1", "--samples", "2", "--out", str(tmp_path / "loose")])
    assert loose["max_rel_err"]["tol 0.1 vs fixed steps"] > 1e-3


@pytest.mark.parametrize("flags, message", [
    (["--samples", "0"], "--samples"),
    (["--noise", "nan"], "--noise"),
    (["--noise", "-1"], "--noise"),
    (["--dtype", "float16"], "--dtype"),
])
def test_bad_flags_are_refused_before_work(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(TINY + flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
