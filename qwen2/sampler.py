"""Batched autoregressive sampling with a KV cache, shaped for GRPO rollouts.

`generate(model, prompts, max_new_tokens)` takes token-id lists of different lengths and returns
each row's completion. What makes it fast on GRPO batches:
  1. Prefill once per distinct prompt: all distinct prompts go through one batched, left-padded
     forward; the cache is then fanned out to the G rows that share a prompt (KVCache.select).
  2. Decode one token per step for every live row, reading keys/values from the cache.
  3. Finished rows leave the batch: every `compact_every` steps (one host sync), rows that hit a
     stop token are dropped from the cache, so a step costs what the live rows cost.
Sampling is a chain of small pure functions (temperature, top-k, top-p, then an inverse-CDF draw)
with an explicit torch.Generator, so a seed reproduces a run exactly; temperature 0 means greedy
(argmax). Over a 152k vocabulary the sampling step is not free next to a small model's forward:
it touches every logit a few times, so each full-vocabulary pass is kept to the necessary ones.

Simplifications: one shared budget `max_new_tokens` for all rows; prompts are left-padded rather
than packed (padding costs only prefill work, once per distinct prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .errors import InputError
from .kv_cache import KVCache
from .turns import Turns
from .model import Qwen2
from .streams import Streams


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the logits; rollout, evaluation and the loss share one."""

    temperature: float = 1.0  # logits / temperature; 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus: keep the smallest top set with probability >= top_p (1 = off)
    top_k: int = 0  # keep the k most likely tokens (0 = off)

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise InputError(f"bad sampling parameters {self}: need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


GREEDY = SamplingParams(temperature=0.0)


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # completion tokens of each row, the stop token included when hit
    finished: list[bool]  # True when the row hit a stop token within the budget
    logprobs: list[list[float]] | None = field(default=None)  # log p(token) under logits / temperature
    entropies: list[list[float]] | None = field(default=None)  # entropy of softmax(logits / temperature), nats
    action_mask: list[list[int]] | None = field(default=None)  # with turns: 1 on sampled tokens, 0 on pushed-in ones


# --- sampling: pure functions on a (B, V) logits tensor ----------------------------------------

def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (k <= 0: no-op)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of top tokens whose probability sums to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # Drop a token when the tokens ranked above it already reach p (the top token always stays).
    drop_sorted = probs.cumsum(-1) - probs >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_from_probs(probs: Tensor, generator: torch.Generator | None = None, u: Tensor | None = None) -> Tensor:
    """One draw per row (B,) from probabilities (B, V) by inverting the CDF. Overwrites `probs`.

    Draw u uniformly in (0, total] and take the first token whose cumulative probability reaches u:
    token i wins when cdf[i-1] < u <= cdf[i], an interval of width p_i, so a zero-probability
    (filtered) token can never be picked. One random number per row and no host sync; on a CPU this
    is ~5x cheaper than drawing V exponentials (argmax(p_i / E_i)) or calling torch.multinomial.
    `u` (B, 1) in (0, 1] gives the draws (Streams.uniforms), else they come from `generator`.
    """
    cdf = probs.cumsum_(-1)  # in place: no second (B, V) buffer
    if u is None:
        u = 1.0 - torch.rand((probs.shape[0], 1), generator=generator, device=probs.device)  # in (0, 1]
    # The clamp only matters for a row of NaN probabilities (a diverged model): its draw is then some
    # valid token instead of an index past the vocabulary; the trainer refuses the step's update.
    return torch.searchsorted(cdf, u * cdf[:, -1:])[:, 0].clamp_(max=probs.shape[-1] - 1)


def sample_next(logits: Tensor, sampling: SamplingParams, generator: torch.Generator | None = None,
                u: Tensor | None = None) -> Tensor:
    """One token id per row (B,) from logits (B, V). temperature 0 = argmax. Leaves `logits` as is.
    The draws come from `u` (B, 1), else from `generator` (sample_from_probs)."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()  # a no-op for fp32 logits; softmax below makes the one copy we need
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    probs = top_p_filter(top_k_filter(logits, sampling.top_k), sampling.top_p).softmax(-1)
    return sample_from_probs(probs, generator, u)


def token_logprob_and_entropy(logits: Tensor, tokens: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """log p(token) and the entropy of softmax(logits / temperature), each (B,): the distribution the
    trainer scores (top-k/top-p do not change it; temperature 0 scores at 1)."""
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    logp = scaled.log_softmax(-1)
    return logp.gather(-1, tokens[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def choose_next(logits: Tensor, sampling: SamplingParams, generator: torch.Generator | None = None,
                scored: bool = False, u: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One decode step's choice for every row: the token (B,), and with `scored` its log-prob and
    the distribution's entropy (B,) each."""
    tok = sample_next(logits, sampling, generator, u)
    if not scored:
        return tok, None, None
    return tok, *token_logprob_and_entropy(logits, tok, sampling.temperature)


def pad_batch(prompts: Sequence[Sequence[int]], pad_id: int, completions: Sequence[Sequence[int]] | None = None, *,
              device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Token lists -> ids and attention mask (B, P + C): [left-padded prompt | completion | right padding].

    P and C are the longest prompt and completion. Left-padding the prompts lines up the first
    completion token of every row in column P; without completions this is the sampler's prefill.
    """
    completions = completions if completions is not None else [[] for _ in prompts]
    P, C = max(len(p) for p in prompts), max(len(c) for c in completions)
    ids = torch.full((len(prompts), P + C), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P + C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P + len(c)] = torch.tensor([*p, *c], dtype=torch.long)
        mask[i, P - len(p):P + len(c)] = 1
    return ids.to(device), mask.to(device)


# --- the decode loop: prefill, decode one token, generate ------------------------------------------

def prefill_distinct(model: Qwen2, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     pad_token_id: int) -> tuple[KVCache, Tensor, Tensor]:
    """Each distinct prompt once, in one left-padded batch: its cache (U rows, room for
    max_new_tokens more), the logits (U, V) of its first new token, and the distinct prompt of each
    row (N,)."""
    device = model.lm_head.weight.device
    distinct: dict[tuple[int, ...], int] = {}
    row_to_prompt = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts], device=device)
    ids, mask = pad_batch(list(distinct), pad_token_id, device=device)
    cache = model.new_cache(len(distinct), ids.shape[1] + max_new_tokens)
    logits = model(ids, cache.append(mask), logits_to_keep=1)[:, -1]  # (U, V)
    return cache, logits, row_to_prompt


def prefill(model: Qwen2, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_token_id: int) -> tuple[KVCache, Tensor]:
    """Each distinct prompt once, in one left-padded batch; its cache is then fanned out to the rows
    that share it (a GRPO group's G samples). Returns the cache (N rows, room for max_new_tokens
    more) and the logits (N, V) of every row's first new token."""
    cache, logits, row_to_prompt = prefill_distinct(model, prompts, max_new_tokens, pad_token_id)
    cache.select(row_to_prompt)
    return cache, logits[row_to_prompt]


def decode_one_token(model: Qwen2, cache: KVCache, tok: Tensor) -> Tensor:
    """Logits (B, V) of the token after `tok` (B,), one per row of the cache, which grows by one."""
    return model(tok[:, None], cache.append(), logits_to_keep=1)[:, -1]


class EagerDecoder:
    """The reference decode loop's state: the growing cache of the live rows."""

    def __init__(self, model: Qwen2, cache: KVCache):
        self.model, self.cache = model, cache

    def step(self, tok: Tensor, length: int) -> Tensor:
        return decode_one_token(self.model, self.cache, tok)

    def keep(self, rows: Tensor) -> None:
        self.cache.select(rows)


@torch.no_grad()
def generate(model: Qwen2, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             sampling: SamplingParams = SamplingParams(), *, stop_token_ids: Sequence[int] = (),
             generator: torch.Generator | None = None, return_logprobs: bool = False, return_entropies: bool = False,
             pad_token_id: int = 0, compact_every: int = 8, progress: bool = False, compile: bool = False,
             streams: Streams | None = None, on_stop: Callable[[int, list[int]], list[int] | None] | None = None,
             room: int = 0, logits_hook: Callable[[Tensor, Tensor, int], Tensor] | None = None) -> GenerationOutput:
    """Sample a completion for every prompt (token-id lists; repeat a prompt G times for G samples).

    `streams` (one random stream per row, Streams) replaces `generator` for the draws, so that a
    row's sample does not depend on the batch it is in. `compile=True` decodes with the static-shape
    step of static_decode.py, compiled once per process (CUDA graphs on a GPU), in a static cache
    that the process keeps for the next call; the tokens are those of the eager loop (see that
    module for the last bits and the memory it keeps).
    `on_stop(row, turn)` makes turns (turns.py, for tool calls): when a row stops it may return tokens
    to push into the row, which then decodes on; `room` is the cache space (and the positions) kept
    for them. The output then has each row's `action_mask` (1 on sampled tokens). `compile` is not
    used with `on_stop`.
    `logits_hook(logits, rows, step)`, if given, may rewrite each step's logits (B, V) before
    sampling; `rows` (B,) holds the output row of each batch row (the batch shrinks as rows finish)
    and `step` is the index of the token being chosen. Logprobs are then those of the rewritten
    logits. Benchmarks use it to end rows at set lengths; constrained decoding could too.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    device = model.lm_head.weight.device
    N = len(prompts)
    longest, limit = max(len(p) for p in prompts), model.config.max_position_embeddings
    if longest + max_new_tokens + room > limit:
        extra = f" + {room} for pushed turns" if room else ""
        raise InputError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens}{extra} exceeds the model's "
                         f"{limit} positions (max_position_embeddings): generate fewer tokens or shorten the prompt")

    # 1. Prefill each distinct prompt once, then fan its cache out to the rows that share it (the
    #    compiled decoder fans it out into its static cache, which the process keeps).
    turns = Turns(on_stop, N) if on_stop is not None else None
    if compile and turns is None:
        from .static_decode import CompiledDecoder

        cache, logits, row_to_prompt = prefill_distinct(model, prompts, 0, pad_token_id)
        prompt_len = cache.length
        decoder = CompiledDecoder(model, cache, row_to_prompt, prompt_len + max_new_tokens + room,
                                  prompt_len + compact_every)
        logits = logits[row_to_prompt]
    else:
        cache, logits = prefill(model, prompts, max_new_tokens + room, pad_token_id)
        prompt_len = cache.length
        decoder = EagerDecoder(model, cache)
    del cache  # the decoder owns it now (the compiled one has copied it: free the original)

    # Output buffers live on the device and are read back once at the end.
    out = torch.full((N, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    # Per-token log-probs and entropies, only when asked for: one log-softmax over the vocabulary per step.
    scored = return_logprobs or return_entropies
    out_lp = torch.zeros((N, max_new_tokens), dtype=torch.float32, device=device) if scored else None
    out_ent = torch.zeros((N, max_new_tokens), dtype=torch.float32, device=device) if scored else None
    stops = torch.tensor(list(stop_token_ids), dtype=torch.long, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)  # indexed by output row
    live = torch.arange(N, device=device)  # output row of each batch row still decoding
    steps = range(max_new_tokens)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="generate", leave=False)

    for t in steps:
        # 2. Sample this step's token for every live row.
        if logits_hook is not None:
            logits = logits_hook(logits, live, t)
        u = streams.uniforms(live, t) if streams is not None else None
        tok, lp, ent = choose_next(logits, sampling, generator, scored, u)  # (B,) each
        out[live, t] = tok
        if scored:
            out_lp[live, t], out_ent[live, t] = lp, ent
        stopped = torch.isin(tok, stops)
        # 3. With turns, rows that have just stopped may go on (a tool's answer to push in): looked
        #    at every token (one host read), so that no model token is spent after a stop and a call
        #    in the last column is still seen (that row then ends unfinished: no budget left to use it).
        just = live[stopped & ~done[live]] if turns is not None else None
        done[live] |= stopped
        pushed = turns.resume(just, done, t, out, out_lp, out_ent) if turns is not None else {}
        if t == max_new_tokens - 1:
            break
        # 4. Every few steps, drop finished rows (one host sync); between compactions finished rows
        #    keep decoding harmlessly: whatever follows their stop token is cut off below.
        if (t + 1) % compact_every == 0:
            keep = (~done[live]).nonzero()[:, 0]
            if len(keep) == 0:
                break
            if len(keep) < len(live):
                decoder.keep(keep)
                live, tok = live[keep], tok[keep]
        # 5. The next token's logits; the cache then holds prompt_len + t + 1 positions (more with turns).
        logits = turns.push(model, decoder.cache, live, tok, pushed) if pushed else decoder.step(tok, prompt_len + t + 1)

    # Read everything back once, then cut each row after its first stop token (of its last turn).
    rows, finished = out.tolist(), done.tolist()
    lp_rows, ent_rows = (out_lp.tolist(), out_ent.tolist()) if scored else (None, None)
    stop_set = set(stop_token_ids)
    tokens, logprobs, entropies, actions = [], [], [], []
    for i in range(N):
        first = turns.start[i] if turns is not None else 0
        end = next((j + 1 for j in range(first, max_new_tokens) if rows[i][j] in stop_set), max_new_tokens) \
            if finished[i] else max_new_tokens
        lp, ent = (lp_rows[i], ent_rows[i]) if scored else (None, None)
        if turns is not None:
            toks, action, lps, ents = turns.completion(i, rows[i], end, lp, ent)
        else:
            toks, action, lps, ents = rows[i][:end], None, lp[:end] if scored else [], ent[:end] if scored else []
        tokens.append(toks)
        actions.append(action)
        logprobs.append(lps)
        entropies.append(ents)
    return GenerationOutput(tokens, finished, logprobs if return_logprobs else None,
                            entropies if return_entropies else None, actions if turns is not None else None)
