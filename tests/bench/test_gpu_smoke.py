"""bench/gpu_smoke.py: the tiny CPU run prints the table with every column, and without CUDA it skips in one line."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_smoke
from trainer.families import build_tiny_qwen2_5_vl

TINY_CPU_RUN = ["--device", "cpu", "--allow-cpu", "--steps", "1", "--warmup", "0", "--repeats", "1"]


def table(output: str) -> list[list[str]]:
    """The Markdown table's rows (header first, the separator dropped), cells stripped."""
    lines = [line for line in output.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_tiny_cpu_run_prints_a_training_row_and_one_scoring_row_per_batch_size(capsys):
    assert gpu_smoke.main([*TINY_CPU_RUN, "--batches", "1,2", "--train-pairs", "2"]) == 0
    header, *rows = table(capsys.readouterr().out)
    assert tuple(header) == gpu_smoke.COLUMNS
    assert all(len(row) == len(header) for row in rows)
    cells = [dict(zip(header, row, strict=True)) for row in rows]
    assert [(c["model"], c["mode"], c["batch"]) for c in cells] == [
        ("tiny", "train", "2 pairs"),
        ("tiny", "score", "1 items"),
        ("tiny", "score", "2 items"),
    ]
    train = cells[0]
    assert int(train["ckpt calls/step"]) == 4  # 2 decoder + 2 vision layers went through checkpointing
    for c in cells:
        assert float(c["steps/s"]) > 0 and float(c["TFLOP/s"]) > 0
        assert c["% of bf16 peak"] == "unknown" and c["peak MiB"] == "n/a"  # no peak table entry, no CUDA peak


def test_without_cuda_it_skips_in_one_line_with_exit_code_zero(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and "CUDA is not available" in lines[0]


def test_cpu_needs_allow_cpu():
    with pytest.raises(SystemExit) as exit_info:
        gpu_smoke.parse_args(["--device", "cpu"])
    assert exit_info.value.code == 2


def test_the_100m_size_has_about_a_hundred_million_parameters():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model, _ = build_tiny_qwen2_5_vl(size=gpu_smoke.SIZES["100m"])
    assert 95e6 < sum(p.numel() for p in model.parameters()) < 105e6


def test_known_devices_get_their_dense_bf16_peak(monkeypatch):
    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA L4": 121.0, "NVIDIA L40S": 362.0}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert gpu_smoke.bf16_peak_tflops(torch.device("cuda"), None)[0] == peak
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Some Future GPU")
    assert gpu_smoke.bf16_peak_tflops(torch.device("cuda"), None)[0] is None
    assert gpu_smoke.bf16_peak_tflops(torch.device("cuda"), 500.0) == (500.0, "--peak-tflops")
