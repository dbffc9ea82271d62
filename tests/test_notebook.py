"""eval_lcanet.ipynb runs top to bottom on runs that main_fast.py has just produced, and writes
its figures. The runs are tiny (digits, one epoch) so that the test takes well under a minute."""

from __future__ import annotations

import pytest
import torch
from helpers import DIGITS_CNN, ROOT, copy_results, is_png, main_fast

NOTEBOOK = ROOT / "eval_lcanet.ipynb"
LCA = ["--model", "LCACNN", "--dict_training", "learn", "--lca_feats", "8", "--lca_ksize", "3"]
LCA += ["--lca_stride", "1", "--lca_iters", "10", "--lca_tau", "5"]


@pytest.mark.slow
def test_notebook_runs_on_fresh_runs_and_writes_its_figures(tmp_path, monkeypatch,
                                                            digits_cnn_results):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    torch.set_num_threads(1)
    results = copy_results(digits_cnn_results, tmp_path / "results")  # the attacks write into it
    main_fast(*DIGITS_CNN, *LCA, "--epochs", "1", "--save", "--results-dir", str(results))
    (cnn,) = results.glob("digits/EP/CNN/*/run_1")
    main_fast(
        *DIGITS_CNN,
        "--todo",
        "attack",
        "--load-path",
        str(cnn),
        "--attack-samples",
        "16",
        "--pgd-steps",
        "2",
        "--attack-norm",
        "Linf",
        "--epsilons",
        "0",
        "0.2",
    )
    main_fast(
        *DIGITS_CNN,
        "--todo",
        "corrupt",
        "--load-path",
        str(cnn),
        "--attack-samples",
        "32",
        "--corruptions",
        "contrast",
        "jpeg",
        "--severities",
        "1",
        "5",
    )

    figures = tmp_path / "figures"
    monkeypatch.setenv("EPLCANET_RUNS", str(results / "**" / "run_*"))
    monkeypatch.setenv("EPLCANET_FIGURES", str(figures))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    text = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    assert "2 run(s)" in text
    assert "EP CNN run_1 has no dictionary (model CNN): skipped" in text
    expected = [
        "curves.png",
        "robustness.png",
        "robustness_study.png",
        "corruptions_EP_CNN_run_1.png",
        "EP_CNN_run_1_neural_activity.png",
        "EP_LCACNN_run_1_neural_activity.png",
        "EP_LCACNN_run_1_dictionary.png",
        "EP_LCACNN_run_1_reconstructions.png",
        "EP_LCACNN_run_1_code_sparsity.png",
    ]
    for name in expected:
        assert is_png(figures / name, more_than=0), name
    assert not (figures / "EP_CNN_run_1_dictionary.png").exists()
    for label in ("EP_CNN_run_1", "EP_LCACNN_run_1"):
        assert (figures / f"{label}_gdu" / "gdu.json").is_file()
        assert is_png(figures / f"{label}_gdu" / "gdu_synapses_0_weight.png", more_than=0)
    study = (figures / "robustness_study.csv").read_text()  # one seed: the CI is left empty
    assert study.startswith("task,model,norm,epsilon,kind,n_seeds,mean") and "EP CNN" in study
    table = (figures / "runs.csv").read_text()
    assert table.count("\n") == 3 and "best_val_acc" in table and "whitebox_Linf_acc@0.2" in table
    # Images shown inline: the notebook displays what it writes.
    assert sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    ) >= len(expected)
