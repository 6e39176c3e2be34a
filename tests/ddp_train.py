"""Launched by test_distributed.py with `torchrun --nproc_per_node 2` (gloo on CPU): every method trains a few
steps under DDP; all ranks must end with identical masks and identical pruned models, and only rank 0 writes."""

import hashlib
import json
import sys
from pathlib import Path

import datasets
import torch
import torch.distributed as dist

import hf_prune
from hf_prune import PruningArguments, PruningTrainer
from hf_prune.registry import get_method


sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import FAMILIES, build, inputs, logits  # noqa: E402


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().numpy().tobytes())
    return h.hexdigest()


def main(output: Path, methods: list[str]) -> None:
    family = FAMILIES[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (64, 8), generator=g)
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] > 50).long().tolist()})
    report = {}
    for method in methods:
        config = get_method(method).config_class(target_sparsity=0.4)
        args = PruningArguments(output_dir=str(output / method), max_steps=6, per_device_train_batch_size=4,
                                logging_steps=2, save_steps=3, use_cpu=True, ddp_backend="gloo", report_to=[],
                                seed=0, learning_rate=1e-3)
        trainer = PruningTrainer(model=build(family), args=args, pruning_config=config, train_dataset=train)
        trainer.train()
        pruned = trainer.finalize(measure_latency=False).eval()
        trainer.save_model(str(output / method / "pruned"))
        mine = {"digest": digest(pruned), "logits": logits(pruned, inputs(family)).tolist(),
                "world": dist.get_world_size()}
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        report[method] = everyone
    if dist.get_rank() == 0:
        (output / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","))
