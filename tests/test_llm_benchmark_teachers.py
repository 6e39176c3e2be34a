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
    """The folder `method`'s run reads its teacher from (distilled rows) or saves its model to (dense rows)."""
    args = bench.parse_args(["--seed", str(seed)])
    row_args, _ = bench.with_row_settings(method, args, bench.CausalLMArguments(block_size=args.block_size))
    dense = method if bench.is_dense({"method": method}) else bench.dense_row_of(method)
    return bench.dense_teacher_dir(row_args, bench.variant_of(dense).data)


def _dense_rows(bench) -> list[str]:
    return [m for m in bench.METHODS if bench.is_dense({"method": m})]


def test_each_distilled_row_reads_the_teacher_its_dense_row_writes(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path))
    distilled = [m for m, v in bench.VARIANTS.items() if v.distillation_weight]
    assert distilled, "the benchmark has distilled rows"
    for method in distilled:
        dense = [d for d in _dense_rows(bench) if bench.setting({"method": d}) == bench.setting({"method": method})]
        assert dense, f"{method} has no dense row with its data and budget"
        assert _teacher_dir(bench, method) == _teacher_dir(bench, dense[0]), method


def test_teachers_of_other_settings_are_kept_apart(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path))
    trained = [m for m in _dense_rows(bench) if bench.variant_of(m).training.get("learning_rate") != 0.0]
    folders = [_teacher_dir(bench, m) for m in trained]
    assert len(set(folders)) == len(folders), dict(zip(trained, folders))
    assert _teacher_dir(bench, "dense", seed=1) != _teacher_dir(bench, "dense", seed=0)
    # a row whose data differ only in their block size (not a flag of the call) has a teacher of its own
    args = bench.parse_args([])
    assert bench.dense_teacher_dir(args, {"block_size": 4 * args.block_size}) != bench.dense_teacher_dir(args, {})


def test_a_pruned_row_alone_runs_after_its_dense_row(bench):
    distilled = "taylor_proportional_half_general_long_lr2e4_block256_reconstruct_fisher_kd"
    assert bench.with_dense_rows([distilled, "taylor"]) == [
        "dense_half_general_long_lr2e4_block256",
        distilled,
        "dense",
        "taylor",
    ]
    # dense rows asked for explicitly keep their place and are not run twice
    assert bench.with_dense_rows(["dense", "taylor", "magnitude"]) == ["dense", "taylor", "magnitude"]
    assert set(bench.with_dense_rows(list(bench.METHODS))) == set(bench.METHODS)
