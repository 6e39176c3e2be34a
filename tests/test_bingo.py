"""BINGO: probes leave training unchanged, estimators recover known effects, one-shot pruning to a target sparsity or
within a metric tolerance on the evaluation split, statistics survive checkpoints (tiny random models)."""

import math

import pytest
import torch
from safetensors.torch import load_file

import hf_prune
from hf_prune.accounting import prunable_parameters
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state
from hf_prune.methods.bingo import BingoConfig, EmaEstimator, build_estimator
from hf_prune.methods.bingo.probes import InitialWeights, UnitLayout, switched_off
from hf_prune.selection import unit_costs_by_layer

from .tiny_models import FAMILY, build, counting_dataset, dataset, inputs, logits, trainer_for


def _method(model):
    return get_pruning_state(model).method


# -- configuration -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("probe_interval", 0),
        ("probe_start", 1.0),
        ("p_head", 0.0),
        ("p_neuron", 1.5),
        ("masked_passes", 0),
        ("estimator", "shapley"),
        ("signal", "accuracy"),
        ("perturbation", "noise"),
        ("max_metric_drop", 0.0),
        ("search_max_sparsity", 1.0),
        ("max_layer_neuron_sparsity", 0.0),
        ("schedule", "linear"),
        ("ema_decay", 1.0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"Invalid {field}="):
        BingoConfig(**{field: value})


def test_config_round_trip(tmp_path):
    config = BingoConfig(
        target_sparsity=0.3, estimator="ridge", max_metric_drop=0.02, probe_interval=2, schedule="final"
    )
    config.save_pretrained(tmp_path)
    assert hf_prune.PruningConfig.from_pretrained(tmp_path) == config


# -- probes do not change training -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family_name, options",
    [
        ("bert", {"schedule": "final"}),
        ("gpt2", {"perturbation": "reset", "signal": "accuracy_abs", "estimator": "ema", "schedule": "final"}),
    ],
    ids=["bert-zero-loss", "gpt2-reset-accuracy"],
)
def test_probes_do_not_change_training(family_name, options, tmp_path):
    """Same seed, probes on (every step, two masked passes, gradient accumulation) and off: identical weights. The
    models have dropout, so a probe that consumed the global random stream would change the trajectory."""
    family = FAMILY[family_name]
    data = dataset(family, 48)

    def train(config):
        trainer = trainer_for(
            build(family).train(),
            config,
            tmp_path,
            train_dataset=data,
            args={"gradient_accumulation_steps": 2, "per_device_train_batch_size": 4},
        )
        trainer.train()
        return trainer.pruned_model

    plain = train(hf_prune.RandomConfig(target_sparsity=0.0))
    probed = train(BingoConfig(probe_interval=1, probe_start=0.0, masked_passes=2, **options))
    method = _method(probed)
    assert int(method.statistics.probes) + int(method.statistics.skipped) == 6 * 2  # one probe per optimizer step
    assert method.probe_seconds > 0
    for (name, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_switching_off_and_reset_restore_exactly():
    family = FAMILY["llama"]  # grouped-query attention: a head unit is a key/value group
    model = build(family)
    batch = inputs(family)
    hf_prune.prepare_model_for_pruning(model, BingoConfig(perturbation="reset"))
    state = get_pruning_state(model)
    layout = UnitLayout(state)
    assert layout.size == 2 * family.kv_heads + 2 * family.neurons
    initial = InitialWeights(model, state)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))  # "training" moves the weights away from the snapshot
    reference = logits(model, batch)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    ablated = torch.zeros(layout.size, dtype=torch.bool)
    ablated[[1, 2 * family.kv_heads + 5]] = True  # head unit 1 of layer 0, neuron 5 of layer 0

    with switched_off(layout, ablated):
        assert not state.layers[0].head_gate.mask[1] and not state.layers[0].neuron_gate.mask[5]
        assert not torch.allclose(logits(model, batch), reference)
    with initial.reset(layout, ablated):
        block = model.model.layers[0]
        q_rows = slice(1 * 2 * 8, 2 * 2 * 8)  # unit 1 = query heads 2 and 3 (head_dim 8)
        assert torch.equal(block.self_attn.q_proj.weight[q_rows], initial.slices[(HEADS, 0)][0].initial[q_rows])
        assert torch.equal(block.self_attn.o_proj.weight[:, q_rows], initial.slices[(HEADS, 0)][-1].initial[:, q_rows])
        assert torch.equal(block.mlp.down_proj.weight[:, 5], initial.slices[(NEURONS, 0)][-1].initial[:, 5])
        assert not torch.equal(block.mlp.down_proj.weight[:, 6], initial.slices[(NEURONS, 0)][-1].initial[:, 6])
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert torch.equal(logits(model, batch), reference)


