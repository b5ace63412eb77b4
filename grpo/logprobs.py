"""Per-token log-probabilities of a batch of sequences, without materialising full logits.

The policy loss needs log pi(token_t | tokens_<t) for every completion token. The
naive way is ``log_softmax(model(input_ids).float())`` and then a gather -- but for
Qwen2.5 the vocabulary is ~152k, so a micro-batch of 8 x 1024 tokens has
8 * 1024 * 152k * 4 bytes ~ 5 GB of fp32 logits, plus the same again for the
log-softmax saved for backward. That dwarfs the 0.5B model itself.

What we do instead:
  1. run the transformer body ``model.model`` once -> hidden states (B, T, C);
  2. walk over the target positions in chunks of ``chunk_size``; for each chunk
     compute ``lm_head(h).float() / temperature``, log-softmax, and gather the
     log-prob of the actual next token -> (B, chunk);
  3. when autograd is on, wrap step 2 in ``torch.utils.checkpoint``: the chunk's
     (B, chunk, V) logits are freed right after the forward and recomputed during
     backward. Peak memory is one chunk of logits, not the whole sequence.

The shift. Position t's hidden state predicts token t+1. Targets are
``input_ids[:, targets_start:]`` (the completion, with its right padding), so their
log-probs come from hidden positions ``targets_start - 1 .. T - 2``. The last
position (T - 1) predicts a token we never have, so it is never used.

Temperature. Divide the logits by the sampling temperature: the PPO ratio compares
the policy against the distribution the sampler actually drew from, and that
distribution was softmax(logits / temperature). Using T=1 log-probs for samples drawn
at T=0.7 would bias the ratio.

Simplification: ``lm_head`` runs in the model's dtype (bf16 on GPU) and only its
output is upcast to fp32; an fp32 copy of the (V, C) weight would be large.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(
    lm_head: nn.Module, h: Tensor, targets: Tensor, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``targets`` (and optionally entropy) for one chunk of hidden states.

    h: (B, L, C) hidden states, targets: (B, L) token ids -> (B, L) fp32 log-probs.
    """
    logits = lm_head(h).float() / temperature  # (B, L, V) fp32
    logp_all = F.log_softmax(logits, dim=-1)  # (B, L, V)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    entropy = None
    if with_entropy:
        # Logging only: no graph. Being last and grad-free, the checkpoint's
        # recomputation in backward stops before reaching it.
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, L)
    return logp, entropy


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    targets_start: int,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of ``input_ids[:, targets_start:]`` under ``model`` at ``temperature``.

    Args:
        model: exposes ``model.model(input_ids, attention_mask) -> (B, T, C)`` final-normed
            hidden states and ``model.lm_head: (C -> V)``.
        input_ids: (B, T) ``[left-padded prompt | completion | right padding]``.
        attention_mask: (B, T), 1 for real tokens (or None: all real).
        targets_start: index of the first completion token (the padded prompt length); >= 1.
        temperature: the sampling temperature (> 0).
        chunk_size: target positions per lm_head/log-softmax chunk.
        with_entropy: also return the per-token entropy of the tempered distribution
            (detached; for logging).

    Returns:
        logp: (B, T - targets_start) fp32; entries at right-padding positions are
            meaningless and must be masked by the caller.
        entropy: (B, T - targets_start) fp32, only if ``with_entropy``.
    """
    B, T = input_ids.shape
    if not 1 <= targets_start < T:
        raise ValueError(f"targets_start must be in [1, T={T}), got {targets_start}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    hidden = model.model(input_ids, attention_mask=attention_mask)  # (B, T, C)
    # Hidden position t predicts token t + 1: drop the last position, start one early.
    hidden = hidden[:, targets_start - 1 : T - 1]  # (B, N, C), N = T - targets_start
    targets = input_ids[:, targets_start:]  # (B, N)

    use_checkpoint = torch.is_grad_enabled()
    logps, entropies = [], []
    for s in range(0, hidden.shape[1], chunk_size):
        h, tgt = hidden[:, s : s + chunk_size], targets[:, s : s + chunk_size]
        if use_checkpoint:
            # Saves only h (B, L, C) for backward; the (B, L, V) logits are recomputed.
            lp, ent = checkpoint(
                _chunk_logprobs, model.lm_head, h, tgt, temperature, with_entropy,
                use_reentrant=False,
            )
        else:
            lp, ent = _chunk_logprobs(model.lm_head, h, tgt, temperature, with_entropy)
        logps.append(lp)
        entropies.append(ent)

    logp = torch.cat(logps, dim=1)  # (B, N)
    if with_entropy:
        return logp, torch.cat(entropies, dim=1)
    return logp
