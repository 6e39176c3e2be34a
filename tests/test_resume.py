"""Exact resume: a run interrupted at a checkpoint and resumed ends with the same pruned model.

Target methods run the cubic schedule from step 0 to step 6, one event per step, so checkpoint-3 lies in the middle of
the schedule (asserted below) and the resumed run makes the events of steps 4-6."""

import hashlib
import json

import pytest
import torch

import hf_prune
from hf_prune import MagnitudeConfig, PruningTrainer

from .tiny_models import FAMILIES, arguments, build, dataset, method_config


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.detach().float().numpy().tobytes())
    return h.hexdigest()


def run(tmp_path, name, config, resume=None, max_steps=6):
    family = FAMILIES[0]
    args = arguments(
        tmp_path,
        output_dir=str(tmp_path / name),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        save_steps=3,
        logging_steps=1,
        gate_learning_rate=1e-2,
    )
    trainer = PruningTrainer(model=build(family), args=args, pruning_config=config, train_dataset=dataset(family, 64))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("method", hf_prune.available_methods())
def test_resume_continues_exactly(method, tmp_path):
    schedule = {"prune_start": 0.0, "prune_end": 1.0} if method != "bmrs" else {}
    config = method_config(method, 0.4, method_seed=3, **schedule)
    full = run(tmp_path, "full", config)
    if isinstance(config, hf_prune.TargetConfig):
        saved = json.loads((tmp_path / "full" / "checkpoint-3" / "pruning_config.json").read_text())["result"]
        final = hf_prune.pruning_summary(full.model)["sparsity"]
        assert 0.1 < saved["sparsity"] < final, (saved["sparsity"], final)  # part of the way to the target
    resumed = run(tmp_path, "resumed", config, resume=str(tmp_path / "full" / "checkpoint-3"))
    state_full = full.model.state_dict()
    state_resumed = resumed.model.state_dict()
    for key, value in state_full.items():  # gate buffers and statistics included
        torch.testing.assert_close(state_resumed[key], value, rtol=0, atol=0, msg=key)
    assert digest(full.finalize(measure_latency=False)) == digest(resumed.finalize(measure_latency=False))


def test_resume_with_another_config_is_refused(tmp_path):
    run(tmp_path, "full", MagnitudeConfig(target_sparsity=0.4), max_steps=3)
    with pytest.raises(ValueError, match=r"different pruning config \(target_sparsity: checkpoint 0.4 vs now 0.6"):
        run(tmp_path, "other", MagnitudeConfig(target_sparsity=0.6), resume=str(tmp_path / "full" / "checkpoint-3"))