# -- estimators on a synthetic additive game -------------------------------------------------------------------------
def _spearman(a, b):
    ranks = [torch.empty_like(x).scatter_(0, x.argsort(), torch.arange(len(x), dtype=x.dtype)) for x in (a, b)]
    x, y = (r - r.mean() for r in ranks)
    return float((x * y).sum() / (x.norm() * y.norm()))


def _game(seed, heads=48, neurons=1536, prior_error=0.4):
    """Per-unit effects of a 4-layer, 12-head, 384-neuron model: heads matter more and a few help when removed;
    a gate-gradient-like prior with RMS error `prior_error` times each kind's spread."""
    g = torch.Generator().manual_seed(seed)
    beta = torch.cat(
        [torch.randn(heads, generator=g).abs() * 0.03 - 0.003, torch.randn(neurons, generator=g) * 1.5e-3 + 5e-4]
    ).double()
    is_head = torch.arange(heads + neurons) < heads
    spread = torch.where(is_head, beta[is_head].std(), beta[~is_head].std())
    prior = beta + prior_error * spread * torch.randn(len(beta), generator=g, dtype=torch.float64)
    p = torch.where(is_head, 0.1, 0.05)  # BingoConfig's default p_head, p_neuron
    return beta, prior, p, is_head, g


def _play(estimator, beta, prior, p, g, probes, noise=0.02):
    for step in range(probes):
        ablated = torch.rand(len(p), generator=g) < p
        y = float(beta[ablated].sum()) + noise * float(torch.randn((), generator=g))
        estimator.update(ablated, y, weight=(step + 1) / probes, prior=prior.float())
    return estimator.estimate()


def test_estimators_recover_additive_effects():
    """1,000 probes (probe_interval=4 over the last 80% of a 5,000-step run) at the default p_head / p_neuron."""
    results = {}
    for name in ("control_variate", "ridge", "difference_of_means", "ema"):
        beta, prior, p, is_head, g = _game(seed=0)
        estimator = build_estimator(name, p, groups=(~is_head).long(), ridge_columns=is_head)
        value = _play(estimator, beta, prior, p, g, probes=1000).value
        results[name] = {
            kind: _spearman(value[m].nan_to_num(0.5), beta[m])
            for kind, m in (("heads", is_head), ("neurons", ~is_head))
        }
    prior_alone = {kind: _spearman(prior[m], beta[m]) for kind, m in (("heads", is_head), ("neurons", ~is_head))}
    print({**results, "prior": prior_alone})
    for kind in ("heads", "neurons"):
        assert results["control_variate"][kind] > 0.9
        assert results["ema"][kind] < results["control_variate"][kind] - 0.3  # the faithful EMA: measurably worse
    assert results["ridge"]["heads"] > 0.9
    assert results["control_variate"]["heads"] > prior_alone["heads"] + 0.05  # the probes add to the prior (heads)
    assert results["control_variate"]["neurons"] > results["difference_of_means"]["neurons"] + 0.3  # the prior helps


def _removed_effect(scores: torch.Tensor, beta: torch.Tensor, is_head: torch.Tensor, share: float = 0.5) -> float:
    """The true loss effect of removing the lowest-scored `share` of the heads and of the neurons."""
    total = 0.0
    for kind in (is_head, ~is_head):
        count = int(share * int(kind.sum()))
        total += float(beta[kind][torch.argsort(scores[kind].double())[:count]].sum())
    return total


