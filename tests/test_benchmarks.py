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
