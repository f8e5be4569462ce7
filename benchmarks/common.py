"""Shared pieces of the benchmark scripts: a synthetic masked batch and peak-memory reading."""

from __future__ import annotations

import resource

import numpy as np
import torch

from perceiver_lm.data import collate_masked
from perceiver_lm.masking import mask_tokens


def synthetic_batch(batch_size: int, window: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Masked windows of random lowercase words: speed depends on shapes and mask count, not text."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(batch_size):
        words = rng.integers(97, 123, window)
        words[rng.random(window) < 0.18] = 32
        masked = mask_tokens(words.astype(np.int64) + 6, rng)
        examples.append({"input_ids": masked.input_ids, "positions": masked.positions, "labels": masked.labels})
    return collate_masked(examples)


def dense_labels(batch: dict[str, torch.Tensor], window: int) -> torch.Tensor:
    """[B, L] labels with -100 everywhere but the masked positions (what transformers' MLM expects)."""
    labels = torch.full((batch["labels"].shape[0], window), -100)
    for row in range(labels.shape[0]):
        valid = batch["labels"][row] != -100
        labels[row, batch["query_positions"][row][valid]] = batch["labels"][row][valid]
    return labels


def peak_memory_bytes(device: str) -> int:
    """Peak GPU memory allocated, or the process's max RSS on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
