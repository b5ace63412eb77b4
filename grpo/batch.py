"""Episodes -> the tensors of the update: micro-batches in one of two layouts.

Shared prefix (default, `grpo.shared_prefix: true`). The G completions of a question share its
prompt, so each group is one row [prompt | c_1 | c_2 | ... | c_G | right padding]: the model
computes the prompt once, every completion sees it and its own earlier tokens only
(qwen2/shared_prefix.py), and backward adds the
prompt's gradients from all G completions in that one computation. Rows are filled up to
`micro_batch_tokens` (rows x longest row); a group too long for the budget is split into parts
that each carry the prompt again (still exact), and partial groups (episodes dropped by
skip_truncated) are simply shorter rows.

Padded (`grpo.shared_prefix: false`, for comparison and tests). Each episode is a row
[left-padded prompt | completion | right padding], `micro_batch_size` rows at a time, each
micro-batch padded only to its own longest prompt and completion.

Completions may hold a tool's tokens (grpo/tools.py): they stay in the rows as context, which later
tokens attend to, but are no targets: no log-prob, no loss (Episode.actions, the loss mask).
Either way a micro-batch carries its layout (qwen2/layout.py: positions and who sees whom), built
here once from the lengths on the host, so the forward passes over it (reference, mu updates) never
read a number back from the device. It lists, for each completion token, its row, its column, the column of the
hidden state that predicts it (the token before it; for a completion's first token the prompt's
last one), and its place (episode, index) in the (episodes, width) layout of the loss. The
completion keeps its stop token (<|im_end|>): the model also learns when to stop.
Simplification: micro-batches take episodes in batch order (no sorting by length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from data.rewards import Score
from qwen2 import pad_batch
from qwen2.layout import Layout, rows_layout
from qwen2.shared_prefix import shared_prefix_layout

from .rollout import Episode


@dataclass
class Batch:
    episodes: list[Episode]  # the episodes being trained on, groups contiguous
    advantages: Tensor  # (E,)
    loss_mask: Tensor  # (E, C): 1 on each episode's completion tokens (C = the longest completion)
    entropies: Tensor  # (E, C): the sampler's entropy at each completion token (0 where unknown)
    sampler_logprobs: Tensor | None  # (E, C): the sampler's log-probs, when the rollout kept them
    filler: bool = False  # a stand-in that carries no loss (filler_batch)

    @property
    def completion_tokens(self) -> int:
        """Completion tokens the loss counts (loss_mask.sum(), from the host-side lengths): the model's own."""
        return 0 if self.filler else sum(sum(e.actions) for e in self.episodes)

    @property
    def sequences(self) -> int:
        """Episodes the loss counts (those with at least one completion token)."""
        return 0 if self.filler else sum(1 for e in self.episodes if e.completion_ids)


@dataclass
class MicroBatch:
    episodes: slice  # which episodes of the Batch (always a contiguous run)
    input_ids: Tensor  # (R, T)
    layout: Layout  # how its tokens see each other: padded rows, or shared-prefix rows
    token_row: Tensor  # (n,) for each completion token: its row ...
    token_col: Tensor  # ... its column ...
    predictor_col: Tensor  # ... the column of the hidden state that predicts it ...
    token_episode: Tensor  # ... its episode (0..e-1 within this micro-batch) ...
    token_index: Tensor  # ... and its index in that completion
    loss_mask: Tensor  # (e, width): the Batch's loss mask for these episodes, width = longest completion
    completion_tokens: int  # how many completion tokens it holds (loss_mask.sum(), known on the host)

    @property
    def num_tokens(self) -> int:
        """Tokens this micro-batch pushes through the model, padding included."""
        return self.input_ids.numel()


