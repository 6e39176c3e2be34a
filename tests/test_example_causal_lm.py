"""Tests of `examples/prune_causal_lm.py`, the decoder example: its parser and `main` in-process, on a tiny Llama
checkpoint with grouped-query attention saved to disk (the real SmolLM2 run is the slow test at the end)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3TextConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    SmolLM3Config,
)

from .tiny_models import load_example, needs_embedded_data, needs_llm_packages, needs_news_articles


ROOT = Path(__file__).resolve().parents[1]
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'0123456789"


@pytest.fixture(scope="module")
def example():
    return load_example("prune_causal_lm")


def save_checkpoint(folder: Path, config_class: type[PretrainedConfig] = LlamaConfig, **config) -> Path:
    """A tiny decoder (4 query heads over 2 key/value heads, 64 MLP neurons) with a character tokenizer, on disk."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *ALPHABET])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = config_class(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
        **config,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny Llama with grouped-query attention and a character tokenizer, on disk."""
    return save_checkpoint(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    train = [f"the {w} sat on the mat number {i}." for i in range(200) for w in ("cat", "dog", "bird")]
    news = [f"shares of company {i} rose {i % 7} percent on monday, analysts said." for i in range(60)]
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "news.txt").write_text("\n".join(news) + "\n")
    return {"train": folder / "train.txt", "news": folder / "news.txt"}


def small(checkpoint: Path, corpus: dict[str, Path], output_dir: Path, defaults: bool = False) -> list[str]:
    """A few steps on the tiny checkpoint and corpus; unless `defaults`, without the default general text and
    teacher."""
    return [
        "--model_name_or_path", str(checkpoint), "--train_file", str(corpus["train"]), "--news_file",
        str(corpus["news"]), "--output_dir", str(output_dir), "--max_steps", "8", "--block_size", "32",
        "--per_device_train_batch_size", "8", "--eval_tokens", "256", "--eval_window", "64", "--prompt_tokens", "8",
        "--new_tokens", "4", "--max_new_tokens", "6", "--prompts", "the cat", "shares", "--neuron_multiple", "8",
        "--logging_steps", "4", "--disable_tqdm", "true",
        *([] if defaults else ["--general_fraction", "0", "--distillation_weight", "0"]),
    ]  # fmt: skip


def run(example, argv: list[str]) -> dict:
    """What `python examples/prune_causal_lm.py ARGV` does, in-process."""
    return example.main(*example.make_parser().parse_args_and_config(argv))


@needs_news_articles  # the default general text, the Wikipedia sample of the gensim wheel
def test_default_export_is_a_stock_llama_that_generates_the_pruned_models_tokens(
    example, checkpoint, corpus, tmp_path
):
    results = run(example, small(checkpoint, corpus, tmp_path, defaults=True))
    pruned = tmp_path / "pruned"
    assert results["method"] == "taylor" and 0.1 <= results["sparsity"] <= 0.3  # the 20 % target, in whole units
    assert results["parameters"]["after"] < results["parameters"]["before"]
    assert len({json.dumps(layer) for layer in results["layers"]}) == 1  # every layer alike
    assert all(layer["heads"] == 4 and layer["kv_heads"] == 2 for layer in results["layers"])  # heads left alone
    assert all(layer["neurons"] % 8 == 0 and layer["neurons"] < 64 for layer in results["layers"])
    assert results["reload"] == {**results["reload"], "stock_config": True, "same_greedy_tokens": True}
    assert results["reload"]["max_abs_logit_difference"] < 1e-4
    assert not (pruned / "modeling_hf_prune.py").exists()
    model = AutoModelForCausalLM.from_pretrained(pruned)  # plain transformers, no remote code
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.num_parameters() == results["parameters"]["after"]

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written["perplexity"]) == {"tweets", "news"}
    for split in written["perplexity"].values():
        assert set(split) == {"before", "after"} and all(1 < v < 1e4 for v in split.values())
    for form in ("dense", "pruned"):
        for batch in ("batch_1", "batch_8"):
            speed = written["throughput"][form][batch]
            assert speed["prefill_tokens_per_s"] > 0 and speed["decode_tokens_per_s"] > 0
    assert [s["prompt"] for s in written["samples"]] == ["the cat", "shares"]
    card = (pruned / "README.md").read_text()
    assert "perplexity (news)" in card and "+ 45% of the blocks from wikipedia" in card  # replay by default
    assert results["distillation"]["teacher"].startswith("the model as loaded")  # and a KL to it, α 0.5
    assert results["distillation"]["weight"] == 0.5 and results["distillation"]["final_kl"] > 0


def test_uniform_export_without_key_value_groups_is_a_stock_llama(example, checkpoint, corpus, tmp_path):
    argv = [*small(checkpoint, corpus, tmp_path), "--prune_heads", "true", "--prune_neurons", "false"]
    results = run(example, [*argv, "--target_sparsity", "0.2"])  # only whole key/value groups can go
    assert len({json.dumps(layer) for layer in results["layers"]}) == 1
    assert all(
        layer["kv_heads"] == 1 and layer["heads"] == 2 and layer["neurons"] == 64 for layer in results["layers"]
    )
    assert results["reload"] == {**results["reload"], "stock_config": True, "same_greedy_tokens": True}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert model.config.num_key_value_heads == 1 and model.num_parameters() == results["parameters"]["after"]


def test_per_layer_export_loads_with_remote_code(example, checkpoint, corpus, tmp_path):
    argv = [
        *small(checkpoint, corpus, tmp_path),
        "--uniform_layers",
        "false",
        "--method",
        "magnitude",
        "--prune_heads",
        "true",
    ]
    results = run(example, [*argv, "--target_sparsity", "0.4", "--schedule", "one_shot", "--prune_end", "0.5"])
    assert results["reload"]["stock_config"] is False and results["reload"]["same_greedy_tokens"]
    assert (tmp_path / "pruned" / "modeling_hf_prune.py").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True)
    assert model.num_parameters() == results["parameters"]["after"]


@pytest.mark.parametrize(
    "config_class, config, stock_class",
    [
        (Qwen3Config, {"head_dim": 8}, "Qwen3ForCausalLM"),
        (SmolLM3Config, {"no_rope_layer_interval": 2}, "SmolLM3ForCausalLM"),  # no head_dim field: the export adds it
        (
            Gemma3TextConfig,
            {"head_dim": 8, "layer_types": ["sliding_attention", "full_attention"]},
            "Gemma3ForCausalLM",
        ),
    ],
    ids=["qwen3", "smollm3", "gemma3_text"],
)
def test_other_decoder_families_export_stock_and_per_layer_models(
    example, corpus, tmp_path, config_class, config, stock_class
):
    checkpoint = save_checkpoint(tmp_path / "dense", config_class, **config)
    argv = [*small(checkpoint, corpus, tmp_path / "uniform"), "--prune_heads", "true", "--prune_neurons", "false"]
    results = run(example, argv)  # one of the two key/value groups of every layer goes
    assert all(layer == {"heads": 2, "kv_heads": 1, "neurons": 64} for layer in results["layers"])
    assert results["reload"] == {**results["reload"], "stock_config": True, "same_greedy_tokens": True}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "uniform" / "pruned")  # plain transformers
    assert type(model).__name__ == stock_class and model.num_parameters() == results["parameters"]["after"]
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (2, 1, 8)

    argv = [*small(checkpoint, corpus, tmp_path / "per_layer"), "--prune_heads", "true", "--uniform_layers", "false"]
    results = run(example, [*argv, "--method", "magnitude", "--target_sparsity", "0.4"])
    assert len({json.dumps(layer) for layer in results["layers"]}) == 2  # each layer its own counts
    assert results["reload"] == {**results["reload"], "stock_config": False, "same_greedy_tokens": True}
    assert results["reload"]["max_abs_logit_difference"] < 1e-4


def test_bmrs_runs_with_its_kl_per_training_token(example, checkpoint, corpus, tmp_path):
    results = run(example, [*small(checkpoint, corpus, tmp_path), "--method", "bmrs", "--uniform_layers", "false"])
    assert results["method"] == "bmrs" and results["reload"]["same_greedy_tokens"]
    assert results["pruning_config"]["kl_weighting"] == "elbo"


def test_bad_arguments_name_the_field(example, checkpoint, corpus, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("sentence\nhello there\n")
    argv = small(checkpoint, corpus, tmp_path)
    with pytest.raises(ValueError, match="text_column='text'"):
        run(example, [*argv, "--train_file", str(data)])
    with pytest.raises(ValueError, match="eval_window"):
        run(example, [*argv, "--eval_tokens", "32"])
    with pytest.raises(ValueError, match="Unknown arguments"):
        run(example, [*argv, "--method", "bmrs", "--target_sparsity", "0.3"])
    with pytest.raises(ValueError, match="noise='example'"):
        run(example, [*argv, "--method", "bmrs", "--noise", "element"])


def test_arguments_from_a_yaml_file(example, tmp_path):
    """The example shares the scripts' parser: a YAML file of flag names, the example's own default method."""
    (tmp_path / "args.yaml").write_text("output_dir: out\nblock_size: 48\nmax_steps: 7\nprune_end: 0.5\n")
    args, training, config = example.make_parser().parse_args_and_config([str(tmp_path / "args.yaml")])
    assert (args.block_size, training.max_steps, type(config).__name__) == (48, 7, "TaylorConfig")
    assert (config.prune_end, config.target_sparsity, config.uniform_layers) == (0.5, 0.2, True)
    assert (args.general_text, args.general_fraction, config.criterion, config.reconstruct) == (
        "wikipedia",
        0.45,
        "first_order",
        True,
    )
    assert (training.learning_rate, training.distillation_weight) == (2e-4, 0.5)
    _, _, config = example.make_parser().parse_args_and_config(["--output_dir", "out", "--reconstruct", "false"])
    assert config.reconstruct is False
    flags = [
        "--output_dir",
        "out",
        "--general_text",
        "wikipedia",
        "--general_fraction",
        "0.3",
        "--criterion",
        "fisher",
    ]
    args, _, config = example.make_parser().parse_args_and_config(flags)
    assert (args.general_text, args.general_fraction, config.criterion) == ("wikipedia", 0.3, "fisher")
    with pytest.raises(ValueError, match="general_fraction=1.0"):
        example.make_parser().parse_args_and_config([*flags[:4], "--general_fraction", "1.0"])


@needs_embedded_data
@needs_news_articles
def test_embedded_tweets_and_news_articles(example, checkpoint, tmp_path):
    """Without data flags the example reads the embedded tweets and the news articles of the gensim wheel."""
    argv = [
        "--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path), "--max_steps", "2",
        "--max_train_samples", "200", "--block_size", "32", "--eval_tokens", "128", "--eval_window", "64",
        "--throughput_batch_sizes", "1", "--prompt_tokens", "4", "--new_tokens", "2", "--neuron_multiple", "8",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    results = run(example, argv)
    assert set(results["perplexity"]) == {"tweets", "news"}


@pytest.mark.slow
@needs_llm_packages
@needs_embedded_data
@needs_news_articles
def test_smollm2_end_to_end(example, tmp_path):
    """The real thing, shortened: SmolLM2-135M fine-tuned for a few steps while Taylor removes 20 %."""
    argv = [
        "--output_dir", str(tmp_path), "--max_steps", "6", "--max_train_samples", "400", "--eval_tokens", "1024",
        "--throughput_batch_sizes", "1", "--prompt_tokens", "16", "--new_tokens", "4", "--max_new_tokens", "8",
    ]  # fmt: skip
    results = run(example, argv)
    assert 0.15 <= results["sparsity"] <= 0.25 and results["reload"]["stock_config"]
    assert results["perplexity"]["news"]["before"] < 60  # a real pretrained LM (about 27 on 8,192 tokens)
    assert results["reload"]["same_greedy_tokens"]


def test_distils_from_the_model_as_loaded_or_from_a_given_folder(example, checkpoint, corpus, tmp_path):
    argv = [*small(checkpoint, corpus, tmp_path / "copy"), "--distillation_weight", "0.5"]
    results = run(example, argv)
    distillation = results["distillation"]
    assert distillation["teacher"].startswith("the model as loaded") and distillation["weight"] == 0.5
    assert 0 < distillation["final_kl"] < 10  # the KL to the frozen copy: zero before the first update, then grows
    assert results["reload"]["same_greedy_tokens"]

    argv = [*small(checkpoint, corpus, tmp_path / "folder"), "--distillation_weight", "0.5"]
    results = run(example, [*argv, "--teacher_model_name_or_path", str(checkpoint)])
    assert results["distillation"]["teacher"] == str(checkpoint) and results["distillation"]["final_kl"] > 0
    assert json.loads((tmp_path / "folder" / "metrics.json").read_text())["distillation"] == results["distillation"]


def test_target_zero_fine_tunes_the_dense_teacher_of_a_distilled_run(example, checkpoint, corpus, tmp_path):
    """The two runs of the distillation recipe (examples/README.md): `--target_sparsity 0` fine-tunes the model and
    removes nothing, and its export is the teacher of a run that prunes heads and neurons each their share."""
    dense = run(
        example, [*small(checkpoint, corpus, tmp_path / "dense"), "--target_sparsity", "0", "--reconstruct", "false"]
    )
    assert dense["sparsity"] == 0.0 and dense["parameters"]["after"] == dense["parameters"]["before"]
    assert dense["perplexity"]["tweets"]["after"] < dense["perplexity"]["tweets"]["before"]  # it was fine-tuned
    teacher = tmp_path / "dense" / "pruned"
    assert dense["reload"]["stock_config"] and dense["reload"]["same_greedy_tokens"]
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(teacher).state_dict()
    assert loaded.keys() == tuned.keys() and not all(torch.equal(loaded[k], tuned[k]) for k in loaded)

    argv = [
        *small(checkpoint, corpus, tmp_path / "pruned"), "--prune_heads", "true", "--uniform_layers", "false",
        "--kind_budget", "proportional", "--criterion", "fisher", "--min_heads_per_layer", "1",
        "--distillation_weight", "0.5", "--teacher_model_name_or_path", str(teacher),
    ]  # fmt: skip
    pruned = run(example, argv)
    assert pruned["distillation"]["teacher"] == str(teacher) and pruned["distillation"]["final_kl"] > 0
    assert 0.1 <= pruned["sparsity"] <= 0.3 and all(layer["kv_heads"] >= 1 for layer in pruned["layers"])
    assert pruned["reload"]["same_greedy_tokens"]


def test_readme_decoder_snippet_runs(checkpoint, corpus, tmp_path, monkeypatch):
    """The README's decoder-LLM code, as written, on the tiny checkpoint (only the step count is cut)."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("**A decoder LLM.**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "max_steps=480" in code
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    lines = corpus["train"].read_text().splitlines()[:64]
    blocks = datasets.Dataset.from_dict({"input_ids": [tokenizer(line)["input_ids"][:24] for line in lines]})
    namespace = {
        "llm": AutoModelForCausalLM.from_pretrained(checkpoint),
        "blocks": blocks,
        "tokenizer": tokenizer,
    }
    monkeypatch.chdir(tmp_path)
    exec(code.replace("max_steps=480", "max_steps=8"), namespace)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "pruned", trust_remote_code=True)
    dense = AutoModelForCausalLM.from_pretrained(checkpoint).num_parameters()
    assert pruned.num_parameters() < dense  # `llm` itself was pruned in place by finalize()


def test_distils_the_blocks_outputs_alone(example, checkpoint, corpus, tmp_path):
    """`--distillation_hidden_weight` without the logit KL still loads the teacher and reports the blocks' error."""
    results = run(example, [*small(checkpoint, corpus, tmp_path), "--distillation_hidden_weight", "1.0"])
    distillation = results["distillation"]
    assert distillation["weight"] == 0.0 and distillation["hidden_weight"] == 1.0
    assert 0 < distillation["final_hidden"] < 1  # relative to the teacher's states: zero before the first update
    assert results["reload"]["same_greedy_tokens"]


def test_without_distillation_there_is_no_teacher(example, checkpoint, corpus, tmp_path):
    with pytest.raises(ValueError, match="distillation_weight is 0"):
        run(example, [*small(checkpoint, corpus, tmp_path), "--teacher_model_name_or_path", str(checkpoint)])
    with pytest.raises(ValueError, match="teacher_model_name_or_path.*not a folder"):
        run(example, [*small(checkpoint, corpus, tmp_path), "--teacher_model_name_or_path", str(tmp_path / "none")])
