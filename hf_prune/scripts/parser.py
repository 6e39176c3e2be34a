"""The argument parser of hf_prune's scripts: `HfArgumentParser` over a script's argument dataclasses plus the config
class of the pruning method picked with `--method`.

```python
parser = PruningScriptParser((ModelArguments, PruningArguments), defaults={"method": "magnitude", "num_train_epochs": 1})
model_args, training_args, pruning_config = parser.parse_args_and_config()  # sys.argv[1:]
```

* `--method` takes any name in `hf_prune.available_methods()`; the fields of that method's config class become flags
  of the same parser, so `--help` lists them too.
* A single `.json`, `.yaml` or `.yml` argument (or `--config FILE`) replaces the command line; its keys are the flag
  names (`HfArgumentParser.parse_dict`).
* `defaults` (flag name -> value) replaces the default of every field with that name, for the fields the chosen
  method has; a flag or a file key wins over it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_prune.configs import PruningConfig
from hf_prune.registry import available_methods, get_method


ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


@dataclasses.dataclass
class MethodArguments:
    """The pruning method; the fields of its config class become flags too."""

    method: str = dataclasses.field(
        default="magnitude",
        metadata={"help": "Pruning method (hf_prune.available_methods()); its config fields become flags too."},
    )


class PruningScriptParser:
    """Parses a script's argument dataclasses and the chosen method's config from one command line or one file.

    Args:
        dataclass_types (`Iterable[type]`): the script's argument dataclasses, in the order they are returned.
        defaults (`Mapping[str, Any]`, *optional*): flag name -> the script's default; `"method"` names the default
            method.
        parser_kwargs: passed to `HfArgumentParser` (e.g. `prog`, `description`).
    """

    def __init__(self, dataclass_types: Iterable[type], defaults: Mapping[str, Any] | None = None, **parser_kwargs):
        self.dataclass_types = (*dataclass_types, MethodArguments)
        self.defaults = dict(defaults or {})
        self.parser_kwargs = parser_kwargs
        self.default_method = self.defaults.get("method", MethodArguments.method)
        self.script_fields = set().union(*(_field_names(cls) for cls in self.dataclass_types))

    def make_parser(self, method: str) -> HfArgumentParser:
        """The `HfArgumentParser` of the script's dataclasses and `method`'s config class, with the script defaults."""
        config_class = self._method_flags(method)
        parser = HfArgumentParser(
            (*self.dataclass_types, config_class),
            allow_abbrev=False,
            epilog=f"The last options are the fields of {config_class.__name__} (method {method!r}); --method picks "
            f"another method: {', '.join(available_methods())}.",
            **self.parser_kwargs,
        )
        parser.set_defaults(**self._defaults_for(self.script_fields | _field_names(config_class)))
        return parser

    def parse_args_and_config(self, args: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Parse `args` (default: `sys.argv[1:]`), or the single JSON/YAML file they name (also `--config FILE`).

        Returns:
            One instance of each script dataclass, in order, then the method's `PruningConfig`.
        """
        argv = list(sys.argv[1:] if args is None else args)
        if len(argv) == 2 and argv[0] == "--config":
            argv = argv[1:]
        if len(argv) == 1 and argv[0].endswith(ARGUMENT_FILE_SUFFIXES):
            return self.parse_file(argv[0])
        peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        peek.add_argument("--method", default=self.default_method)
        method = peek.parse_known_args(argv)[0].method
        *outputs, unknown = self.make_parser(method).parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True, look_for_args_file=False
        )
        if unknown:
            config_class = self._method_flags(method)
            raise ValueError(
                f"Unknown arguments {unknown}. Method {method!r} ({config_class.__name__}) takes "
                + ", ".join(f"--{name}" for name in _field_names(config_class))
                + "; --help lists every flag."
            )
        return self._finish(method, outputs)

    def parse_file(self, path: str | Path) -> tuple[Any, ...]:
        """Parse a `.json`, `.yaml` or `.yml` file whose keys are flag names (returns what `parse_args_and_config`
        does)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of flag names to values, not a {type(data).__name__}.")
        method = data.get("method", self.default_method)
        parser = self.make_parser(method)
        known = self.script_fields | _field_names(self._method_flags(method))
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}. Keys are the flag names of --method {method} --help.")
        return self._finish(method, parser.parse_dict({**self._defaults_for(known), **data}))

    def _method_flags(self, method: str) -> type[PruningConfig]:
        """The config class whose fields are `method`'s flags."""
        if method not in available_methods():
            raise ValueError(f"Invalid --method {method!r}: use one of {available_methods()}.")
        config_class = get_method(method).config_class
        _check_names(config_class, self.script_fields)
        return config_class

    def _defaults_for(self, names: set[str]) -> dict[str, Any]:
        return {k: v for k, v in self.defaults.items() if k in names}

    def _finish(self, method: str, outputs: Sequence[Any]) -> tuple[Any, ...]:
        *script_outputs, _method_arguments, config = outputs
        return (*script_outputs, config)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _check_names(config_class: type[PruningConfig], taken: set[str]) -> None:
    """A config field named like a script flag would make two flags of one name: refuse it, naming the field."""
    shared = sorted(f.name for f in dataclasses.fields(config_class) if f.init and f.name in taken)
    if shared:
        raise ValueError(
            f"{config_class.__name__} has fields named like the script's own flags ({', '.join(shared)}): rename "
            "them in the config class (e.g. with a prefix such as `method_seed` or `decision_warmup_steps`)."
        )
