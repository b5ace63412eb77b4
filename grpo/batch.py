"""Episodes -> the tensors of the update: one padded batch, cut into micro-batches.

Layout of every row: [left-padded prompt | completion | right padding] (qwen2.pad_batch), so the
completions of all rows start in the same column P and the loss mask is simply the attention mask
from column P on. The completion keeps its stop token (<|im_end|>): the model also learns when to
stop. A micro-batch drops the columns that are padding in all of its rows, so a micro-batch of
short episodes costs what its own longest episode costs.
Simplification: each episode is a row of its own; its prompt is recomputed for every sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qwen2 import pad_batch

from .rollout import Episode


@dataclass
class Batch:
    input_ids: Tensor  # (B, T): [left-padded prompt | completion | right padding]
    attention_mask: Tensor  # (B, T), 1 on real tokens
    loss_mask: Tensor  # (B, T - P): 1 on completion tokens (the stop token included)
    advantages: Tensor  # (B,)
    prompt_len: int  # P: the column of every row's first completion token


@dataclass
class MicroBatch:
    rows: slice  # which rows of the Batch
    input_ids: Tensor  # (b, t): those rows, without all-padding columns
    attention_mask: Tensor  # (b, t)
    targets_start: int  # column of the first completion token in input_ids
    loss_mask: Tensor  # (b, t - targets_start)


def build_batch(episodes: Sequence[Episode], advantages: Tensor, pad_id: int, device: torch.device | str) -> Batch:
    ids, attn = pad_batch([e.prompt_ids for e in episodes], pad_id, [e.completion_ids for e in episodes], device=device)
    P = max(len(e.prompt_ids) for e in episodes)
    return Batch(ids, attn, attn[:, P:].float(), advantages.to(device), P)


def micro_batches(batch: Batch, size: int) -> Iterator[MicroBatch]:
    """Consecutive groups of `size` rows, each trimmed to the columns where one of its rows is real."""
    P = batch.prompt_len
    for start in range(0, len(batch.input_ids), size):
        rows = slice(start, start + size)
        attn = batch.attention_mask[rows]
        cols = attn.any(0).nonzero()[:, 0]
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        yield MicroBatch(rows, batch.input_ids[rows, lo:hi], attn[:, lo:hi], P - lo, batch.loss_mask[rows, :hi - P])
