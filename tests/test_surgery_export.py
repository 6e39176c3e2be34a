"""Gates, physical surgery and export for every supported family (tiny random models built from config)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers as tf

import hf_prune
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state

from .tiny_models import FAMILIES, FAMILY_IDS, build, inputs, logits


ATOL = 1e-5


def _mask(model, kind, layer, units):
    gate = get_pruning_state(model).gates(kind)[layer]
    gate.mask[list(units)] = False


def _plan_heads(family, layer_units):
    """Query heads covered by the given gate units (key/value groups under grouped-query attention)."""
    group = family.heads // family.kv_heads
    return {layer: [u * group + j for u in units for j in range(group)] for layer, units in layer_units.items()}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_gates_at_init_leave_outputs_unchanged(family, attn):
    model = build(family, attn=attn)
    batch = inputs(family)
    reference = logits(model, batch)
    hf_prune.prepare_model_for_pruning(model, hf_prune.MagnitudeConfig())
    assert torch.equal(logits(model, batch), reference)
    model.train()  # the base gate is deterministic in training too
    for module in model.modules():  # without dropout, a training-mode forward equals the eval one
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.logits if hasattr(out, "logits") else out.last_hidden_state, reference)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_gate_at_zero_equals_removal(family, attn):
    """Masking units with gates and physically removing them give the same logits."""
    model = build(family, attn=attn)
    batch = inputs(family)
    hf_prune.prepare_model_for_pruning(model, hf_prune.MagnitudeConfig(target_sparsity=0.0))
    head_units = {0: [1], 1: [0]}
    for layer, units in head_units.items():
        _mask(model, HEADS, layer, units)
    _mask(model, NEURONS, 0, range(0, 48, 3))
    _mask(model, NEURONS, 1, [5, 7])
    masked = logits(model, batch)

    reference = build(family, attn=attn)
    assert not torch.allclose(logits(reference, batch), masked)  # the masks do change the function
    hf_prune.prune_structures(
        reference, heads=_plan_heads(family, head_units), neurons={0: list(range(0, 48, 3)), 1: [5, 7]}
    )
    torch.testing.assert_close(logits(reference, batch), masked, atol=ATOL, rtol=0)

    hf_prune.finalize_model(model)  # the same through the method's final rule (target 0: keep the current masks)
    torch.testing.assert_close(logits(model, batch), masked, atol=ATOL, rtol=0)
    for layer in hf_prune.get_architecture(model).layers.split("."):
        assert layer
    assert not any("hf_prune_gate" in name for name, _ in model.named_modules())
    assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_surgery_leaves_no_zero_filled_units(family):
    model = build(family)
    hf_prune.prune_structures(model, heads=_plan_heads(family, {0: [0]}), neurons={1: list(range(40))})
    spec = hf_prune.get_architecture(model)
    layers = model.base_model.get_submodule(spec.layers)
    o0 = layers[0].get_submodule(spec.o)
    removed_heads = family.heads // family.kv_heads
    width = o0.weight.shape[0] if isinstance(o0, tf.pytorch_utils.Conv1D) else o0.weight.shape[1]
    assert width == (family.heads - removed_heads) * 8
    down1 = layers[1].get_submodule(spec.mlp_out)
    assert 8 in down1.weight.shape
    for name, param in layers.named_parameters():
        if param.dim() == 2:  # projections: no all-zero row or column left behind
            assert (param.abs().sum(dim=0) != 0).all() and (param.abs().sum(dim=1) != 0).all(), name


def _empty_layer_plan(family):
    return {0: list(range(family.heads))}, {1: list(range(family.neurons))}


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_layer_emptied_of_heads_and_neurons_still_runs(family, tmp_path):
    model = build(family)
    batch = inputs(family)
    hf_prune.prepare_model_for_pruning(model, hf_prune.RandomConfig(target_sparsity=0.0))
    for unit in range(family.kv_heads):
        _mask(model, HEADS, 0, [unit])
    _mask(model, NEURONS, 1, range(family.neurons))
    masked = logits(model, batch)
    hf_prune.finalize_model(model)
    torch.testing.assert_close(logits(model, batch), masked, atol=ATOL, rtol=0)
    model.save_pretrained(tmp_path)
    reloaded = hf_prune.AutoPrunedModel.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(reloaded, batch), masked, atol=ATOL, rtol=0)


def _prune_heterogeneous(family):
    model = build(family)
    hf_prune.prune_structures(model, heads=_plan_heads(family, {1: [0]}), neurons={0: [1, 2, 3], 1: [0]})
    return model


def _prune_uniform(family):
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, hf_prune.MagnitudeConfig(target_sparsity=0.4, uniform_layers=True))
    return hf_prune.finalize_model(model)


_LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_prune"] = None  # this process must not be able to import hf_prune
    import torch, transformers
    for case in json.load(open(sys.argv[1])):
        auto = getattr(transformers, case["auto"])
        if case["expect_error"]:
            try:
                auto.from_pretrained(case["path"])
            except Exception as error:
                print("refused:", type(error).__name__, str(error).splitlines()[0][:200])
                continue
            raise SystemExit("loaded a per-layer model without trust_remote_code")
        model = auto.from_pretrained(case["path"], trust_remote_code=case["trust"]).eval()
        batch = torch.load(case["inputs"])
        with torch.no_grad():
            out = model(**batch)
        out = out.logits if hasattr(out, "logits") else out.last_hidden_state
        diff = (out - torch.load(case["expected"])).abs().max().item()
        print(case["name"], type(model).__name__, diff)
        assert diff <= 1e-5, diff
    """
)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_export_reloads_everywhere(family, tmp_path):
    """(a) uniform -> stock config, plain from_pretrained; (b) per-layer -> remote code, trust_remote_code=True and a
    loud failure without it; (c) AutoPrunedModel for both. (a) and (b) load in a process without hf_prune."""
    batch = inputs(family)
    torch.save(batch, tmp_path / "inputs.pt")
    auto = (
        "AutoModelForImageClassification"
        if family.vision
        else (
            "AutoModelForCausalLM"
            if family.task_class.__name__.endswith(("CausalLM", "LMHeadModel"))
            else "AutoModelForSequenceClassification"
        )
    )
    cases = []
    for name, model in (("uniform", _prune_uniform(family)), ("per_layer", _prune_heterogeneous(family))):
        path = tmp_path / name
        model.save_pretrained(path)
        expected = logits(model, batch)
        torch.save(expected, tmp_path / f"{name}.pt")
        reloaded = hf_prune.AutoPrunedModel.from_pretrained(path)  # (c)
        torch.testing.assert_close(logits(reloaded, batch), expected, atol=ATOL, rtol=0)
        config = json.loads((path / "config.json").read_text())
        result = json.loads((path / "pruning_config.json").read_text())["result"]
        per_layer = name == "per_layer"
        assert (config["model_type"] == f"hf_prune_{family.name}") == per_layer
        assert (path / "modeling_hf_prune.py").exists() == per_layer
        assert result["export"] == ("remote_code" if per_layer else "stock")
        assert result["after"]["parameters"] < result["before"]["parameters"]
        common = {
            "name": name,
            "path": str(path),
            "auto": auto,
            "inputs": str(tmp_path / "inputs.pt"),
            "expected": str(tmp_path / f"{name}.pt"),
        }
        cases.append({**common, "trust": per_layer, "expect_error": False})
        if per_layer:
            cases.append({**common, "trust": False, "expect_error": True})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "load.py").write_text(_LOADER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(tmp_path / "cases.json")],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "refused:" in run.stdout


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.kv_heads < f.heads], ids=lambda f: f.name)
def test_grouped_query_attention_rules(family, tmp_path):
    batch = inputs(family)
    model = build(family)
    with pytest.raises(ValueError, match="same number of query heads"):
        hf_prune.prune_structures(model, heads={0: [0]})  # one head of a group of two: uneven
    # the same number of heads from every group keeps all key/value heads
    hf_prune.prune_structures(model, heads={0: [0, 2]})
    attention = model.base_model.layers[0].self_attn
    assert attention.k_proj.out_features == family.kv_heads * 8 and attention.num_key_value_groups == 1
    # a whole group removes its key/value head
    hf_prune.prune_structures(model, heads={1: [2, 3]})
    assert model.base_model.layers[1].self_attn.k_proj.out_features == (family.kv_heads - 1) * 8
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(logits(hf_prune.AutoPrunedModel.from_pretrained(tmp_path), batch), expected)
    generated = model.generate(batch["input_ids"][:1], max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def test_generation_with_an_empty_attention_layer():
    family = next(f for f in FAMILIES if f.name == "llama")
    model = build(family)
    ids = inputs(family)["input_ids"][:1]
    hf_prune.prune_structures(model, heads={0: list(range(family.heads))})
    cached = model.generate(ids, max_new_tokens=4, do_sample=False)
    uncached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_pruning_twice_uses_current_indices(tmp_path):
    family = FAMILIES[0]
    model = build(family)
    hf_prune.prune_structures(model, neurons={0: [0, 1]})
    with pytest.raises(ValueError, match="do not exist"):
        hf_prune.prune_structures(model, neurons={0: [46]})  # only 46 neurons left: stale index
    hf_prune.prune_structures(model, neurons={0: [0]})  # neuron 2 of the original model
    model.save_pretrained(tmp_path)
    result = json.loads((tmp_path / "pruning_config.json").read_text())["result"]
    assert result["kept_neurons"]["0"][:2] == [3, 4]
    assert result["after"]["layers"][0]["neurons"] == 45


def test_unsupported_model_names_the_supported_families():
    model = tf.AlbertModel(
        tf.AlbertConfig(
            vocab_size=50,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=37,
            embedding_size=16,
            num_hidden_layers=1,
        )
    )
    with pytest.raises(ValueError, match="Supported families: ") as error:
        hf_prune.prepare_model_for_pruning(model, hf_prune.RandomConfig())
    named = str(error.value).split("Supported families: ", 1)[1].split(". ", 1)[0].split(", ")
    assert named == sorted(FAMILY_IDS)  # every family of the test table, and only those
    with pytest.raises(ValueError, match="adding_a_family"):
        hf_prune.prune_structures(model, neurons={0: [1]})


def test_out_of_range_plan_is_refused():
    model = build(FAMILIES[0])
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        hf_prune.prune_structures(model, heads={5: [0]})
    with pytest.raises(ValueError, match=r"\[9\] do not exist"):
        hf_prune.prune_structures(model, heads={0: [9]})


def test_gated_model_refuses_prune_structures():
    model = build(FAMILIES[0])
    hf_prune.prepare_model_for_pruning(model, hf_prune.RandomConfig())
    with pytest.raises(ValueError, match="finalize_model"):
        hf_prune.prune_structures(model, heads={0: [0]})
    with pytest.raises(ValueError, match="prepare it only once"):
        hf_prune.prepare_model_for_pruning(model, hf_prune.RandomConfig())


def test_failed_save_leaves_existing_folder_intact(tmp_path, monkeypatch):
    family = FAMILIES[0]
    model = _prune_heterogeneous(family)
    model.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    hf_prune.prune_structures(model, neurons={0: [0]})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_prune.export, "write_pruning_config", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not [p for p in tmp_path.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.kv_heads < f.heads], ids=lambda f: f.name)
