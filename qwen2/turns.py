"""Rows that pause at the end of a turn and go on with more context: the sampler's side of tool calls.

`generate(..., on_stop=f)` calls f(row, turn) when a row stops (emits a stop token; the sampler
looks after every token), with the model tokens of the turn it just finished. f returns the tokens
that come next, e.g. a tool's answer and the next assistant header as the chat template renders
them (grpo/tools.py), or None when the row is done. A row that goes on:
  1. gets its stop token and the returned tokens pushed into its KV cache, in one forward pass over
     every live row at once: the resuming rows' new tokens and the others' next token, right-aligned
     in a window as wide as the longest, the rest masked as padding (positions count real tokens
     only, so the padding is invisible);
  2. decodes on from the logits of its last new token.
The returned tokens are context, not the model's actions: `action_mask` marks each completion
token 1 (sampled by the model) or 0 (pushed in), and the model's token budget (max_new_tokens)
counts the former only.

Simplifications: eager decoding only (a resume changes the batch's shapes; the compiled step of
static_decode.py is not used with on_stop); stops are looked at after every token (one host read
per token, so that no model token is spent after a stop); the padding a push leaves in the other
rows stays in the cache, masked, until the cache is full and is packed (KVCache.room).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .kv_cache import KVCache


@dataclass
class Turns:
    """Per output row, what earlier turns produced; the current turn's tokens are in the sampler's
    output buffer from column `start[i]` on."""

    on_stop: Callable[[int, list[int]], list[int] | None]
    rows: int
    tokens: list[list[int]] = field(init=False)  # earlier turns' model tokens and the pushed-in ones
    action: list[list[int]] = field(init=False)  # 1 on a model token, 0 on a pushed-in one
    logprobs: list[list[float]] = field(init=False)
    entropies: list[list[float]] = field(init=False)
    start: list[int] = field(init=False)  # output column where each row's current turn begins

    def __post_init__(self):
        self.tokens, self.action = [[] for _ in range(self.rows)], [[] for _ in range(self.rows)]
        self.logprobs, self.entropies = [[] for _ in range(self.rows)], [[] for _ in range(self.rows)]
        self.start = [0] * self.rows

    def resume(self, just: Tensor, done: Tensor, t: int, out: Tensor, out_lp: Tensor | None,
               out_ent: Tensor | None) -> dict[int, list[int]]:
        """After sampling column t: ask `on_stop` about the rows `just` (output rows) that stopped in
        column t (their stop token is not yet in the cache); those that go on are un-done and get
        that stop token and the returned tokens to push. Returns {output row: tokens to push}."""
        stopped = just.tolist()
        if not stopped:
            return {}
        index = torch.tensor(stopped, device=out.device)
        segments = out[index, :t + 1].tolist()  # one read of the stopped rows' columns
        lps = out_lp[index, :t + 1].tolist() if out_lp is not None else None
        ents = out_ent[index, :t + 1].tolist() if out_ent is not None else None
        push = {}
        for k, r in enumerate(stopped):
            turn = segments[k][self.start[r]:t + 1]  # the stop token last
            more = self.on_stop(r, turn)
            if not more:  # None (or nothing to push): the row is done
                continue
            self.tokens[r] += turn + more
            self.action[r] += [1] * len(turn) + [0] * len(more)
            if lps is not None:
                self.logprobs[r] += lps[k][self.start[r]:t + 1] + [0.0] * len(more)
                self.entropies[r] += ents[k][self.start[r]:t + 1] + [0.0] * len(more)
            self.start[r] = t + 1
            done[r] = False
            push[r] = [turn[-1]] + more
        return push

    def push(self, model, cache: KVCache, live: Tensor, tok: Tensor, pushed: dict[int, list[int]]) -> Tensor:
        """One forward over every live row: its pushed tokens, or its pending token `tok`, right-
        aligned; returns each row's next-token logits (B, V)."""
        rows = live.tolist()
        new = [pushed.get(r) or [int(x)] for r, x in zip(rows, tok.tolist())]
        width = max(len(n) for n in new)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        real = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, n in enumerate(new):
            ids[b, width - len(n):] = torch.tensor(n)
            real[b, width - len(n):] = True
        return model(ids.to(tok.device), cache.append(real.to(tok.device)), logits_to_keep=1)[:, -1]

    def completion(self, r: int, row: list[int], end: int, lp: Sequence[float] | None,
                   ent: Sequence[float] | None) -> tuple[list[int], list[int], list[float], list[float]]:
        """Row r's whole completion: earlier turns, then columns start..end of its current turn."""
        tokens = self.tokens[r] + row[self.start[r]:end]
        action = self.action[r] + [1] * (end - self.start[r])
        lps = self.logprobs[r] + list(lp[self.start[r]:end]) if lp is not None else []
        ents = self.entropies[r] + list(ent[self.start[r]:end]) if ent is not None else []
        return tokens, action, lps, ents
