"""Measurements of a causal language model: exact perplexity over fixed windows, prefill and decode speed, and
greedy samples.

```python
from hf_prune.scripts.language_modeling import generate_samples, perplexity, throughput

ppl = perplexity(model, stream[:8192], window=1024)  # a token stream, cut into non-overlapping windows
ppl = perplexity(model, stream, window=1024, stride=512)  # sliding windows: every scored token sees >= 512 tokens
ppl = perplexity(model, blocks)  # a Dataset of "input_ids" rows (or a 2-D tensor): each row on its own
speed = throughput(model, batch_size=8, prompt_tokens=128, new_tokens=64)
# {"prefill_tokens_per_s": ..., "decode_tokens_per_s": ..., "prefill_s": ..., "decode_s": ...}
texts = generate_samples(model, tokenizer, ["The capital of France is"], max_new_tokens=8)  # continuations only
```
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import LogitsProcessor, LogitsProcessorList


def perplexity(
    model,
    token_ids_or_blocks,
    window: int = 1024,
    stride: int | None = None,
    batch_size: int = 4,
) -> float:
    """Perplexity of a causal LM: the exponential of the mean negative log-likelihood per predicted token, computed
    exactly (every scored token counts once, whatever window it falls in), in eval mode and without gradients.

    Args:
        model: a causal LM returning `.logits` (a transformers `...ForCausalLM`).
        token_ids_or_blocks: one token stream (a list of ids or a 1-D tensor), or several sequences scored
            independently (a list of lists, a 2-D tensor, or a `Dataset` with an `input_ids` column).
        window (`int`): the most tokens the model sees at once. A longer sequence is cut into windows.
        stride (`int`, *optional*): how far each window starts after the previous one. By default `window`:
            non-overlapping windows, where the first token of each window is context only and not scored. With a
            smaller stride the windows overlap and each token is scored once, in the first window where it is
            new, with at least `window - stride` tokens of context (the first token of a sequence is never scored).
        batch_size (`int`): windows of equal length per forward pass.

    Returns:
        The perplexity, `exp(sum of NLL / number of scored tokens)`.
    """
    stride = window if stride is None else stride
    if window < 2 or not 1 <= stride <= window:
        raise ValueError(f"window={window}, stride={stride}: need window >= 2 and 1 <= stride <= window.")
    sequences = _sequences(token_ids_or_blocks)
    # (sequence, begin, end, first scored position) of every window, batched by length so nothing is padded
    windows = [(i, *span) for i, ids in enumerate(sequences) for span in _windows(len(ids), window, stride)]
    if not windows:
        raise ValueError("Nothing to score: every sequence is shorter than 2 tokens.")
    windows.sort(key=lambda w: w[2] - w[1])
    device = _device(model)
    total, count = 0.0, 0
    with _evaluating(model):
        start = 0
        while start < len(windows):
            length = windows[start][2] - windows[start][1]
            batch = [w for w in windows[start : start + batch_size] if w[2] - w[1] == length]
            start += len(batch)
            ids = torch.stack([sequences[i][begin:end] for i, begin, end, _ in batch]).to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            for row, (_, begin, _, first) in enumerate(batch):
                # the logits at position p - 1 predict the token at position p
                predicted = logits[row, first - begin - 1 : -1].float()
                total += F.cross_entropy(predicted, ids[row, first - begin :], reduction="sum").item()
                count += predicted.shape[0]
    return math.exp(total / count)


def _sequences(token_ids_or_blocks) -> list[torch.Tensor]:
    """The input as a list of 1-D id tensors."""
    data = token_ids_or_blocks
    if isinstance(data, Dataset):
        data = data["input_ids"]
    if isinstance(data, torch.Tensor):
        if data.dim() not in (1, 2):
            raise ValueError(f"Expected a 1-D or 2-D tensor of token ids, got shape {tuple(data.shape)}.")
        return [data.long()] if data.dim() == 1 else list(data.long())
    data = list(data)
    if data and isinstance(data[0], (int, torch.Tensor)) and torch.as_tensor(data[0]).dim() == 0:
        return [torch.tensor([int(t) for t in data])]
    return [torch.as_tensor(list(row), dtype=torch.long) for row in data]


def _windows(length: int, window: int, stride: int):
    """`(begin, end, first)` of each window over `length` tokens: the model sees `[begin, end)` and the tokens
    `[first, end)` are scored, each token (but the first) exactly once."""
    begin = scored_until = 0
    while True:
        end = min(begin + window, length)
        first = max(scored_until, begin + 1)
        if end > first:
            yield begin, end, first
        if end >= length:
            return
        scored_until, begin = end, begin + stride


def throughput(
    model,
    batch_size: int,
    prompt_tokens: int,
    new_tokens: int,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Generation speed on random prompts of `batch_size` x `prompt_tokens` tokens, the median of `repeats` runs
    after `warmup` untimed ones.

    * prefill: one forward pass over the prompt batch that fills the KV cache (the logits of the last position
      only, as `generate` computes them); `prefill_tokens_per_s = batch_size * prompt_tokens / prefill_s`.
    * decode: greedy `generate` with the KV cache, timed from the end of its prefill step to the end, which is
      `new_tokens` one-token forward passes; `decode_tokens_per_s = batch_size * new_tokens / decode_s`. Every run
      generates exactly `new_tokens + 1` tokens (end-of-sequence is ignored), the first one by the prefill.

    Works on CPU and on accelerators (synchronized before each clock reading).
    """
    if min(batch_size, prompt_tokens, new_tokens, repeats) < 1 or warmup < 0:
        raise ValueError("batch_size, prompt_tokens, new_tokens and repeats must be >= 1, warmup >= 0.")
    device = _device(model)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.get_text_config().vocab_size, (batch_size, prompt_tokens), generator=generator)
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    forward_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    pad_token_id = model.generation_config.pad_token_id
    if pad_token_id is None:
        pad_token_id = model.generation_config.eos_token_id
    if isinstance(pad_token_id, (list, tuple)):
        pad_token_id = pad_token_id[0]
    prefill, decode = [], []
    with _evaluating(model):
        for run in range(warmup + repeats):
            _synchronize(device)
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, use_cache=True, **forward_kwargs)
            _synchronize(device)
            prefill_s = time.perf_counter() - start

            clock = _FirstCall(device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens + 1,
                min_new_tokens=new_tokens + 1,
                use_cache=True,
                pad_token_id=pad_token_id,
                logits_processor=LogitsProcessorList([clock]),
            )
            _synchronize(device)
            decode_s = time.perf_counter() - clock.time
            if out.shape[1] != prompt_tokens + new_tokens + 1:
                raise RuntimeError(f"generate made {out.shape[1] - prompt_tokens} tokens, not {new_tokens + 1}.")
            if run >= warmup:
                prefill.append(prefill_s)
                decode.append(decode_s)
    prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
    return {
        "prefill_tokens_per_s": batch_size * prompt_tokens / prefill_s,
        "decode_tokens_per_s": batch_size * new_tokens / decode_s,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
    }


class _FirstCall(LogitsProcessor):
    """Notes the time of its first call, which `generate` makes right after its prefill forward pass."""

    def __init__(self, device: torch.device):
        self.device, self.time = device, None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.time is None:
            _synchronize(self.device)
            self.time = time.perf_counter()
        return scores


def generate_samples(model, tokenizer, prompts: str | Sequence[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of plain-text `prompts` (no chat template), one prompt at a time so that no padding
    changes them; returns only the new text of each, without special tokens."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    device = _device(model)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    samples = []
    with _evaluating(model):
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt").to(device)
            out = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
            samples.append(tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    return samples


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(getattr(torch, device.type, None), "synchronize"):
        getattr(torch, device.type).synchronize()


@contextmanager
def _evaluating(model):
    """Eval mode and no gradients, restoring the model's training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
