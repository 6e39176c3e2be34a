"""FSDP2 (`fully_shard`) on two real CPU processes (torchrun, gloo): gated tiny decoders sharded per decoder layer
must train, prune and finalize exactly as their unsharded twins do (see fsdp_train.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_prune

from .fsdp_train import RUNS, eval_ids, run


RUN_PARAMETERS = [pytest.param(family, method) for family, method in RUNS]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """One 2-process launch of fsdp_train.py for every family and method (fails with its output if it fails)."""
    output = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = Path(__file__).parent / "fsdp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launch = subprocess.run(
        [*command, str(script), str(output)], check=False, capture_output=True, text=True, env=env, timeout=600
    )
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-6000:]
    return {**torch.load(output / "report.pt", weights_only=False), "output": output}


def finished(report: dict, key: str) -> dict:
    result = report[key]
    assert "error" not in result, f"{key} failed on both processes:\n{result['error']}"
    return result


def assert_same_pruned_model(result: dict, reference: dict, label: str) -> None:
    assert result["kept"] == reference["kept"], f"{label}: different units kept"
    assert result["state_dict"].keys() == reference["state_dict"].keys(), label
    for name, tensor in reference["state_dict"].items():
        torch.testing.assert_close(result["state_dict"][name], tensor, rtol=1e-4, atol=1e-5, msg=f"{label}: {name}")
    torch.testing.assert_close(result["final_logits"], reference["final_logits"], rtol=1e-4, atol=1e-5)


def test_gates_go_in_before_sharding(report):
    assert report["refuses_sharded"], "prepare_model_for_pruning accepted a model already sharded with fully_shard"


def test_gate_parameters_are_sharded_with_their_layer(report):
    """BMRS gates have parameters: `fully_shard` on a decoder layer turns them into DTensors like its weights (noted
    before training, so this holds whether or not the BMRS run goes through)."""
    sharded = report["llama/bmrs/fsdp"]["gate_parameters_sharded"]
    assert len(sharded) == 4 * 2 and all(sharded)  # mu and log_sigma of 2 gates in each of 2 layers


@pytest.mark.parametrize("family,method", RUN_PARAMETERS)
def test_sharded_training_matches_replicated_training(report, family, method):
    """Two processes, the same data and seeds: the FSDP2 run ends with the pruned model of the DDP run."""
    sharded = finished(report, f"{family}/{method}/fsdp")
    replicated = finished(report, f"{family}/{method}/ddp")
    assert sharded["masks_plain"], "keep-masks must stay plain buffers, the same on every process"
    assert sharded["summary"] == replicated["summary"], "sizes are read from shards as from whole tensors"
    assert sharded["rank_digests"][0] == sharded["rank_digests"][1], "the processes finalized different models"
    assert sharded["plain"] and sharded["still_sharded"], "finalize returns a plain copy and leaves the sharded model"
    assert sharded["class"] == replicated["class"] and not sharded["class"].startswith("FSDP")
    # the finalized model computes what the gated model computed with the final keep-masks
    torch.testing.assert_close(sharded["final_logits"], sharded["gated_logits"], rtol=1e-5, atol=1e-5)
    assert_same_pruned_model(sharded, replicated, f"{family}/{method}")
    total = {kind: sum(len(units) for units in sharded["kept"][kind].values()) for kind in ("heads", "neurons")}
    assert total["neurons"] < 96 or total["heads"] < 8, "nothing was pruned, so nothing was compared"


@pytest.mark.parametrize("family,method", RUN_PARAMETERS)
def test_finalized_sharded_model_saves_and_reloads(report, family, method):
    """Saved the way `Trainer.save_model` saves under FSDP2 (a full state dict, written by rank 0)."""
    sharded = finished(report, f"{family}/{method}/fsdp")
    reloaded = hf_prune.AutoPrunedModel.from_pretrained(report["output"] / f"{family}-{method}").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=eval_ids()).logits
    torch.testing.assert_close(logits, sharded["final_logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family,method",
    [
        ("llama", "magnitude"),
        ("llama", "taylor"),
        ("llama", "taylor+reconstruct"),
        ("llama", "taylor+refit_aware"),
        ("llama", "taylor+final_refit"),
        ("qwen2", "magnitude"),
    ],
)
def test_sharded_training_matches_one_process(report, family, method):
    """The same steps on one process with the whole batch (methods without per-process randomness)."""
    single = run(family, method, "single", {})
    assert_same_pruned_model(finished(report, f"{family}/{method}/fsdp"), single, f"{family}/{method}")


def test_reconstruct_refits_the_sharded_weights(report):
    """The refit ran on the sharded model (its weights moved away from the run without it)."""
    refit = finished(report, "llama/taylor+reconstruct/fsdp")["state_dict"]
    plain = finished(report, "llama/taylor/fsdp")["state_dict"]
    assert any(refit[k].shape != v.shape or not torch.equal(refit[k], v) for k, v in plain.items() if "down_proj" in k)


def test_candidate_refit_is_tried_on_the_shards_and_undone(report):
    """`Reconstruction.refitted` on the sharded model (the metric search's trial of a candidate): it computes what the
    finalized model computes, and the shards are restored exactly afterwards."""
    result = finished(report, "llama/taylor+final_refit/fsdp")
    assert result["refit_changed"] and all("down_proj" in k or "o_proj" in k for k in result["refit_changed"])
    assert not result["not_restored"], result["not_restored"]
    torch.testing.assert_close(result["tried_logits"], result["final_logits"], rtol=1e-5, atol=1e-5)
