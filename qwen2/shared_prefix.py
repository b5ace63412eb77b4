"""Rows packed as [prompt | c_1 | c_2 | ...]: their positions and their attention, in blocks.

GRPO trains G completions of one prompt. Packed into one row, the prompt is computed once and every
completion continues it: c_i's positions start at the prompt length P, and c_i sees the prompt and
its own earlier tokens, never another completion. So the row computes exactly what the G rows
[prompt | c_i] would, with the prompt's keys and values computed once (and, in backward, the
prompt's gradients from all G completions adding up in that one computation).

The attention of such a row is block-shaped, and computed as blocks rather than as one (T, T)
masked product over the whole row (T = P + G x C, so that would cost (P + G C)^2, most of it
masked away):
    prompt block       the P prompt queries against the P prompt keys, causal      P^2
    completion blocks  each completion's C queries against [prompt | itself]         G C (P + C)
The linear layers and the MLP still run on the packed row, with no padding; only attention gathers
its queries, keys and values into these blocks and scatters the outputs back. Completions go to
the attention in a few batches of similar length (lengths within a factor of 2: 1, 2, 3-4, 5-8,
9-16, ...), each padded only to its own longest, so one long completion does not make every short
one pay for its length.

Simplification: blocks are padded to the longest prompt of the micro-batch and to the longest
completion of their length batch (attention only; the padding is masked and never reaches the
packed row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .attention import attention


@dataclass
class CompletionBlock:
    """S completions of similar length, each padded to the longest of them (C tokens)."""

    index: Tensor  # (S, C) each completion's tokens
    row: Tensor  # (S,) the row, so the prompt, each completion continues
    mask: Tensor  # (S, 1, C, P + C) its row's real prompt keys, then itself causally


@dataclass
class PrefixBlocks:
    """The layout (layout.py) of packed rows: each token's position, and the attention blocks.

    Token indices count over the flattened R x T tokens; index R * T is an extra zero slot that
    stands for padding inside a block."""

    positions: Tensor  # (R, T) the prompt counts from 0, every completion continues from its prompt's length
    prompt_index: Tensor  # (R, P) each row's prompt tokens
    prompt_mask: Tensor  # (R, 1, P, P) causal, real keys only
    completions: list[CompletionBlock]  # every completion of the micro-batch, batched by length

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention output (R, H, T, D) of queries (R, H, T, D) and keys/values (R, Hkv, T, D)."""
        R, H, T, D = q.shape

        def tokens(x: Tensor) -> Tensor:  # (R, heads, T, D) -> (R * T + 1, heads, D), zero slot last
            x = x.transpose(1, 2).reshape(R * T, x.shape[1], D)
            return torch.cat([x, x.new_zeros(1, *x.shape[1:])])

        def block(x: Tensor, index: Tensor) -> Tensor:  # -> (n, heads, L, D)
            return x[index].transpose(1, 2)

        def scatter(y: Tensor, index: Tensor, out: Tensor) -> Tensor:  # block outputs back to their tokens
            return y.index_put((index.flatten(),), out.transpose(1, 2).reshape(-1, H, D))

        q, k, v = tokens(q), tokens(k), tokens(v)
        kp, vp = block(k, self.prompt_index), block(v, self.prompt_index)
        # Every padded query still sees its row's first prompt token (prompts are never empty), so
        # no query row is fully masked: SDPA would return NaN for one.
        y_prompt = attention(block(q, self.prompt_index), kp, vp, self.prompt_mask)
        # Scatter back to the packed row (block padding lands in the zero slot, dropped after).
        y = scatter(q.new_zeros(R * T + 1, H, D), self.prompt_index, y_prompt)
        for c in self.completions:
            # Each completion's keys/values: its prompt's (computed once, copied per completion), then its own.
            kc = torch.cat([kp[c.row], block(k, c.index)], dim=2)
            vc = torch.cat([vp[c.row], block(v, c.index)], dim=2)
            y_completion = attention(block(q, c.index), kc, vc, c.mask)
            y = scatter(y, c.index, y_completion)
        return y[:-1].view(R, T, H, D).transpose(1, 2)


