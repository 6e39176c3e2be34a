"""Architecture registry: where the heads and MLP neurons of each supported model family live.

Adding a family is one `ArchitectureSpec` registered with `register_architecture` plus one row in the tests' model
table; see `docs/adding_a_family.md`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import transformers
from torch import nn
from transformers.models.auto import modeling_auto


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where the prunable units of one model family sit. Paths are relative to one transformer block.

    Args:
        model_type (`str`): the `config.model_type` of the family (e.g. `"bert"`).
        layers (`str`): path of the block list relative to `model.base_model` (e.g. `"encoder.layer"`).
        attention (`str`): the attention module whose forward computes q/k/v and the context (replaced by a bias-only
            stand-in when a layer loses every head).
        o (`str`): the attention output projection; head gates act on its input.
        q, k, v (`str`, *optional*): separate query/key/value projections.
        qkv (`str`, *optional*): a fused q|k|v projection (GPT-2's `c_attn`), used instead of q/k/v.
        mlp_in (`tuple[str, ...]`): projections producing MLP neurons (up, and gate for gated MLPs).
        mlp_out (`str`): the MLP down projection; neuron gates act on its input.
        attention_attributes (`dict[str, str]`): attributes of the attention module to update after resizing, mapped
            to one of `"heads"`, `"kv_heads"`, `"groups"`, `"width"` (heads × head_dim).
        heads_key, kv_heads_key, neurons_key, head_dim_key (`str`): config fields holding those sizes. A family whose
            config has no `head_dim_key` ties head size to hidden size, so head pruning is not expressible in its
            stock config.
        grouped_query (`bool`): key/value heads are shared by groups of query heads.
    """

    model_type: str
    layers: str
    attention: str
    o: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    heads_key: str
    neurons_key: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    attention_attributes: dict[str, str] = field(default_factory=dict)
    kv_heads_key: str | None = None
    head_dim_key: str | None = None
    hidden_key: str = "hidden_size"
    grouped_query: bool = False

    def to_dict(self) -> dict:
        """Plain-data form, embedded in exported modeling files."""
        data = dataclasses.asdict(self)
        data["mlp_in"] = list(self.mlp_in)
        return data

    # -- sizes read from a config -----------------------------------------------------------------------------------
    def num_heads(self, config) -> int:
        return getattr(config, self.heads_key)

    def num_kv_heads(self, config) -> int:
        if not self.grouped_query:
            return self.num_heads(config)
        return getattr(config, self.kv_heads_key, None) or self.num_heads(config)

    def head_dim(self, config) -> int:
        explicit = getattr(config, self.head_dim_key, None) if self.head_dim_key else None
        return explicit or getattr(config, self.hidden_key) // self.num_heads(config)

    def num_neurons(self, config) -> int:
        value = getattr(config, self.neurons_key, None)
        return value if value is not None else 4 * getattr(config, self.hidden_key)  # GPT-2's n_inner=None

    @property
    def can_express_heads(self) -> bool:
        """Whether a uniform head count can be written in the stock config (needs a `head_dim` field)."""
        return self.head_dim_key is not None


