"""Launched by test_fsdp.py with `torchrun --nproc_per_node 2` (gloo on CPU): tiny decoders are gated, sharded with
FSDP2 (`fully_shard` per decoder layer, then the root, on a CPU device mesh), trained a few steps with a hand-written
loop that calls the method's hooks where `PruningTrainer` does, and finalized. Every run is repeated unsharded under
DDP, with the same seeds and the same per-process data, as the reference. Rank 0 writes `report.pt`.

`run(family, method, "single", {})` is the same loop on one process with the whole batch (imported by the test).
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

import hf_prune
from hf_prune.distributed import is_dtensor, is_fsdp2
from hf_prune.mapping import gate_parameters, get_pruning_state, masks_applied
from hf_prune.methods.base import StepContext
from hf_prune.record import find_record
from hf_prune.selection import current_masks


sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import FAMILY, build, method_config  # noqa: E402


STEPS, BATCH, LENGTH, SEED = 6, 8, 8, 0
NUM_LIKELIHOOD_TERMS = 512.0  # BMRS's KL divides by the training set's size in label tokens
METHODS = ("magnitude", "taylor", "random", "bingo", "bmrs")
RUNS = [("llama", m) for m in (*METHODS, "taylor+reconstruct", "taylor+refit_aware", "taylor+final_refit")] + [
    ("qwen2", method) for method in ("magnitude", "bingo", "bmrs")
]


def pruning_config(method: str):
    """The method's config for a 6-step run: target methods tighten their masks on the cubic schedule (steps 2-4);
    BINGO probes every step; BMRS decides every 2 steps. `"<method>+reconstruct"` also refits the kept weights at each
    event (the input statistics are summed across processes, and the refit writes the shards); `"+refit_aware"` also
    ranks by what the refit cannot restore (from the summed statistics and the gathered weights); `"+final_refit"`
    prunes once at finalize with the refit, which the run first tries out as the metric search does."""
    method, _, extra = method.partition("+")
    if extra == "final_refit":
        return method_config(method, 0.3, schedule="final", reconstruct=True)
    if extra in ("reconstruct", "refit_aware"):
        return method_config(method, 0.3, schedule="cubic", **{"reconstruct": True, extra: True})
    if method == "bmrs":
        return method_config(method, pruning_interval=2)
    extra = {"probe_interval": 1} if method == "bingo" else {}
    return method_config(method, 0.3, schedule="cubic", **extra)


def batches() -> torch.Tensor:
    """`[STEPS, BATCH, LENGTH]` token ids; every process slices its share of each step's batch."""
    return torch.randint(3, 99, (STEPS, BATCH, LENGTH), generator=torch.Generator().manual_seed(SEED))


def eval_ids() -> torch.Tensor:
    return torch.randint(3, 99, (2, LENGTH), generator=torch.Generator().manual_seed(SEED + 1))


def compute_loss(model, inputs):
    outputs = model(**inputs)
    return outputs.loss, outputs


def train(model: torch.nn.Module, wrapped: torch.nn.Module, rank: int, world: int) -> None:
    """`STEPS` optimizer steps on this process's share of each batch, calling the method's hooks in the order
    `PruningTrainer` does: loss term, backward, `after_backward`, optimizer step, `on_optimizer_step`."""
    method = get_pruning_state(model).method
    gates = gate_parameters(model)
    weights = [p for p in model.parameters() if all(p is not g for g in gates)]
    optimizer = torch.optim.AdamW(
        [
            {"params": weights, "lr": 1e-3},
            {"params": gates, "lr": method.gate_learning_rate(STEPS) or 1e-3, "weight_decay": 0.0},
        ]
    )
    method.on_train_begin(STEPS, STEPS)
    torch.manual_seed(SEED + rank)  # gate noise: the same draws on a process in the sharded and the reference run
    share = BATCH // world
    data = batches()[:, rank * share : (rank + 1) * share]
    model.train()
    for step in range(STEPS):
        inputs = {"input_ids": data[step], "labels": data[step]}
        loss, _ = compute_loss(wrapped, inputs)
        extra = method.loss(NUM_LIKELIHOOD_TERMS)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        method.after_backward(StepContext(step, STEPS, SEED, rank, compute_loss), wrapped, inputs)
        optimizer.step()
        optimizer.zero_grad()
        method.on_optimizer_step(step + 1, STEPS)