def test_weak_prior_and_few_probes_still_beat_a_random_ranking():
    """The regime of a real run: ~100 probes and a prior whose error is twice each kind's spread. Over five games the
    ranking removes far less true effect than any of 200 random rankings, and the probes improve on the prior for
    heads (for neurons, 100 probes at p = 0.05 add little to the prior: the estimate is about as good as it)."""
    head_gain, neuron_rho = [], []
    for seed in range(5):
        beta, prior, p, is_head, g = _game(seed=seed, prior_error=2.0)
        estimator = build_estimator("control_variate", p, groups=(~is_head).long(), ridge_columns=is_head)
        value = _play(estimator, beta, prior, p, g, probes=100).value.nan_to_num(0.5)
        random_rankings = [_removed_effect(torch.rand(len(beta), generator=g), beta, is_head) for _ in range(200)]
        assert _removed_effect(value, beta, is_head) < min(random_rankings), seed
        head_gain.append(_spearman(value[is_head], beta[is_head]) - _spearman(prior[is_head], beta[is_head]))
        neuron_rho.append(_spearman(value[~is_head], beta[~is_head]))
    print(f"heads: rank correlation gain over the prior {head_gain}; neurons: rank correlation {neuron_rho}")
    assert sum(head_gain) / 5 > 0.1
    assert min(neuron_rho) > 0.25


def test_control_variate_is_unbiased_with_a_wrong_prior():
    """A prior anti-correlated with the truth and offset: the unshrunk estimate is still unbiased (z-test over
    repetitions), while the prior on its own is far off."""
    units, probes, repetitions = 30, 150, 60
    g = torch.Generator().manual_seed(1)
    beta = torch.randn(units, generator=g, dtype=torch.float64) * 0.02
    wrong = (0.05 - beta).float()
    p = torch.full((units,), 0.1)
    estimates = []
    for _ in range(repetitions):
        estimator = build_estimator("control_variate", p, shrink=False)
        estimates.append(_play(estimator, beta, wrong, p, g, probes, noise=0.01).value)
    errors = torch.stack(estimates) - beta  # [repetitions, units]
    scale = errors.std(0) / math.sqrt(repetitions)
    z = errors.mean(0) / scale  # per unit
    # units share each probe's residual, so their errors are correlated: test the pooled bias across repetitions
    pooled = errors.mean(1)
    z_pooled = pooled.mean() / (pooled.std() / math.sqrt(repetitions))
    z_prior = (wrong.double() - beta) / scale
    print(
        f"per-unit max |z| {z.abs().max():.2f}, pooled z {z_pooled:.2f}; prior alone: mean |z| {z_prior.abs().mean():.1f}"
    )
    assert z.abs().max() < 4.0 and abs(float(z_pooled)) < 3.0
    assert z_prior.abs().mean() > 5  # the test has power: a biased estimate would fail it


def test_ema_is_the_papers_update_with_the_sign_fixed():
    estimator = EmaEstimator(torch.tensor([0.5, 0.5]))
    paper = 0.5  # S <- (S + 1 - r) / 2 from S = 0.5; higher S = *less* important as printed
    for r in (0.1, 0.0, 0.4, 0.2):
        estimator.update(torch.tensor([True, False]), r)
        paper = (paper + 1 - r) / 2
        assert math.isclose(1 - float(estimator.value[0]), paper, abs_tol=1e-6)
    estimate = estimator.estimate()
    assert math.isnan(estimate.value[1]) and int(estimate.ablated[0]) == 4  # never ablated: no estimate


# -- end to end ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family_name, options",
    [
        ("bert", {"schedule": "final"}),
        ("llama", {"estimator": "ridge", "schedule": "cubic", "prune_start": 0.25, "prune_end": 0.75}),
        ("gpt2", {"estimator": "difference_of_means", "schedule": "one_shot"}),
    ],
    ids=["bert-control_variate-final", "llama-ridge-cubic", "gpt2-difference_of_means-one_shot"],
)
def test_target_sparsity_end_to_end_and_reload(family_name, options, tmp_path):
    family = FAMILY[family_name]
    model = build(family)
    config = BingoConfig(target_sparsity=0.5, probe_interval=1, probe_start=0.25, p_head=0.3, p_neuron=0.2, **options)
    trainer = trainer_for(model, config, tmp_path, steps=8, train_dataset=dataset(family, 48))
    trainer.train()
    method = _method(model)
    assert int(method.statistics.probes) == 6
    assert "pruning/bingo_probes" in hf_prune.report.pruning_metrics(model)
    spec = hf_prune.get_architecture(model)
    total = prunable_parameters(model, spec)
    largest_unit = max(max(costs) for costs in unit_costs_by_layer(model, get_pruning_state(model)).values())
    model = trainer.finalize(measure_latency=False)
    removed = total - prunable_parameters(model, spec)
    print(f"{family_name}: removed {removed / total:.4f} of {total} prunable parameters (one unit: {largest_unit})")
    assert abs(removed - 0.5 * total) <= largest_unit
    batch = inputs(family)
    expected = logits(model.eval(), batch)
    model.save_pretrained(tmp_path / "pruned")
    reloaded = hf_prune.AutoPrunedModel.from_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=0)