def test_uniform_grouped_query_export_generates_the_gated_models_tokens(family, tmp_path):
    """What serving stacks need: a uniform prune of a GQA decoder (whole key/value groups, neuron counts a multiple)
    saves as a stock config that plain `from_pretrained` loads, and greedy decoding gives the gated model's tokens."""
    model = build(family, seed=3)
    config = hf_prune.MagnitudeConfig(target_sparsity=0.4, uniform_layers=True, neuron_multiple=4, schedule="final")
    hf_prune.prepare_model_for_pruning(model, config)
    state = get_pruning_state(model)
    for layer, gate in enumerate(state.gates(HEADS)):
        gate.mask[layer % gate.num_units] = False  # one key/value group per layer, a different one in each
    state.method.apply_masks(state.method.select(0.4))
    prompt = inputs(family, batch=1, length=6)["input_ids"]
    with torch.no_grad():
        gated = model.eval().generate(prompt, max_new_tokens=8, do_sample=False)
    pruned = hf_prune.finalize_model(model)
    pruned.save_pretrained(tmp_path)
    assert not (tmp_path / "modeling_hf_prune.py").exists()
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers, no remote code
    assert type(reloaded).__name__ == family.task_class.__name__
    layers = json.loads((tmp_path / "pruning_config.json").read_text())["result"]["after"]["layers"]
    assert len({json.dumps(layer) for layer in layers}) == 1 and layers[0]["neurons"] % 4 == 0
    assert layers[0]["heads"] == layers[0]["kv_heads"] * (family.heads // family.kv_heads) < family.heads
    with torch.no_grad():
        assert torch.equal(reloaded.generate(prompt, max_new_tokens=8, do_sample=False), gated)
