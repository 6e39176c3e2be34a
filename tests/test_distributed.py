"""A real 2-process DDP run (torchrun, gloo on CPU) for every method."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import hf_prune

from .tiny_models import FAMILIES, inputs, logits


def torchrun(world: int, tmp_path: Path, mode: str, timeout: int) -> None:
    """Run `ddp_train.py <tmp_path> <mode>` on `world` local processes; fail with its output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = Path(__file__).parent / "ddp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    run = subprocess.run(
        [*command, str(script), str(tmp_path), mode],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]


def test_two_process_training_makes_identical_decisions(tmp_path):
    methods = hf_prune.available_methods()
    torchrun(2, tmp_path, ",".join(methods), timeout=900)
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(report) == methods
    for method, ranks in report.items():
        assert [r["world"] for r in ranks] == [2, 2], method
        assert ranks[0]["digest"] == ranks[1]["digest"], f"{method}: ranks ended with different pruned models"
        torch.testing.assert_close(torch.tensor(ranks[0]["logits"]), torch.tensor(ranks[1]["logits"]))
        pruned = tmp_path / method / "pruned"
        assert (pruned / "pruning_config.json").exists() and (pruned / "config.json").exists()
        assert not list(tmp_path.glob(f"{method}/*.tmp-*")), "staging folders left behind"
        reloaded = hf_prune.AutoPrunedModel.from_pretrained(pruned).eval()
        torch.testing.assert_close(logits(reloaded, inputs(FAMILIES[0])), torch.tensor(ranks[0]["logits"]))


def test_loss_scaling_does_not_depend_on_the_process_count(tmp_path):
    """Task loss, the BMRS KL term and a causal LM's distillation KL: the same averaged gradients on 1 and on 2
    processes, with and without `average_tokens_across_devices`."""
    for world in (1, 2):
        torchrun(world, tmp_path, "gradients", timeout=600)
    for average in (0, 1):
        single = torch.load(tmp_path / f"grads_world1_avg{average}.pt")
        double = torch.load(tmp_path / f"grads_world2_avg{average}.pt")
        assert single.keys() == double.keys() and any("hf_prune_gate" in k for k in single)
        for name, grad in single.items():
            torch.testing.assert_close(double[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        single = torch.load(tmp_path / f"grads_kd_world1_avg{average}.pt")
        double = torch.load(tmp_path / f"grads_kd_world2_avg{average}.pt")
        assert single.keys() == double.keys() and single
        for name, grad in single.items():
            torch.testing.assert_close(double[name], grad, rtol=1e-4, atol=1e-6, msg=f"distilled: {name}")