class _Counting(torch.utils.data.Dataset):
    def __init__(self, data, name):
        self.data, self.name, self.reads = data, name, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        if self.name == "test":
            raise AssertionError("the test split was read")
        self.reads += 1
        return self.data[index]


@pytest.mark.parametrize("reconstruct", [False, True], ids=["plain", "refit"])
def test_max_metric_drop_uses_the_eval_split_and_stops_at_the_tolerance(tmp_path, reconstruct):
    data = counting_dataset(128)
    train, val, test = (
        _Counting(data.select(r), n)
        for r, n in ((range(64), "train"), (range(64, 96), "val"), (range(96, 128), "test"))
    )
    model = build(FAMILY["llama"])
    config = BingoConfig(
        max_metric_drop=0.02, search_step=0.05, probe_interval=1, schedule="final", reconstruct=reconstruct
    )
    trainer = trainer_for(
        model, config, tmp_path, steps=24, train_dataset=train, eval_dataset=val, args={"learning_rate": 1e-2}
    )
    trainer.train()
    loaders = []
    original = trainer.get_eval_dataloader
    trainer.get_eval_dataloader = lambda dataset=None: loaders.append(dataset) or original(dataset)
    val.reads = 0
    method = _method(model)
    hf_prune.finalize_model(model)

    result = method.search_result
    print(result)
    assert loaders and all(dataset is val for dataset in loaders) and test.reads == 0
    assert val.reads == len(result.trials) * len(val)  # every search evaluation read the whole eval split, no more
    assert result.metric == "eval_loss" and not result.greater_is_better
    assert len(result.trials) <= math.ceil(math.log2(0.9 / 0.05)) + 2  # a binary search, not a sweep
    allowed = result.dense_metric * (1 + 0.02)
    trials = {round(t.sparsity, 6): t for t in result.trials}
    chosen, above = trials[round(result.sparsity, 6)], trials.get(round(result.sparsity + 0.05, 6))
    assert 0 < result.sparsity < 0.9  # the tolerance, not the grid, stopped the search
    assert chosen.metric <= allowed < above.metric
    # the finalized (physically pruned, and with `reconstruct` refit) model is the one the search judged
    pruned = trainer.evaluate()
    assert pruned["eval_loss"] == pytest.approx(chosen.metric, rel=1e-5)


def test_statistics_live_in_checkpoints_and_resume_exactly(tmp_path):
    family = FAMILY["bert"]
    data = dataset(family, 48)
    config = BingoConfig(probe_interval=1, probe_start=0.0)

    def trainer(path):
        return trainer_for(
            build(family), config, path, steps=6, train_dataset=data, args={"save_strategy": "steps", "save_steps": 3}
        )

    straight = trainer(tmp_path / "a")
    straight.train()
    checkpoint = tmp_path / "a" / "checkpoint-3"
    saved = load_file(checkpoint / "model.safetensors")
    assert any(".hf_prune_gate.bingo.estimator." in key for key in saved)
    assert any(key.endswith("hf_prune_gate.grad_rel_sum") for key in saved)

    resumed = trainer(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a = _method(straight.pruned_model).statistics.state_dict()
    b = _method(resumed.pruned_model).statistics.state_dict()
    assert int(a["probes"]) == 6
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-9, msg=key)
    for left, right in zip(
        _method(straight.pruned_model).scores()[NEURONS], _method(resumed.pruned_model).scores()[NEURONS]
    ):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-9)
