"""`AutoPrunedModel`: load any model saved by hf_prune, in either export form, without remote code."""

from __future__ import annotations

import json
import os

import transformers
from transformers import PretrainedConfig
from transformers.utils import cached_file

from .architectures import get_architecture, get_architecture_by_type
from .configs import CONFIG_NAME, PruningConfig
from .export import _export_class, generated_module
from .record import record_of


class AutoPrunedModel:
    """Loads a folder or Hub repo written by a pruned model's `save_pretrained` / `push_to_hub`.

    Per-layer (remote-code) exports are built with hf_prune's own runtime, so `trust_remote_code` is never needed.
    The returned model can be pruned further and saved again.

    Example:

    ```python
    from hf_prune import AutoPrunedModel

    model = AutoPrunedModel.from_pretrained("out/pruned")
    ```
    """

    def __init__(self):
        raise OSError("Use AutoPrunedModel.from_pretrained(path_or_repo_id).")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load the model class named in the saved config; extra `kwargs` go to `from_pretrained`."""
        kwargs.pop("trust_remote_code", None)
        hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        config_dict, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        architecture = (config_dict.get("architectures") or [None])[0]
        if architecture is None:
            raise ValueError(f"{pretrained_model_name_or_path} has no `architectures` entry in its config.json.")
        base_type = config_dict.get("hf_prune_base_model_type")
        if base_type is not None:
            module = generated_module(get_architecture_by_type(base_type))
            model_class = getattr(module, architecture)
        else:
            model_class = getattr(transformers, architecture)
        model = model_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
        _restore_record(model, pretrained_model_name_or_path, hub_kwargs)
        model.__class__ = _export_class(model_class)
        return model


def _restore_record(model, path, hub_kwargs) -> None:
    """Re-attach the kept indices and original sizes from `pruning_config.json`, so the model can be pruned again and
    re-saved with a complete record."""
    file = cached_file(path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if file is None:
        return
    with open(file) as f:
        data = json.load(f)
    result = data.get("result", {})
    if data.get("method") not in (None, "manual"):
        record_of(model).config = PruningConfig.from_dict(data)
    before = result.get("before")
    if before:
        base = model.config.to_dict()
        for key in ("hf_prune_layout", "hf_prune_base_model_type", "auto_map"):
            base.pop(key, None)
        record_of(model).kept = {
            "heads": {int(k): v for k, v in result.get("kept_heads", {}).items()},
            "neurons": {int(k): v for k, v in result.get("kept_neurons", {}).items()},
            "before": before,
            "base_config": _original_config(model, base, before),
        }


def _original_config(model, config: dict, before: dict) -> dict:
    """The dense model's sizes, for re-exporting after a further prune."""
    spec = get_architecture(model)
    layers = before["layers"]
    config = dict(config)
    config[spec.neurons_key] = layers[0]["neurons"]
    config[spec.heads_key] = layers[0]["heads"]
    if spec.kv_heads_key:
        config[spec.kv_heads_key] = layers[0]["kv_heads"]
    return config
