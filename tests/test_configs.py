"""Pruning configs: validation with actionable errors, serialisation, HfArgumentParser."""

import dataclasses

import pytest
from transformers import HfArgumentParser

import hf_prune
from hf_prune import MagnitudeConfig, PruningConfig, RandomConfig


CONFIG_CLASSES = [hf_prune.registry.get_method(name).config_class for name in hf_prune.available_methods()]


@pytest.mark.parametrize("config_cls", CONFIG_CLASSES, ids=lambda c: c.method)
def test_round_trip(config_cls, tmp_path):
    config = config_cls()
    config.save_pretrained(tmp_path)
    loaded = PruningConfig.from_pretrained(tmp_path)
    assert type(loaded) is config_cls and loaded == config
    assert PruningConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("config_cls", CONFIG_CLASSES, ids=lambda c: c.method)
def test_hf_argument_parser(config_cls):
    (config,) = HfArgumentParser(config_cls).parse_args_into_dataclasses(args=["--neuron_multiple", "8"])
    assert config.neuron_multiple == 8


def test_unknown_keys_are_dropped_with_a_warning(caplog):
    config = PruningConfig.from_dict({"method": "random", "target_sparsity": 0.2, "from_the_future": 1})
    assert config == RandomConfig(target_sparsity=0.2)
    assert "from_the_future" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"neuron_multiple": 0}, "neuron_multiple"),
        ({"min_heads_per_layer": -1}, "min_heads_per_layer"),
        ({"prune_heads": False, "prune_neurons": False}, "prune_heads"),
    ],
)
def test_invalid_values_name_the_field_and_the_fix(kwargs, field):
    with pytest.raises(ValueError, match=field) as error:
        MagnitudeConfig(**kwargs)
    assert "use" in str(error.value) or "enable" in str(error.value)


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match="Available methods: .*magnitude.*random"):
        PruningConfig.from_dict({"method": "nope"})


def test_every_field_has_help():
    for config_cls in CONFIG_CLASSES:
        for f in dataclasses.fields(config_cls):
            assert f.metadata.get("help"), f"{config_cls.__name__}.{f.name} has no help text"


def test_pruning_arguments_validate():
    with pytest.raises(ValueError, match="gate_learning_rate"):
        hf_prune.PruningArguments(output_dir="x", gate_learning_rate=-1.0)
