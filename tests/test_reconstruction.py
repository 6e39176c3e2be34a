"""Least-squares reconstruction (`reconstruct=True`): at a pruning event the kept weights of every projection that
loses units become the least-squares fit of its old output on the inputs collected since the previous event (checked
against `torch.linalg.lstsq` on the same inputs, padding excluded); only training passes are collected; runs with it
train, finalize and resume exactly. Processes and FSDP2 are covered in test_fsdp.py."""

import pytest
import torch
from transformers.pytorch_utils import Conv1D

import hf_prune
from hf_prune import MagnitudeConfig, TaylorConfig
from hf_prune.architectures import transformer_blocks
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state
from hf_prune.selection import current_masks, unit_costs_by_layer

from .test_resume import run as resumable_run
from .tiny_models import FAMILY, build, counting_dataset, trainer_for


DAMPING = 1e-9  # a ridge this small leaves the least-squares optimum unchanged at the tolerance below


def prepared(family: str, **config):
    torch.manual_seed(0)
    model = build(FAMILY[family])
    config = MagnitudeConfig(target_sparsity=0.4, reconstruct=True, reconstruct_damping=DAMPING, **config)
    return hf_prune.prepare_model_for_pruning(model, config).train()


def collect_inputs(model, batches, attention_masks=None) -> dict:
    """Training forwards with gradients (what the statistics collect), and a copy of each gated projection's input
    at its real tokens, as the reference."""
    state = get_pruning_state(model)
    seen, hooks = {}, []
    for gated, block in zip(state.layers, transformer_blocks(model, state.spec)):
        for kind, path in ((HEADS, state.spec.o), (NEURONS, state.spec.mlp_out)):
            projection = block.get_submodule(path)

            def keep(module, args, key=(kind, gated.index)):
                seen.setdefault(key, []).append(args[0].detach().clone())

            hooks.append(projection.register_forward_hook(lambda m, a, o, f=keep: f(m, a)))
    for i, ids in enumerate(batches):
        mask = None if attention_masks is None else attention_masks[i]
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    for h in hooks:
        h.remove()
    result = {}
    for key, tensors in seen.items():
        rows = []
        for i, x in enumerate(tensors):
            if attention_masks is not None:
                x = x[attention_masks[i].bool()]
            rows.append(x.reshape(-1, x.shape[-1]).double())
        result[key] = torch.cat(rows)
    return result


def weight_and_bias(projection) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = projection.weight.detach().double()
    if isinstance(projection, Conv1D):
        weight = weight.T
    bias = None if getattr(projection, "bias", None) is None else projection.bias.detach().double()
    return weight.clone(), None if bias is None else bias.clone()


def removal(state, kind: str, fraction: float) -> dict:
    """Keep-masks removing the first `fraction` of every layer's units of `kind`."""
    masks = {HEADS: [None] * len(state.layers), NEURONS: [None] * len(state.layers)}
    for i, gate in enumerate(state.gates(kind)):
        keep = torch.ones(gate.num_units, dtype=torch.bool)
        keep[: max(1, int(fraction * gate.num_units))] = False
        masks[kind][i] = keep
    return masks


