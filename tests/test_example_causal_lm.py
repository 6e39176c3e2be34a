"""Tests of `examples/prune_causal_lm.py`, the decoder example: its parser and `main` in-process, on a small Llama
built from config, with the embedded tweets or a local text file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .tiny_models import needs_embedded_data


ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--pretrain_steps", "30", "--max_steps", "8", "--max_train_samples", "600", "--max_eval_blocks", "16",
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--block_size", "32",
    "--per_device_train_batch_size", "8", "--logging_steps", "4", "--disable_tqdm", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("prune_causal_lm", ROOT / "examples" / "prune_causal_lm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(example, argv: list[str]) -> dict:
    """What `python examples/prune_causal_lm.py ARGV` does, in-process."""
    return example.main(*example.make_parser().parse_args_and_config(argv))


@needs_embedded_data
def test_bingo_per_layer_export_reloads_with_remote_code(example, tmp_path):
    results = run(example, [*SMALL, "--schedule", "one_shot", "--prune_end", "0.5", "--output_dir", str(tmp_path)])
    pruned = tmp_path / "pruned"
    assert abs(results["sparsity"] - 0.3) < 0.05  # within one unit of the default target
    assert results["parameters"]["after"] < results["parameters"]["before"]
    assert results["reload_max_abs_logit_difference"] < 1e-4
    assert all(layer["kv_heads"] * 2 == layer["heads"] for layer in results["layers"])  # whole GQA groups
    assert json.loads((tmp_path / "metrics.json").read_text())["perplexity"]["after"] > 1
    assert not results["stock_config"] and (pruned / "modeling_hf_prune.py").exists()
    assert "perplexity" in (pruned / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(pruned, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(pruned)
    ids = tokenizer("<s>good day", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "good day"  # characters round-trip
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == ids.shape[1] + 5


def test_uniform_layers_give_a_stock_llama_from_a_text_file(example, tmp_path):
    text = tmp_path / "corpus.txt"
    lines = [f"the {w} sat on the mat number {i}" for i in range(300) for w in ("cat", "dog", "bird")]
    text.write_text("\n".join(lines) + "\n")
    argv = [*SMALL, "--train_file", str(text), "--method", "magnitude", "--target_sparsity", "0.5"]
    results = run(example, [*argv, "--uniform_layers", "true", "--output_dir", str(tmp_path / "out")])
    pruned = tmp_path / "out" / "pruned"
    assert results["stock_config"] and not (pruned / "modeling_hf_prune.py").exists()
    assert len({json.dumps(layer) for layer in results["layers"]}) == 1  # every layer the same
    model = AutoModelForCausalLM.from_pretrained(pruned)  # plain transformers, no remote code
    assert type(model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6, 7]])).logits).all()


def test_bad_arguments_name_the_field(example, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("sentence\nhello there\n")
    with pytest.raises(ValueError, match="text_column='text'"):
        run(example, [*SMALL, "--train_file", str(data), "--output_dir", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="num_key_value_heads"):
        run(example, [*SMALL, "--num_key_value_heads", "3", "--output_dir", str(tmp_path / "b")])
    with pytest.raises(ValueError, match="Unknown arguments"):
        run(example, [*SMALL, "--method", "bmrs", "--target_sparsity", "0.3", "--output_dir", str(tmp_path / "c")])


def test_arguments_from_a_yaml_file(example, tmp_path):
    """The example shares the scripts' parser: a YAML file of flag names, the example's own default method."""
    (tmp_path / "args.yaml").write_text("output_dir: out\nhidden_size: 48\nmax_steps: 7\nprune_end: 0.5\n")
    args, training, config = example.make_parser().parse_args_and_config([str(tmp_path / "args.yaml")])
    assert (args.hidden_size, training.max_steps, type(config).__name__) == (48, 7, "BingoConfig")
    assert (config.prune_end, config.target_sparsity) == (0.5, example.DEFAULTS["target_sparsity"])
