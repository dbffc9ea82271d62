"""python -m eplcanet.diagnose: the conditioning diagnostic with main_fast.py's flags."""

import json

import pandas as pd
import pytest

from eplcanet.diagnose import main

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