@pytest.mark.parametrize(
    "family,kind",
    [("llama", NEURONS), ("llama", HEADS), ("bert", NEURONS), ("bert", HEADS), ("gpt2", NEURONS)],
    ids=["llama-neurons", "llama-kv-groups", "bert-neurons-bias", "bert-heads-bias", "gpt2-conv1d-bias"],
)
def test_refit_is_the_least_squares_fit_on_the_collected_inputs(family, kind):
    model = prepared(family)
    state = get_pruning_state(model)
    batches = [torch.randint(3, 99, (4, 12), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    padding = [torch.ones(4, 12, dtype=torch.long) for _ in batches]
    padding[1][:, 9:] = 0  # padded positions must not count
    inputs = collect_inputs(model, batches, padding if family != "gpt2" else None)
    path = state.spec.o if kind == HEADS else state.spec.mlp_out
    projections = [block.get_submodule(path) for block in transformer_blocks(model, state.spec)]
    before = [weight_and_bias(p) for p in projections]
    masks = removal(state, kind, 0.5)
    state.method.apply_masks(masks)
    for layer, (projection, (weight, bias)) in enumerate(zip(projections, before)):
        x = inputs[(kind, layer)]
        keep = masks[kind][layer].repeat_interleave(x.shape[1] // masks[kind][layer].numel())
        target = x @ weight.T + (0 if bias is None else bias)  # the old output
        design = x[:, keep] if bias is None else torch.cat([x[:, keep], torch.ones(len(x), 1).double()], dim=1)
        optimum = target - design @ torch.linalg.lstsq(design, target).solution
        new_weight, new_bias = weight_and_bias(projection)
        refit = x[:, keep] @ new_weight[:, keep].T + (0 if bias is None else new_bias)
        plain = x[:, keep] @ weight[:, keep].T + (0 if bias is None else bias)
        # the refit reaches the least-squares optimum (the objective, not the coefficients: the inputs of a tiny
        # random model are ill-conditioned, and the statistics are float32 sums), well below plain removal
        excess = (refit - target).pow(2).sum() / optimum.pow(2).sum() - 1
        assert abs(excess) < 1e-3, (layer, float(excess))
        assert (refit - target).norm() < 0.9 * (plain - target).norm()
        torch.testing.assert_close(new_weight[:, ~keep], weight[:, ~keep], rtol=0, atol=0)  # masked anyway
        if bias is None:
            assert new_bias is None
    # collection starts afresh
    assert all(t.moment is None for t in state.method.reconstruction.targets)


@pytest.mark.parametrize("family,kind", [("llama", NEURONS), ("llama", HEADS), ("bert", HEADS)])
def test_unrecoverable_shares_are_the_refit_residuals_of_each_unit_alone(family, kind):
    """Each unit's share is the output error a least-squares refit of the other live units leaves when it alone is
    removed, over the error without the refit (brute force: one `lstsq` per unit); removed units get 0."""
    model = prepared(family)
    state = get_pruning_state(model)
    batches = [torch.randint(3, 99, (4, 12), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    gate = state.gates(kind)[0]
    gate.mask[0] = False  # an already removed unit: not a regressor, share 0
    inputs = collect_inputs(model, batches)
    shares = state.method.reconstruction.unrecoverable_shares()[kind]
    path = state.spec.o if kind == HEADS else state.spec.mlp_out
    for layer, block in enumerate(transformer_blocks(model, state.spec)):
        weight, bias = weight_and_bias(block.get_submodule(path))
        x, mask = inputs[(kind, layer)], state.gates(kind)[layer].mask
        width = x.shape[1] // mask.numel()
        expected = torch.zeros(mask.numel(), dtype=torch.float64)
        for unit in mask.nonzero().flatten().tolist():
            own = torch.zeros(mask.numel(), dtype=torch.bool)
            own[unit] = True
            others = (mask & ~own).repeat_interleave(width)
            design = x[:, others] if bias is None else torch.cat([x[:, others], torch.ones(len(x), 1).double()], 1)
            contribution = x[:, own.repeat_interleave(width)] @ weight[:, own.repeat_interleave(width)].T
            residual = contribution - design @ torch.linalg.lstsq(design, contribution).solution
            expected[unit] = residual.pow(2).sum() / contribution.pow(2).sum()
        torch.testing.assert_close(shares[layer].double(), expected, atol=2e-3, rtol=0)
        assert not mask.all() or layer > 0
    assert shares[0][0] == 0
    # computed once per set of statistics
    assert state.method.reconstruction.unrecoverable_shares() is state.method.reconstruction.unrecoverable_shares()


@pytest.mark.parametrize("family", ["llama", "bert"], ids=["llama", "bert-bias"])
def test_refitted_judges_the_refit_and_restores_the_weights_exactly(family):
    """`refitted` (what the metric search evaluates each candidate with) gives the weights `update` would write, and
    on exit the original weights and the collected statistics are back, bit for bit."""
    model = prepared(family)
    state = get_pruning_state(model)
    reconstruction = state.method.reconstruction
    collect_inputs(
        model, [torch.randint(3, 99, (4, 12), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    )
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    moments = [t.moment.clone() for t in reconstruction.targets]
    current = current_masks(state)
    candidate = removal(state, NEURONS, 0.5)
    candidate[HEADS] = current[HEADS]
    with reconstruction.refitted(current, candidate):
        inside = {name: p.detach().clone() for name, p in model.named_parameters()}
    refit = {
        id(p)
        for block in transformer_blocks(model, state.spec)
        for p in block.get_submodule(state.spec.mlp_out).parameters()
    }
    changed = {id(p) for name, p in model.named_parameters() if not torch.equal(inside[name], original[name])}
    assert changed and changed <= refit  # only the projections that lose neurons
    for name, p in model.named_parameters():
        assert torch.equal(p, original[name]), name
    for target, moment in zip(reconstruction.targets, moments):
        assert torch.equal(target.moment, moment)
    state.method.apply_masks(candidate)  # the real event: `update`
    for name, p in model.named_parameters():
        assert torch.equal(p, inside[name]), name


def test_only_training_passes_are_collected():
    model = prepared("llama")
    reconstruction = get_pruning_state(model).method.reconstruction
    ids = torch.randint(3, 99, (2, 8))
    with torch.no_grad():
        model(input_ids=ids)  # a no-grad probe or evaluation
    model.eval()
    model(input_ids=ids)  # eval mode
    assert all(t.tokens == 0 for t in reconstruction.targets)
    model.train()
    model(input_ids=ids)
    assert all(t.tokens == 16 for t in reconstruction.targets)


@pytest.mark.parametrize("reentrant", [False, True], ids=["checkpointing", "checkpointing-reentrant"])
def test_activation_checkpointing_collects_each_token_once(reentrant):
    """Checkpointed layers run their projections twice per step (again in the backward pass; with `use_reentrant`
    first under no_grad): the statistics are those of a plain step."""
    ids = torch.randint(3, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    moments = []
    for checkpointing in (False, True):
        model = prepared("llama")
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        model(input_ids=ids, labels=ids).loss.backward()
        targets = get_pruning_state(model).method.reconstruction.targets
        assert all(t.tokens == 16 for t in targets)
        moments.append([t.moment for t in targets])
    for plain, checkpointed in zip(*moments):
        torch.testing.assert_close(checkpointed, plain)


def test_no_statistics_without_reconstruct():
    model = build(FAMILY["llama"])
    hf_prune.prepare_model_for_pruning(model, MagnitudeConfig(target_sparsity=0.4))
    assert get_pruning_state(model).method.reconstruction is None


def test_invalid_damping_is_refused():
    with pytest.raises(ValueError, match="reconstruct_damping"):
        TaylorConfig(reconstruct=True, reconstruct_damping=0.0)


@pytest.mark.parametrize("schedule", ["cubic", "final"])
def test_training_with_reconstruct_finalizes_to_the_gated_model(tmp_path, schedule):
    """A Taylor run on the counting task: events refit the weights (the weights differ from a run without), the
    statistics stop after `prune_end` ("final": one refit at finalize), and the finalized model computes what the gated
    model computes."""
    family = FAMILY["llama"]
    config = dict(target_sparsity=0.5, schedule=schedule, kind_budget="proportional")
    plain, refit = (
        trainer_for(build(family), TaylorConfig(**config, reconstruct=flag), tmp_path / name, steps=10,
                    args={"per_device_train_batch_size": 4}, train_dataset=counting_dataset(64))
        for name, flag in (("plain", False), ("refit", True))
    )  # fmt: skip
    plain.train()
    refit.train()
    state = get_pruning_state(refit.model)
    assert not state.method.reconstruction.collecting  # nothing after the last event (or after max_steps)
    first, last = state.method.collection_steps(10)
    assert (first, last) == ((2, 7) if schedule == "cubic" else (9, 10))
    assert any(t.tokens for t in state.method.reconstruction.targets) == (schedule == "final")
    ids = torch.arange(3, 19).reshape(2, 8)
    refit.model.eval()
    with torch.no_grad():
        keep = state.method.keep_masks()  # the final rule (refits once for "final")
        with hf_prune.mapping.masks_applied(state, keep):
            gated = refit.model(input_ids=ids).logits
    assert not any(t.tokens for t in state.method.reconstruction.targets)  # refit and reset
    pruned = refit.finalize(evaluate=False, measure_latency=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, gated, rtol=1e-4, atol=1e-4)
    plain_pruned = plain.finalize(evaluate=False, measure_latency=False)
    assert hf_prune.pruning_summary(pruned)["sparsity"] == pytest.approx(
        hf_prune.pruning_summary(plain_pruned)["sparsity"]
    )
    down = [layer.mlp.down_proj.weight for layer in pruned.model.layers]
    down_plain = [layer.mlp.down_proj.weight for layer in plain_pruned.model.layers]
    assert any(a.shape != b.shape or not torch.allclose(a, b) for a, b in zip(down, down_plain))


@pytest.mark.parametrize("criterion", ["first_order", "fisher"])
def test_refit_aware_taylor_ranks_by_the_cost_left_after_the_refit(tmp_path, criterion):
    """`refit_aware` scales Taylor's importance by each unit's unrecoverable share (its square root for first-order
    importance) before the ranking per parameter freed, and the run finalizes to its target."""
    config = TaylorConfig(
        target_sparsity=0.5, schedule="final", kind_budget="proportional", reconstruct=True, refit_aware=True,
        criterion=criterion,
    )  # fmt: skip
    trainer = trainer_for(build(FAMILY["llama"]), config, tmp_path, steps=10, args={"per_device_train_batch_size": 4},
                          train_dataset=counting_dataset(64))  # fmt: skip
    trainer.train()
    state = get_pruning_state(trainer.model)
    shares = state.method.reconstruction.unrecoverable_shares()
    costs = unit_costs_by_layer(trainer.model, state)
    importance, scores = state.method.importance(), state.method.scores()
    power = 1.0 if criterion == "fisher" else 0.5
    for kind in (HEADS, NEURONS):
        for layer, share in enumerate(shares[kind]):
            assert 0 < float(share.min()) and float(share.max()) < 1  # every unit partly predictable, none fully
            expected = importance[kind][layer] * share.pow(power) / costs[kind][layer]
            torch.testing.assert_close(scores[kind][layer], expected)
    pruned = trainer.finalize(evaluate=False, measure_latency=False)
    assert hf_prune.pruning_summary(pruned)["sparsity"] == pytest.approx(0.5, abs=0.05)


def test_refit_aware_needs_reconstruct():
    with pytest.raises(ValueError, match=r"Invalid refit_aware=True.*reconstruct=True"):
        TaylorConfig(refit_aware=True)


def test_resume_continues_exactly_with_statistics_between_events(tmp_path):
    """Events every 2 steps: checkpoint-3 holds one step of collected inputs, which the resumed run must get back."""
    config = MagnitudeConfig(
        target_sparsity=0.4, prune_start=0.0, prune_end=1.0, prune_interval=2, reconstruct=True, method_seed=3
    )
    full = resumable_run(tmp_path, "full", config)
    saved = tmp_path / "full" / "checkpoint-3" / "hf_prune_process_state_0.pt"
    assert saved.exists()
    assert any(m is not None for m in torch.load(saved)["reconstruction"]["moments"])
    resumed = resumable_run(tmp_path, "resumed", config, resume=str(tmp_path / "full" / "checkpoint-3"))
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