def build_batch(episodes: Sequence[Episode], advantages: Tensor, device: torch.device | str) -> Batch:
    C = max(len(e.completion_ids) for e in episodes)
    loss_mask = torch.zeros(len(episodes), C)
    for i, e in enumerate(episodes):  # the model's tokens; a tool's tokens (context) and padding carry no loss
        loss_mask[i, :len(e.completion_ids)] = torch.tensor(e.actions, dtype=torch.float32)

    def per_token(values: Sequence[Sequence[float]]) -> Tensor:
        out = torch.zeros(len(episodes), C)
        for i, row in enumerate(values):
            out[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
        return out.to(device)

    logprobs = per_token([e.sampler_logprobs for e in episodes]) if all(e.sampler_logprobs for e in episodes) else None
    return Batch(list(episodes), advantages.to(device), loss_mask.to(device), per_token([e.entropies for e in episodes]),
                 logprobs)


def filler_batch(pad_id: int, device: torch.device | str) -> Batch:
    """One padding token that carries no loss: what a rank with nothing to train runs, so that the
    collective forward and backward passes of the others go on (grpo/machinery/distributed.py)."""
    batch = build_batch([Episode(0, [pad_id], [pad_id], True, "", "", Score({}, 0.0, False))], torch.zeros(1), device)
    batch.loss_mask.zero_()
    batch.filler = True
    return batch


def padded_tokens(episodes: Sequence[Episode], micro_batch_size: int) -> int:
    """Tokens the padded layout pushes through the model for these episodes (for comparison)."""
    total = 0
    for i in range(0, len(episodes), micro_batch_size):
        part = episodes[i:i + micro_batch_size]
        total += len(part) * (max(len(e.prompt_ids) for e in part) + max(len(e.completion_ids) for e in part))
    return total


def micro_batches(batch: Batch, *, shared_prefix: bool, micro_batch_size: int, micro_batch_tokens: int,
                  pad_id: int, device: torch.device | str) -> list[MicroBatch]:
    """The whole batch, cut into micro-batches of the chosen layout (see the module docstring)."""
    if shared_prefix:
        return _shared_prefix_micro_batches(batch, micro_batch_tokens, pad_id, device)
    return [_padded_micro_batch(batch, slice(i, i + micro_batch_size), pad_id, device)
            for i in range(0, len(batch.episodes), micro_batch_size)]


def _padded_micro_batch(batch: Batch, rows: slice, pad_id: int, device: torch.device | str) -> MicroBatch:
    episodes = batch.episodes[rows]
    ids, attn = pad_batch([e.prompt_ids for e in episodes], pad_id, [e.completion_ids for e in episodes],
                          device=device)
    P = max(len(e.prompt_ids) for e in episodes)  # every completion starts in column P
    tokens = [(i, P + j, P + j - 1, i, j) for i, e in enumerate(episodes) for j, a in enumerate(e.actions) if a]
    padded = len({(len(e.prompt_ids), len(e.completion_ids)) for e in episodes}) > 1  # no padding: plain causal
    return _micro_batch(batch, rows, ids, rows_layout(attn, padded), tokens, device)


def _shared_prefix_micro_batches(batch: Batch, budget: int, pad_id: int, device: torch.device | str) -> list[MicroBatch]:
    # 1. Rows: each group's completions after one copy of its prompt, split where the budget ends.
    rows: list[list[int]] = []  # the episodes of each row, all of one group
    for i, e in enumerate(batch.episodes):
        last = rows[-1] if rows else None
        if last and batch.episodes[last[0]].group == e.group and _row_length(batch, last) + len(e.completion_ids) <= budget:
            last.append(i)
        else:
            rows.append([i])
    # 2. Micro-batches: consecutive rows while rows x longest row stays within the budget. (Two parts
    #    of a split group never share one: the first part plus the next completion exceeded the
    #    budget, so two rows as long as the longer part exceed it too.)
    out, start = [], 0
    while start < len(rows):
        end, longest = start + 1, _row_length(batch, rows[start])
        while end < len(rows) and (end - start + 1) * max(longest, _row_length(batch, rows[end])) <= budget:
            longest = max(longest, _row_length(batch, rows[end]))
            end += 1
        out.append(_packed_micro_batch(batch, rows[start:end], pad_id, device))
        start = end
    return out


def _row_length(batch: Batch, row: list[int]) -> int:
    """Tokens of a shared-prefix row: the prompt once, then each completion."""
    return len(batch.episodes[row[0]].prompt_ids) + sum(len(batch.episodes[i].completion_ids) for i in row)


def _packed_micro_batch(batch: Batch, rows: list[list[int]], pad_id: int, device: torch.device | str) -> MicroBatch:
    T = max(_row_length(batch, row) for row in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    first = rows[0][0]  # the micro-batch's first episode
    tokens = []  # (row, column, predictor column, episode, index in its completion) per completion token
    for r, row in enumerate(rows):
        prompt = batch.episodes[row[0]].prompt_ids
        ids[r, :len(prompt)] = torch.tensor(prompt)
        col = len(prompt)
        for i in row:
            completion = batch.episodes[i].completion_ids
            ids[r, col:col + len(completion)] = torch.tensor(completion)
            # A completion's first token is predicted by the prompt's last one, the others by the token before.
            tokens += [(r, col + j, col + j - 1 if j else len(prompt) - 1, i - first, j)
                       for j, a in enumerate(batch.episodes[i].actions) if a]
            col += len(completion)
    layout = shared_prefix_layout([len(batch.episodes[row[0]].prompt_ids) for row in rows],
                                  [[len(batch.episodes[i].completion_ids) for i in row] for row in rows], T, device)
    return _micro_batch(batch, slice(first, rows[-1][-1] + 1), ids.to(device), layout, tokens, device)


def _micro_batch(batch: Batch, episodes: slice, ids: Tensor, layout: Layout,
                 tokens: list[tuple[int, int, int, int, int]], device: torch.device | str) -> MicroBatch:
    width = max(len(e.completion_ids) for e in batch.episodes[episodes])  # the longest completion
    row, col, predictor, episode, index = torch.tensor(tokens, dtype=torch.long).to(device).unbind(1)
    real = sum(sum(e.actions) for e in batch.episodes[episodes]) if not batch.filler else 0
    return MicroBatch(episodes, ids, layout, row, col, predictor, episode, index, batch.loss_mask[episodes, :width], real)
