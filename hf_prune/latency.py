"""Wall-clock latency of a model's forward pass on synthetic inputs (for model cards and quick comparisons; the
benchmarks under `benchmarks/` are the reference measurements)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def synthetic_inputs(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Random inputs of the right kind for `model`: token ids, or pixels for vision models."""
    config = model.config
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = config.image_size
        pixels = torch.randn(batch_size, config.num_channels, size, size, generator=generator)
        return {"pixel_values": pixels.to(device, next(model.parameters()).dtype)}
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or seq_len
    ids = torch.randint(0, config.vocab_size, (batch_size, min(seq_len, limit)), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}


@torch.no_grad()
def latency_stats(
    model: nn.Module, batch_size: int = 8, seq_len: int = 128, repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median, min and max forward time in milliseconds, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    batch = synthetic_inputs(model, batch_size, seq_len)
    synchronize = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        synchronize()
        start = time.perf_counter()
        model(**batch)
        synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def measure_latency(
    model: nn.Module, batch_size: int = 8, seq_len: int = 128, repeats: int = 20, warmup: int = 3
) -> float:
    """Median forward time in milliseconds (see `latency_stats`)."""
    return latency_stats(model, batch_size, seq_len, repeats, warmup)["median_ms"]
