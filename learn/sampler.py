"""Sampling from Qwen2.5 with a KV cache: prefill, one-token decode, temperature / top-k / top-p.

    python learn/sampler.py                   # a tiny random model: the cache changes nothing, a seed repeats
    python learn/sampler.py CHECKPOINT_DIR "Once upon a time"     # a real checkpoint and its tokenizer

A language model gives the next token's logits; text comes from drawing a token, appending it and
asking again. Re-running the model over the whole text for every token would cost T forward
passes of growing length, so the keys and values every layer computed are kept (the KV cache):
    prefill    the prompts go through the model once, filling the cache;
    decode     then one token at a time: the new token's query attends to all cached keys.
GRPO samples G answers to each prompt: the prompt is prefilled once and its cache copied G times.
Every random draw comes from an explicit torch.Generator, so a seed repeats a run exactly.

What this file leaves out, and where the trainer does it (qwen2/sampler.py unless named):
  * a preallocated cache that finished rows leave every few steps (qwen2/kv_cache.py); here the
    cache grows by torch.cat and finished rows go on decoding until every row is done
  * one random stream per episode, so a sample does not depend on its batch (`Streams`), and an
    inverse-CDF draw instead of torch.multinomial (same distribution, other random numbers)
  * the log-probs and entropies of the sampled tokens, tool calls pushed into a row (qwen2/turns.py),
    a compiled static-shape decode step for GPUs (qwen2/static_decode.py)
  * chat templates: qwen2/tokenizer.py renders the messages into the prompt's tokens
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

from model import Config, Qwen2, load, random_model


class KVCache:
    """Keys and values of every layer, (B, Hkv, S, D) each, growing by the T new tokens of each pass."""

    def __init__(self, num_layers: int):
        self.k: list[Tensor | None] = [None] * num_layers
        self.v: list[Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:  # S: how many positions are cached (read by Qwen2.forward before layer 0)
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this pass's k, v (B, Hkv, T, D) to the layer's; return all of them (B, Hkv, S + T, D)."""
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def repeat(self, G: int) -> None:
        """Row b becomes rows b*G .. b*G + G-1: G copies of each prompt's cache."""
        self.k = [k.repeat_interleave(G, dim=0) for k in self.k]
        self.v = [v.repeat_interleave(G, dim=0) for v in self.v]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token lists of different lengths -> ids and attention mask (B, P), right-aligned:
    [pad pad p1 p2 p3] / [0 0 1 1 1]. Every row's next token then goes in the same column."""
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def prefill(model: Qwen2, prompts: list[list[int]], pad_id: int) -> tuple[KVCache, Tensor, Tensor]:
    """One forward over the left-padded prompts: the filled cache, the attention mask so far (B, P),
    and each row's next-token logits (B, V)."""
    ids, mask = left_pad(prompts, pad_id)
    cache = KVCache(model.cfg.num_hidden_layers)
    logits = model(ids, mask, cache)[:, -1]  # the last column predicts the first new token
    return cache, mask, logits


def decode_one(model: Qwen2, cache: KVCache, mask: Tensor, tok: Tensor) -> tuple[Tensor, Tensor]:
    """Feed one token per row (B,): the next logits (B, V) and the mask, one real column longer."""
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, S + 1): the new token is real
    return model(tok[:, None], mask, cache)[:, -1], mask


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set unlikely tokens' logits to -inf: all but the top_k largest (0 = off), then all outside the
    nucleus, the smallest set of top tokens whose probabilities add up to top_p (1 = off)."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the best one always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))  # back to vocabulary order
    return logits


def next_token(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
    """One token per row (B,) drawn from softmax(logits / temperature); temperature 0 = greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    # p_i = exp(z_i / T) / sum_j exp(z_j / T): T < 1 sharpens the distribution, T > 1 flattens it.
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: Qwen2, prompts: list[list[int]], max_new_tokens: int, *, G: int = 1, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids: tuple[int, ...] = (), pad_id: int = 0,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """G completions of each prompt (token lists), grouped: prompt 0's G first, then prompt 1's...
    A completion ends with its stop token when it drew one, else after max_new_tokens tokens."""
    cache, mask, logits = prefill(model, prompts, pad_id)  # each prompt once ...
    cache.repeat(G)  # ... and its keys/values copied to its G samples
    mask, logits = mask.repeat_interleave(G, dim=0), logits.repeat_interleave(G, dim=0)
    stops = torch.tensor(stop_ids, dtype=torch.long)
    done = torch.zeros(len(prompts) * G, dtype=torch.bool)
    out = []
    for t in range(max_new_tokens):
        tok = next_token(logits, temperature, top_k, top_p, generator)  # (N*G,)
        out.append(tok)
        done |= torch.isin(tok, stops)  # finished rows decode on; their extra tokens are cut below
        if done.all() or t == max_new_tokens - 1:
            break
        logits, mask = decode_one(model, cache, mask, tok)
    rows = torch.stack(out, dim=1).tolist()  # (N*G, t)
    cut = [next((j + 1 for j, x in enumerate(row) if x in stop_ids), len(row)) for row in rows]
    return [row[:n] for row, n in zip(rows, cut)]


def main(argv: list[str]) -> None:
    if argv:  # a real checkpoint: continue a text, G = 3 ways
        from tokenizers import Tokenizer

        model = load(argv[0], torch.float32)
        tok = Tokenizer.from_file(str(Path(argv[0]) / "tokenizer.json"))
        prompt = tok.encode(argv[1] if len(argv) > 1 else "Once upon a time").ids
        stops = tuple(i for i in (tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")) if i is not None)
        outs = generate(model, [prompt], 30, G=3, temperature=0.7, top_p=0.9, stop_ids=stops,
                        generator=torch.Generator().manual_seed(0))
        for o in outs:
            print(repr(tok.decode(prompt + o)))
        return
    cfg = Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)
    model = random_model(cfg, std=0.2).eval()
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    greedy = generate(model, prompts, 8, temperature=0)
    # The same greedy tokens without the cache: the whole sequence through the model for every token.
    plain = []
    for p in prompts:
        seq = list(p)
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        plain.append(seq[len(p):])
    print("greedy with the KV cache:   ", greedy)
    print("greedy, no cache, recomputed:", plain, "(same)" if plain == greedy else "(DIFFERENT!)")
    draws = [generate(model, prompts, 8, G=3, temperature=1.0, top_k=20, top_p=0.9, stop_ids=(0,),
                      generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    print("G=3 samples of each prompt, seed 1:", draws[0])
    print("seed 1 again gives the same samples:", draws[1] == draws[0], "| seed 2 differs:", draws[2] != draws[0])


if __name__ == "__main__":
    with torch.no_grad():
        main(sys.argv[1:])
