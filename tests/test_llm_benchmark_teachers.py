"""Every distilled row of the LLM benchmark (benchmarks/llm_benchmark.py) learns from the dense row fine-tuned with
its own data and budget: the teacher folder it reads is the one that dense row writes, and rows with other settings
(data mix, steps, learning rate, block size, seed) never share a teacher."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def bench():
    import llm_benchmark

    return llm_benchmark


def _teacher_dir(bench, method: str, seed: int = 0) -> Path:
    args = bench.parse_args(["--seed", str(seed)])
    lm_args = bench.CausalLMArguments(block_size=args.block_size)
    return bench.dense_teacher_dir(*bench.with_row_settings(method, args, lm_args))


def test_each_distilled_row_reads_the_teacher_its_dense_row_writes(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path))
    dense_rows = [m for m, v in bench.VARIANTS.items() if v.method == "dense"] + ["dense"]
    distilled = [m for m, v in bench.VARIANTS.items() if v.distillation_weight]
    assert distilled, "the benchmark has distilled rows"
    for method in distilled:
        setting = (bench.variant_of(method).data, bench.variant_of(method).training)
        dense = [d for d in dense_rows if (bench.variant_of(d).data, bench.variant_of(d).training) == setting]
        assert dense, f"{method} has no dense row with its data and budget"
        assert _teacher_dir(bench, method) == _teacher_dir(bench, dense[0]), method


def test_teachers_of_other_settings_are_kept_apart(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path))
    dense_rows = [m for m, v in bench.VARIANTS.items() if v.method == "dense"] + ["dense"]
    trained = [m for m in dense_rows if bench.variant_of(m).training.get("learning_rate") != 0.0]
    folders = [_teacher_dir(bench, m) for m in trained]
    assert len(set(folders)) == len(folders), dict(zip(trained, folders))
    assert _teacher_dir(bench, "dense", seed=1) != _teacher_dir(bench, "dense", seed=0)
    # a row whose data differ only in their block size (not a flag of the call) has a teacher of its own
    args = bench.parse_args([])
    lm_args = bench.CausalLMArguments(block_size=args.block_size)
    longer_blocks = bench.CausalLMArguments(block_size=4 * args.block_size)
    assert bench.dense_teacher_dir(args, longer_blocks) != bench.dense_teacher_dir(args, lm_args)
