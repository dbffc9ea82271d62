"""The benchmarks' arithmetic counts, checked against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_ep import build, step_flops
from benchmarks.common import Row, format_rows, roof
from eplcanet.energy.dynamics import step


@pytest.mark.parametrize("nudged", [False, True])
@pytest.mark.parametrize("config", [((1, 16, 16), [4, 6], 5, 0), ((3, 12, 12), [5, 7, 8], 3, 1)])
def test_step_flops_match_torch_flop_counter(config, nudged):
    torch.manual_seed(0)
    net = build(*config)
    batch = 3
    x, y = torch.rand(batch, *config[0]), torch.randint(0, 10, (batch,))
    with torch.no_grad():
        drive = net.input_drive(x)  # once per phase: not part of a step
        states = net.init_states(batch)
        with FlopCounterMode(display=False) as counter:
            step(net, drive, states, 0.5 if nudged else 0.0, y)
    assert counter.get_total_flops() == step_flops(net, batch, nudged=nudged)


def test_percent_of_peak_uses_the_roof_of_the_row_precision():
    peaks = {"fp32 GEMM": 50.0, "fp32 conv": 100.0, "bf16 GEMM": 400.0, "bf16 conv": 200.0}
    assert roof(peaks, "fp32") == 100.0 and roof(peaks, "bf16") == 400.0
    rows = [Row("a", "u", ours_s=1.0, ref_s=3.0, flops=50e9),
            Row("b", "u", ours_s=1.0, flops=100e9, precision="bf16")]
    table = format_rows(rows, peaks).splitlines()
    assert "| 3.00x | 50.0 | 50% |" in table[2]
    assert "| - | 100.0 | 25% |" in table[3]


def test_gpu_section_keeps_every_suite_table_with_the_gpu_peaks():
    from benchmarks.run import device_sections

    peaks = {"fp32 GEMM": 100.0, "fp32 conv": 50.0, "bf16 GEMM": 400.0, "bf16 conv": 200.0}
    doc = ["LCA sparse coding: ours against the Gram reference.", "How it is measured.", "cmd"]
    rows = [Row("LCA iteration", "iteration", ours_s=0.5, ref_s=2.0, flops=25e9)]
    gpu = "\n".join(device_sections("cuda", [(doc, rows)], peaks))
    assert "### LCA sparse coding: ours against the Gram reference." in gpu
    assert "| LCA iteration | iteration | 500.00 ms | 2000.00 ms () | 4.00x | 50.0 | 50% |" in gpu
    assert "8192^3 matmul" in gpu and "TF32 off" in gpu and "How it is measured." not in gpu
    cpu = "\n".join(device_sections("cpu", [(doc, rows)], peaks))
    assert "\n## LCA sparse coding" in cpu and "How it is measured." in cpu
    assert "2048^3 matmul" in cpu and "GPU" not in cpu


def test_gpu_section_goes_before_the_data_parallel_one_and_splits_back_out():
    from benchmarks.run import merge_sections, split_gpu_section

    cpu = ["# Benchmarks", "", "## LCA", "", "| t |", "", "## Data-parallel throughput (1 vs 2)",
           "", "| d |"]
    gpu = ["## GPU: H200", "", "### LCA", "", "| g |"]
    text = merge_sections(cpu, gpu)
    assert text.index("## GPU: H200") < text.index("## Data-parallel") and "| d |" in text
    assert split_gpu_section(text) == (cpu, gpu + [""])
    assert split_gpu_section(merge_sections(cpu, [])) == (cpu, [])
    assert merge_sections(cpu[:5], gpu).rstrip().endswith("| g |")


@pytest.mark.slow
def test_run_writes_the_cpu_tables_keeps_a_gpu_section_and_refuses_a_missing_gpu(tmp_path,
                                                                                   monkeypatch):
    import benchmarks.run as run

    out = tmp_path / "B.md"
    ep = run.suite_heading("bench_ep")
    out.write_text("# Benchmarks\n\nWritten by `old command` on 2026-01-01.\n\nMeasured peaks on "
                   f"cpu: fp32 GEMM 1.0.\n\n## old CPU table\n\n{ep}\n\n| ep row |\n\n"
                   "## GPU: H200\n\n### LCA\n\n| kept |\n")
    monkeypatch.setattr("sys.argv", ["run", "--quick", "--only", "bench_mp", "--out", str(out)])
    run.main()
    text = out.read_text()
    assert "## Matching pursuit encode" in text and "| MP encode fwd+bwd" in text
    assert "Measured peaks on cpu: fp32 GEMM" in text and "old CPU table" not in text
    # a suite --only did not run keeps its section, saying which run measured it
    assert (f"{ep}\n\n(Kept from the file's previous version: Written by `old command` on "
            "2026-01-01; its peaks: fp32 GEMM 1.0.)\n\n| ep row |") in text
    run.main()  # kept twice: the note still names the run that measured it
    assert text.count("(Kept from") == out.read_text().count("(Kept from") == 1
    assert "## GPU: H200\n\n### LCA\n\n| kept |" in text  # a device not run keeps its section
    if not torch.cuda.is_available():
        missing = tmp_path / "C.md"
        monkeypatch.setattr("sys.argv", ["run", "--devices", "cuda", "--out", str(missing)])
        with pytest.raises(SystemExit, match="asked for a GPU, but CUDA is not available"):
            run.main()
        assert not missing.exists()


def test_thread_counts_below_one_are_refused_by_the_benchmark_commands(monkeypatch, capsys):
    import benchmarks.run as run

    monkeypatch.setattr("sys.argv", ["run", "--threads", "0"])
    with pytest.raises(SystemExit):
        run.main()
    assert "--threads: must be a positive integer, got 0" in capsys.readouterr().err


def test_benchmark_devices_go_through_the_application_resolver(monkeypatch):
    """--devices resolves each name as main_fast.py's --device does (same errors), and refuses
    two of one kind: BENCHMARKS.md has one CPU and one GPU section, a second would overwrite."""
    from benchmarks.run import resolve_devices
    from eplcanet.app.entry import resolve_device

    assert resolve_devices(["cpu"]) == {"cpu": torch.device("cpu")}
    for bad in ("tpu", "cpu:0"):
        with pytest.raises(SystemExit) as app:
            resolve_device(bad)
        with pytest.raises(SystemExit) as bench:
            resolve_devices(["cpu", bad])
        assert str(bench.value) == str(app.value) and "accepted:" in str(bench.value)
    with pytest.raises(SystemExit, match="names two cpu devices; accepted: one CPU and one GPU"):
        resolve_devices(["cpu", "cpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda:0 asked for a GPU, but CUDA is not"):
        resolve_devices(["cpu", "cuda:0"])


def test_a_suite_refuses_a_missing_gpu_before_any_timing(monkeypatch):
    from benchmarks.common import bench_main

    timed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["bench_mp", "--quick", "--device", "cuda"])
    with pytest.raises(SystemExit, match="--device cuda asked for a GPU, but CUDA is not"):
        bench_main("A suite.", lambda **kw: timed.append(kw) or [])
    assert timed == []
    monkeypatch.setattr("sys.argv", ["bench_mp", "--device", "gpu"])
    with pytest.raises(SystemExit, match="--device 'gpu' is not a device; accepted: auto"):
        bench_main("A suite.", lambda **kw: timed.append(kw) or [])
    assert timed == []


def test_estimator_rows_time_one_training_step_of_each_estimator():
    """What the estimator rows time is one real training minibatch: symmetric EP's moves the
    weights by -lr times the autograd-of-Phi EP gradient (an independent formulation), every
    other estimator moves every weight tensor, CEP (T2 steps) not as one-sided EP (one step),
    and a network that cannot run an estimator gets main_fast.py's refusal, not a row."""
    import copy

    from benchmarks.bench_ep import (ESTIMATOR_FLAGS, ESTIMATORS, minibatch_trainer,
                                     reference_ep)
    from eplcanet.energy.learning import Phases

    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    mlp = ["--model", "MLP", "--archi", "784", "16", "10", "--lrs", "0.5", "0.25"]
    flags = mlp + ESTIMATOR_FLAGS + ["--T1", "6", "--T2", "3", "--mbs", "4"]
    moved = {}
    for name, (alg_flags, _) in ESTIMATORS.items():
        net, train = minibatch_trainer(flags + alg_flags, x, y)
        before = copy.deepcopy(net)
        train()
        moved[name] = [(p - q).detach() for p, q in zip(net.parameters(), before.parameters())]
        for change in moved[name]:
            assert torch.isfinite(change).all() and change.abs().max() > 0, name
        if name == "symmetric EP":
            reference_ep(before, x, y, Phases(6, 3, (0.0, 0.1), thirdphase=True))
            for change, p, lr in zip(moved[name], before.parameters(), [0.5, 0.5, 0.25, 0.25]):
                torch.testing.assert_close(change, -lr * p.grad, rtol=1e-4, atol=1e-7)
    for cep, one_sided in zip(moved["CEP"], moved["one-sided EP"]):
        assert not torch.allclose(cep, one_sided, rtol=1e-3)
    cnn = ["--model", "CNN", "--channels", "2", "3", "--kernels", "5", "5", "--pools", "aa",
           "--fc", "10", "--lrs", "0.1", "0.1", "0.1"]
    refused = minibatch_trainer(cnn + ESTIMATOR_FLAGS + ESTIMATORS["CEP"][0], x, y)
    assert isinstance(refused, str) and "--alg CEP" in refused and "--model CNN" in refused