def shared_prefix_layout(prompt_lengths: list[int], completion_lengths: list[list[int]], width: int,
                         device: torch.device | str = "cpu") -> PrefixBlocks:
    """The layout of R rows packed as [prompt | c_1 | c_2 | ... | right padding], `width` tokens each.

    Row r holds a prompt of prompt_lengths[r] tokens, then completions of completion_lengths[r]
    tokens. Built from these host-side lengths, so no number is read back from the device. Padding
    tokens belong to no block: their outputs are zero and never used."""
    R, T = len(prompt_lengths), width
    pad_slot = R * T
    P = max(prompt_lengths)
    # (row, first column, length) of every completion, in row order.
    spans = []
    for r, (p, lengths) in enumerate(zip(prompt_lengths, completion_lengths)):
        start = p
        for n in lengths:
            spans.append((r, start, n))
            start += n
        if start > T:
            raise ValueError(f"row {r} holds {start} tokens, more than the width {T}")
    C = max((n for _, _, n in spans), default=1)

    positions = torch.zeros(R, T, dtype=torch.long)
    for r, p in enumerate(prompt_lengths):
        positions[r, :p] = torch.arange(p)
    for r, start, n in spans:
        positions[r, start:start + n] = torch.arange(prompt_lengths[r], prompt_lengths[r] + n)

    idx = torch.arange(max(P, C, T), device=device)
    rows = torch.arange(R, device=device)
    prompt_len = torch.tensor(prompt_lengths, device=device)
    prompt_real = idx[:P] < prompt_len[:, None]  # (R, P): prompts start each row
    prompt_index = torch.where(prompt_real, rows[:, None] * T + idx[:P], pad_slot)
    causal = torch.ones(max(P, C), max(P, C), dtype=torch.bool, device=device).tril()
    prompt_mask = (causal[:P, :P] & prompt_real[:, None, :])[:, None]  # (R, 1, P, P)

    # Length batches: lengths 2^(b-1) < n <= 2^b share batch b (n - 1 has b bits), padded to their longest.
    batches: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:
        batches.setdefault((span[2] - 1).bit_length(), []).append(span)
    completions = []
    for members in batches.values():
        Cb = max(n for _, _, n in members)
        row = torch.tensor([r for r, _, _ in members], device=device)  # (Sb,)
        first = torch.tensor([r * T + start for r, start, _ in members], device=device)  # (Sb,) flat index
        length = torch.tensor([n for _, _, n in members], device=device)
        real = idx[:Cb] < length[:, None]  # (Sb, Cb)
        index = torch.where(real, first[:, None] + idx[:Cb], pad_slot)  # (Sb, Cb)
        own = causal[:Cb, :Cb] & real[:, None, :]  # (Sb, Cb, Cb)
        sees_prompt = prompt_real[row][:, None, :].expand(-1, Cb, -1)  # (Sb, Cb, P)
        completions.append(CompletionBlock(index, row, torch.cat([sees_prompt, own], dim=-1)[:, None]))
    return PrefixBlocks(positions.to(device), prompt_index, prompt_mask, completions)


def block_attention_bound(tokens: int, prompt: int, completion: int) -> int:
    """At most how many attention scores (query x key pairs) the blocks of one micro-batch hold, for
    `tokens` tokens in all, prompts of at most `prompt` tokens and completions of at most `completion`
    (the memory planner's figure): the prompt blocks at most tokens x prompt (rows x longest row stays
    within the micro-batch), the completion blocks at most 2 x tokens x (prompt + completion) (each
    completion padded to less than twice its length, its queries seeing at most prompt + completion keys)."""
    return tokens * prompt + 2 * tokens * (prompt + completion)