def relax_some_gates(model: torch.nn.Module) -> None:
    """BMRS: a quarter of each layer's units start with posteriors near the prior, as if trained to be unneeded, so
    that the decisions of a 6-step run remove some."""
    generator = torch.Generator().manual_seed(SEED)
    state = get_pruning_state(model)
    with torch.no_grad():
        for gate in (g for kind in ("heads", "neurons") for g in state.gates(kind) if g is not None):
            units = torch.randperm(gate.num_units, generator=generator)[: max(1, gate.num_units // 4)]
            gate.mu[units] = torch.empty(len(units)).uniform_(-20.0, -6.0, generator=generator)
            gate.log_sigma[units] = torch.empty(len(units)).uniform_(1.0, 3.0, generator=generator)


def run(family: str, method: str, mode: str, result: dict, save: Path | None = None) -> dict:
    """Train and finalize one model: `mode` is `"fsdp"` (sharded), `"ddp"` (replicated) or `"single"` (one process,
    the whole batch). Fills `result` with what the test compares, as it goes, and returns it; saves the finalized
    model to `save` when given."""
    world = dist.get_world_size() if mode != "single" else 1
    rank = dist.get_rank() if mode != "single" else 0
    model = build(FAMILY[family])
    hf_prune.prepare_model_for_pruning(model, pruning_config(method))
    if method == "bmrs":
        relax_some_gates(model)
    wrapped = model
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        state = get_pruning_state(model)
        result["gate_parameters_sharded"] = [is_dtensor(p) for p in gate_parameters(model)]
        result["masks_plain"] = all(not is_dtensor(m) for k in ("heads", "neurons") for m in state.masks(k))
    elif mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    train(model, wrapped, rank, world)

    result["summary"] = hf_prune.pruning_summary(model)  # what PruningTrainer logs and writes with checkpoints
    state = get_pruning_state(model)
    model.eval()
    if method.endswith("+final_refit"):
        try_out_refit(model, result)
    keep = state.method.keep_masks()
    with torch.no_grad(), masks_applied(state, keep):
        result["gated_logits"] = model(input_ids=eval_ids()).logits
    pruned = hf_prune.finalize_model(model).eval()
    with torch.no_grad():
        result["final_logits"] = pruned(input_ids=eval_ids()).logits
    if save is not None:
        # what `Trainer.save_model` does under FSDP2 with FULL_STATE_DICT (`Accelerator.get_state_dict`), on every
        # process; only rank 0 writes
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
        state_dict = get_model_state_dict(pruned, options=options)
        pruned.save_pretrained(save, state_dict=state_dict, is_main_process=rank == 0)
    kept = find_record(pruned).kept
    result["kept"] = {"heads": kept["heads"], "neurons": kept["neurons"]}
    result["state_dict"] = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
    result["class"] = type(pruned).__name__
    result["plain"] = not is_fsdp2(pruned) and not any(is_dtensor(t) for t in result["state_dict"].values())
    result["still_sharded"] = is_fsdp2(model)
    return result


def try_out_refit(model: torch.nn.Module, result: dict) -> None:
    """What the metric search does with each candidate: the final masks with their refit inside
    `Reconstruction.refitted` (a collective call; the weights are gathered, refit and written back as shards), and
    the weights restored after."""
    state = get_pruning_state(model)
    method = state.method
    current = current_masks(state)
    candidate = method.select(method.config.target_sparsity)

    def local() -> dict[str, torch.Tensor]:  # this process's shards (a sharded model's state dict holds DTensors)
        return {k: (v.to_local() if is_dtensor(v) else v).detach().clone() for k, v in model.state_dict().items()}

    before = local()
    with torch.no_grad(), masks_applied(state, candidate), method.reconstruction.refitted(current, candidate):
        result["tried_logits"] = model(input_ids=eval_ids()).logits
        result["refit_changed"] = sorted(k for k, v in local().items() if not torch.equal(v, before[k]))
    result["not_restored"] = sorted(k for k, v in local().items() if not torch.equal(v, before[k]))


def digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(tensor.float().numpy().tobytes())
    return h.hexdigest()


def main(output: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    report = {}
    # gates go in before sharding: a sharded model is refused
    sharded = build(FAMILY["llama"])
    fully_shard(sharded, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    try:
        hf_prune.prepare_model_for_pruning(sharded, pruning_config("magnitude"))
        report["refuses_sharded"] = False
    except ValueError:
        report["refuses_sharded"] = True
    for family, method in RUNS:
        for mode in ("fsdp", "ddp"):
            result = {}
            try:
                run(family, method, mode, result, output / f"{family}-{method}" if mode == "fsdp" else None)
            except Exception:  # both processes fail at the same point; the test shows the error
                result["error"] = traceback.format_exc(limit=8)
            mine = digest(result["state_dict"]) if "state_dict" in result else result["error"]
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            result["rank_digests"] = everyone
            report[f"{family}/{method}/{mode}"] = result
    if dist.get_rank() == 0:
        torch.save(report, output / "report.pt")
    dist.barrier()
    dist.destroy_process_group()  # a clean shutdown: gloo threads alive at exit abort the process


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # The report is written and the process group destroyed: skip the interpreter's teardown, where a gloo thread
    # still joinable has aborted a rank under load ("terminate called without an active exception", exit -6).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
