"""The decoder recipe's benchmark (benchmarks/causal_lm_recipe.py): its runs are the commands examples/README.md
gives, finished runs are skipped, and a teacher whose folder is gone is trained again before a run that needs it
(only then)."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from .tiny_models import load_example


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def recipe():
    import causal_lm_recipe

    return causal_lm_recipe


@pytest.fixture(scope="module")
def example():
    return load_example("prune_causal_lm")


def _readme_commands() -> list[list[str]]:
    """The example's command lines in the recipe block of examples/README.md, without the script and `--output_dir`."""
    text = (ROOT / "examples" / "README.md").read_text()
    block = text.split("### The recipe of the best rows", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line)[2:] for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return [_without(argv, "--output_dir") for argv in commands]


def _without(argv: list[str], *flags: str) -> list[str]:
    """`argv` without the given flags and their values."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


def _resolved(example, argv: list[str]) -> tuple:
    """What the example runs with for `argv`: its arguments, training arguments and pruning config, as plain data."""
    args, training, config = example.make_parser().parse_args_and_config([*argv, "--output_dir", "out"])
    return asdict(args), training.to_dict(), asdict(config)


def test_the_readme_commands_are_the_benchmarked_runs(recipe, example):
    """The recipe block of examples/README.md runs exactly what the benchmark recorded, defaults included."""
    pruned, dense = _readme_commands()
    assert _resolved(example, pruned) == _resolved(example, recipe.RUNS["pruned_20_self_distilled_long"])
    assert _resolved(example, dense) == _resolved(example, recipe.RUNS["dense_long"])
    assert _resolved(example, pruned) != _resolved(example, recipe.RUNS["pruned_20_self_distilled"])  # can fail


def test_finished_runs_are_skipped_and_a_missing_teacher_is_trained_again_when_a_row_needs_it(
    recipe, monkeypatch, tmp_path
):
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_run(name, extra):
        calls.append(name)
        if name in recipe.TEACHERS.values():
            (recipe.output_dir(name, extra) / "pruned").mkdir(parents=True)
        return {"run": name}

    monkeypatch.setattr(recipe, "run", fake_run)
    monkeypatch.setattr(recipe, "report", lambda results: "")
    results = tmp_path / "results.json"

    def main(*runs):
        monkeypatch.setattr(sys, "argv", ["causal_lm_recipe.py", "--runs", *runs, "--results", str(results)])
        recipe.main()

    main("pruned_20")
    assert calls == ["dense", "pruned_20"]  # the teacher first
    main("dense", "pruned_20")
    assert calls == ["dense", "pruned_20"]  # both recorded, the teacher's folder there: nothing to do
    teacher = recipe.output_dir("dense", []) / "pruned"
    teacher.rmdir()
    main("pruned_20_multiple_64")
    assert calls == ["dense", "pruned_20", "dense", "pruned_20_multiple_64"]
    teacher.rmdir()
    main("pruned_20_self_distilled", "dense_long")
    assert calls[4:] == ["pruned_20_self_distilled", "dense_long"]  # no teacher needed: none trained
    main("pruned_20_distilled_5e5_long")
    assert calls[6:] == ["dense_long_5e5", "pruned_20_distilled_5e5_long"]  # its own teacher, not `dense`
    recorded = json.loads(results.read_text())
    assert set(recorded) == {
        "dense", "pruned_20", "pruned_20_multiple_64", "pruned_20_self_distilled", "dense_long", "dense_long_5e5",
        "pruned_20_distilled_5e5_long",
    }  # fmt: skip
    assert recorded["pruned_20"]["argv"] == recipe.RUNS["pruned_20"]


def test_changed_flags_appear_once_with_their_new_value(recipe):
    argv = recipe.changed(recipe.RECIPE, general_fraction="0.7", seed="1")
    assert argv.count("--general_fraction") == 1 and argv[argv.index("--general_fraction") + 1] == "0.7"
    assert argv[-2:] == ["--seed", "1"] and len(argv) == len(recipe.RECIPE) + 2
    assert recipe.RECIPE[recipe.RECIPE.index("--general_fraction") + 1] == "0.45"  # the recipe itself is untouched


def _metrics(tweets: float, news: float) -> dict:
    decode = {"batch_1": {"decode_tokens_per_s": 100.0}}
    return {
        "perplexity": {"tweets": {"after": tweets}, "news": {"after": news}},
        "throughput": {"dense": decode, "pruned": decode},
        "sparsity": 0.2,
        "parameters": {"after": 1e8},
        "train_seconds": 60.0,
    }


def test_a_row_is_compared_with_its_own_dense_run(recipe):
    results = {
        "dense": {"metrics": _metrics(50.0, 40.0)},
        "dense_long": {"metrics": _metrics(40.0, 40.0)},
        "pruned_20_self_distilled": {"metrics": _metrics(55.0, 44.0)},
        "pruned_20_self_distilled_long": {"metrics": _metrics(44.0, 44.0)},
    }
    rows = {line.split(" | ")[0][2:]: line for line in recipe.report(results).splitlines() if line.startswith("| ")}
    assert "55.00 (+10.0 %)" in rows[recipe.LABELS["pruned_20_self_distilled"]]  # against `dense`
    assert "44.00 (+10.0 %)" in rows[recipe.LABELS["pruned_20_self_distilled_long"]]  # against `dense_long`
    assert "not run yet" in rows[recipe.LABELS["pruned_40_self_distilled"]]
