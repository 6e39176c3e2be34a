"""Model cards for pruned models: YAML metadata, how to load, what was kept (table and picture), sizes, latency,
metrics, hyper-parameters, versions and citations. Rendered from `model_cards/template.md` (shipped in the package)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
from itertools import groupby
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

from .architectures import get_architecture, task_classes
from .record import find_record, record_of
from .report import pruning_summary


TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
START, END = "<!-- hf_prune:start -->", "<!-- hf_prune:end -->"
HF_PRUNE_CITATION = """@software{hf_prune,
  title = {hf_prune: pruning Hugging Face transformers while they are fine-tuned},
  year = {2026},
  url = {https://pypi.org/project/hf-prune/}
}"""
_PIPELINE_TAGS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
    "ForCausalLM": "text-generation",
    "LMHeadModel": "text-generation",
    "ForImageClassification": "image-classification",
}


def set_card_info(model: nn.Module, **info: Any) -> None:
    """Record facts for the model card (e.g. `base_model`, `dataset`, `metrics={"accuracy": {"before": .., "after":
    ..}}`, `latency`, `training`, `repo_id`); they are used on the next `save_pretrained` / `push_to_hub`."""
    card = dict(find_record(model).card)
    card.update({k: v for k, v in info.items() if v is not None})
    record_of(model).card = card


def _stock_name(model: nn.Module) -> str:
    name = type(model).__name__
    return name.removeprefix("HfPruned")


def _auto_class(model: nn.Module) -> str:
    stock = _stock_name(model)
    for auto, name in task_classes(get_architecture(model)).items():
        if name == stock:
            return auto
    return "AutoModel"


def _hub_id(name: str | None) -> str | None:
    """A Hub repository id, or None for local paths."""
    if name and re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(name):
        return name
    return None


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("hf-prune", "transformers", "torch", "accelerate", "datasets"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _layer_rows(before_layers: list[dict], after_layers: list[dict]) -> list[dict]:
    """One table row per run of consecutive layers with the same counts before and after (`index` "0" or "0–29"):
    a uniform export is one row, not one per layer."""
    layers = [
        {**after, **{f"{k}_before": v for k, v in before.items()}}
        for before, after in zip(before_layers, after_layers)
    ]
    rows = []
    for row, run in groupby(enumerate(layers), key=lambda item: item[1]):
        indices = [i for i, _ in run]
        rows.append({**row, "index": f"{indices[0]}–{indices[-1]}" if len(indices) > 1 else str(indices[0])})
    return rows


def render_model_card(model: nn.Module, repo_id: str | None = None) -> ModelCard:
    """The card of a finalized (physically pruned) model, from its pruning record and `set_card_info` facts."""
    info = dict(find_record(model).card)
    result = pruning_summary(model)
    config = find_record(model).config
    method = config.method if config is not None else "manual"
    method_cls = None
    if config is not None:
        from .registry import get_method

        method_cls = get_method(config.method).method_class
    base_model = info.get("base_model") or _hub_id(find_record(model).kept["base_config"].get("_name_or_path"))
    stock = _stock_name(model)
    pipeline_tag = next((tag for suffix, tag in _PIPELINE_TAGS.items() if stock.endswith(suffix)), None)
    metrics = info.get("metrics") or {}
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        tags=sorted({"hf_prune", "pruned", "structured-pruning", method, *info.get("tags", [])}),
        datasets=[info["dataset"]] if _hub_id(info.get("dataset")) else None,
        metrics=sorted(metrics) or None,
        pipeline_tag=pipeline_tag,
    )
    layers = _layer_rows(result["before"]["layers"], result["after"]["layers"])
    citations = [c for c in (getattr(method_cls, "citation", None), HF_PRUNE_CITATION) if c]
    environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(TEMPLATE.read_text())
    text = template.render(
        card_data=data.to_yaml(),
        model_name=info.get("model_name") or (repo_id or info.get("repo_id") or f"{stock} (pruned)").split("/")[-1],
        base_model=base_model,
        dataset=info.get("dataset"),
        method=method,
        method_title=getattr(method_cls, "title", None) or method,
        paper=getattr(method_cls, "paper", None),
        pruning_config=json.dumps(config.to_dict(), sort_keys=True) if config is not None else "{}",
        sparsity=result["sparsity"],
        parameters_before=result["before"]["parameters"],
        parameters_after=result["after"]["parameters"],
        prunable_before=result["before"]["prunable_parameters"],
        prunable_after=result["after"]["prunable_parameters"],
        flops_before=result["before"]["flops_per_sequence_128"],
        flops_after=result["after"]["flops_per_sequence_128"],
        export=result["export"],
        auto_class=_auto_class(model),
        repo_id=repo_id or info.get("repo_id") or "path/to/this/folder",
        layers=layers,
        latency=info.get("latency"),
        metrics=metrics,
        training=info.get("training"),
        versions=_versions(),
        citations=citations,
    )
    return ModelCard(text)


def write_model_card(
    model: nn.Module,
    directory: str | os.PathLike,
    existing: str | os.PathLike | None = None,
    repo_id: str | None = None,
) -> None:
    """Write `README.md` and `kept_units.png` into `directory`. If `existing` (a README) is given, its text outside
    hf_prune's section and its metadata are kept: the card is updated, not clobbered."""
    directory = Path(directory)
    card = render_model_card(model, repo_id)
    if existing is not None and Path(existing).exists():
        card = _merge(ModelCard.load(existing), card)
    card.save(directory / "README.md")
    plot_kept_units(model, directory / "kept_units.png")


def _merge(old: ModelCard, new: ModelCard) -> ModelCard:
    data = {**old.data.to_dict(), **{k: v for k, v in new.data.to_dict().items() if v is not None}}
    data["tags"] = sorted(set(old.data.to_dict().get("tags") or []) | set(new.data.tags or []))
    section = new.text[new.text.index(START) : new.text.index(END) + len(END)]
    if START in old.text and END in old.text:
        body = old.text[: old.text.index(START)] + section + old.text[old.text.index(END) + len(END) :]
    else:
        body = old.text.rstrip() + "\n\n" + section + "\n"
    return ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n{body.lstrip()}")


def plot_kept_units(model: nn.Module, path: str | os.PathLike) -> None:
    """A two-panel bar chart of the heads and neurons each layer kept, against the original counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = pruning_summary(model)
    before, after = result["before"]["layers"], result["after"]["layers"]
    layers = range(len(after))
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    for axis, key, title in ((axes[0], "heads", "attention heads"), (axes[1], "neurons", "MLP neurons")):
        axis.bar(layers, [b[key] for b in before], color="#d9d9d9", label="original")
        axis.bar(layers, [a[key] for a in after], color="#3b75af", label="kept")
        axis.set_xlabel("layer")
        axis.set_title(title)
        axis.set_xticks(list(layers))
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{result['sparsity']:.0%} of prunable parameters removed", fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)