_ARCHITECTURES: dict[str, ArchitectureSpec] = {}


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Register a family so `prepare_model_for_pruning`, surgery and export support it."""
    if spec.model_type in _ARCHITECTURES:
        raise ValueError(f"architecture {spec.model_type!r} is already registered")
    _ARCHITECTURES[spec.model_type] = spec
    return spec


def supported_model_types() -> list[str]:
    return sorted(_ARCHITECTURES)


def get_architecture(model_or_config) -> ArchitectureSpec:
    """The spec of a model (or config); a clear `ValueError` for unsupported families."""
    config = getattr(model_or_config, "config", model_or_config)
    return get_architecture_by_type(
        getattr(config, "hf_prune_base_model_type", None) or getattr(config, "model_type", None)
    )


def get_architecture_by_type(model_type: str | None) -> ArchitectureSpec:
    """The spec registered for `model_type`; a clear `ValueError` for unsupported families."""
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"hf_prune does not support model_type={model_type!r}. Supported families: "
            f"{', '.join(supported_model_types())}. To add one, register an `ArchitectureSpec` "
            "(see docs/adding_a_family.md)."
        )
    return _ARCHITECTURES[model_type]


def transformer_blocks(model: nn.Module, spec: ArchitectureSpec) -> nn.ModuleList:
    return model.base_model.get_submodule(spec.layers)


_BERT_LIKE = dict(
    layers="encoder.layer",
    attention="attention.self",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    mlp_in=("intermediate.dense",),
    mlp_out="output.dense",
    attention_attributes={"num_attention_heads": "heads", "all_head_size": "width"},
    heads_key="num_attention_heads",
    neurons_key="intermediate_size",
)
_LLAMA_LIKE = dict(
    layers="layers",
    attention="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    attention_attributes={"num_key_value_groups": "groups"},
    heads_key="num_attention_heads",
    kv_heads_key="num_key_value_heads",
    head_dim_key="head_dim",
    neurons_key="intermediate_size",
    grouped_query=True,
)

register_architecture(ArchitectureSpec(model_type="bert", **_BERT_LIKE))
register_architecture(ArchitectureSpec(model_type="roberta", **_BERT_LIKE))
register_architecture(
    ArchitectureSpec(
        model_type="distilbert",
        layers="transformer.layer",
        attention="attention",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        o="attention.out_lin",
        mlp_in=("ffn.lin1",),
        mlp_out="ffn.lin2",
        attention_attributes={"n_heads": "heads"},
        heads_key="n_heads",
        neurons_key="hidden_dim",
        hidden_key="dim",
    )
)
register_architecture(
    ArchitectureSpec(
        model_type="vit",
        layers="layers",
        attention="attention",
        q="attention.q_proj",
        k="attention.k_proj",
        v="attention.v_proj",
        o="attention.o_proj",
        mlp_in=("mlp.fc1",),
        mlp_out="mlp.fc2",
        attention_attributes={"num_attention_heads": "heads"},
        heads_key="num_attention_heads",
        head_dim_key="head_dim",
        neurons_key="intermediate_size",
    )
)
register_architecture(
    ArchitectureSpec(
        model_type="gpt2",
        layers="h",
        attention="attn",
        qkv="attn.c_attn",
        o="attn.c_proj",
        mlp_in=("mlp.c_fc",),
        mlp_out="mlp.c_proj",
        attention_attributes={"num_heads": "heads", "split_size": "width"},
        heads_key="n_head",
        neurons_key="n_inner",
        hidden_key="n_embd",
    )
)
# Qwen3 and Gemma 3 normalize queries and keys per head (a norm over head_dim, shared by all heads), so removing
# heads leaves the norms as they are; Gemma 3's attention scale comes from the config, not the head count
for _model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "smollm3"):
    register_architecture(ArchitectureSpec(model_type=_model_type, **_LLAMA_LIKE))


# -- task heads --------------------------------------------------------------------------------------------------------
AUTO_CLASSES = {
    "MODEL_MAPPING_NAMES": "AutoModel",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "AutoModelForCausalLM",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "AutoModelForSequenceClassification",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "AutoModelForTokenClassification",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": "AutoModelForQuestionAnswering",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": "AutoModelForMaskedLM",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "AutoModelForImageClassification",
}


def task_classes(spec: ArchitectureSpec) -> dict[str, str]:
    """Auto class name -> stock model class name, for every task head of the family."""
    classes = {}
    for mapping_name, auto_class in AUTO_CLASSES.items():
        name = getattr(modeling_auto, mapping_name).get(spec.model_type)
        if isinstance(name, str) and hasattr(transformers, name):
            classes[auto_class] = name
    return classes
