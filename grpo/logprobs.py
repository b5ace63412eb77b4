"""Per-token log-probabilities of completion tokens, without materialising full logits.

The policy loss needs log pi(token_t | tokens_<t) for every completion token. The
naive way is ``log_softmax(model(input_ids).float())`` and then a gather -- but for
Qwen2.5 the vocabulary is ~152k, so a micro-batch of 8 x 1024 tokens has
8 * 1024 * 152k * 4 bytes ~ 5 GB of fp32 logits, plus the same again for the
log-softmax saved for backward. That dwarfs the 0.5B model itself.

What we do instead:
  1. run the transformer body once -> hidden states (R, T, C) (``model.hidden_states``; a sharded
     model keeps its embedding and LM head gathered from there until backward, grpo/machinery/distributed.py);
  2. pick, for every completion token, the hidden state that predicts it -> (n, C):
     position t's hidden state predicts token t + 1, so the predictor of a token is
     the token before it (for the first token of a completion: the prompt's last one);
  3. walk over those n tokens in chunks of ``chunk_tokens``; for each chunk compute
     ``lm_head(h).float() / temperature``, log-softmax, and the log-prob of the actual
     token (``TargetLogprob``, with its own short backward) -> (chunk,);
  4. when autograd is on, wrap step 3 in ``torch.utils.checkpoint``: the chunk's
     (chunk, V) logits are freed right after the forward and recomputed during
     backward. Peak memory is one chunk of logits, not the whole micro-batch.
In the trainer (``micro_batch_logprobs``) only real completion tokens reach the LM
head: no logits for the prompt or for padding (``token_logprobs``, for plain padded
rows, also runs their right padding through it).

Temperature. Divide the logits by the sampling temperature: the PPO ratio compares
the policy against the distribution the sampler actually drew from, and that
distribution was softmax(logits / temperature). Using T=1 log-probs for samples drawn
at T=0.7 would bias the ratio.

Two layouts feed step 1 (grpo/batch.py builds them, qwen2/layout.py defines them): padded
rows [left-padded prompt | completion] with an attention mask, one row per episode, and
shared-prefix rows [prompt | c_1 | ... | c_k], one row per group (the prompt computed once
for its G completions). Step 2 on makes no difference
between them, so both give the same numbers.

Simplification: ``lm_head`` runs in the model's dtype (bf16 on GPU) and only its
output is upcast to fp32; an fp32 copy of the (V, C) weight would be large.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from qwen2.layout import Padded

if TYPE_CHECKING:
    from .batch import MicroBatch


class TargetLogprob(torch.autograd.Function):
    """log p(target) = log_softmax(logits)[target], per row of (L, V) fp32 logits, with a short backward.

    d log p(target) / d logits = onehot(target) - softmax(logits): the backward writes that in one
    (L, V) pass, where autograd's would scatter the upstream gradient into a zero (L, V) tensor
    and then run log-softmax's backward on it. Only the logits are kept for backward.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        ctx.save_for_backward(logits, targets)
        return F.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, targets = ctx.saved_tensors
        grad_logits = torch.softmax(logits, dim=-1).mul_(-grad[:, None])  # -grad * softmax ...
        grad_logits.scatter_add_(-1, targets[:, None], grad[:, None])  # ... + grad at the target
        return grad_logits, None


def _chunk_logprobs(
    lm_head: nn.Module, h: Tensor, targets: Tensor, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``targets`` (and optionally entropy) for one chunk of hidden states.

    h: (L, C) hidden states, targets: (L,) token ids -> (L,) fp32 log-probs.
    """
    logits = lm_head(h).float()  # (L, V) fp32 (no copy when the model is fp32)
    if temperature != 1.0:
        logits = logits / temperature
    logp = TargetLogprob.apply(logits, targets)  # (L,)
    entropy = None
    if with_entropy:
        # Logging only: no graph. Being last and grad-free, the checkpoint's
        # recomputation in backward stops before reaching it.
        with torch.no_grad():
            logp_all = F.log_softmax(logits, dim=-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # (L,)
    return logp, entropy


def logprobs_in_chunks(lm_head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float = 1.0,
                       chunk_tokens: int = 1024, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs (n,) of ``targets`` (n,) given their predicting hidden states ``hidden`` (n, C),
    ``chunk_tokens`` at a time (steps 3-4 above); and their entropies (n,) if ``with_entropy``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    use_checkpoint = torch.is_grad_enabled()
    logps, entropies = [], []
    for s in range(0, hidden.shape[0], chunk_tokens):
        h, tgt = hidden[s : s + chunk_tokens], targets[s : s + chunk_tokens]
        if use_checkpoint:
            # Saves only h (chunk, C) for backward; the (chunk, V) logits are recomputed.
            lp, ent = checkpoint(_chunk_logprobs, lm_head, h, tgt, temperature, with_entropy, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(lm_head, h, tgt, temperature, with_entropy)
        logps.append(lp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies) if with_entropy else None


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    targets_start: int,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of ``input_ids[:, targets_start:]`` under ``model`` at ``temperature``, for padded rows.

    Args:
        model: ``model.hidden_states(input_ids, layout)`` gives the final-normed hidden states
            (B, T, C), and ``model.lm_head`` maps C -> V (qwen2.Qwen2).
        input_ids: (B, T) ``[left-padded prompt | completion | right padding]``.
        attention_mask: (B, T), 1 for real tokens (or None: every token real).
        targets_start: index of the first completion token (the padded prompt length); >= 1.
        temperature: the sampling temperature (> 0).
        chunk_tokens: tokens per lm_head/log-softmax chunk.
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
    targets = input_ids[:, targets_start:]  # (B, N)
    hidden = model.hidden_states(input_ids, None if attention_mask is None else Padded.of(attention_mask))
    # Hidden position t predicts token t + 1: drop the last position, start one early.
    hidden = hidden[:, targets_start - 1 : T - 1]  # (B, N, C), N = T - targets_start
    logp, entropy = logprobs_in_chunks(model.lm_head, hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1),
                                       temperature, chunk_tokens, with_entropy)
    if with_entropy:
        return logp.view(targets.shape), entropy.view(targets.shape)
    return logp.view(targets.shape)


def micro_batch_logprobs(model: nn.Module, micro: MicroBatch, temperature: float = 1.0, chunk_tokens: int = 1024,
                         with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs (e, width) of the completion tokens of a micro-batch's e episodes, in the same
    layout whichever way the micro-batch was packed (zeros past each completion's end); and
    their entropies (e, width) if ``with_entropy``."""
    targets = micro.input_ids[micro.token_row, micro.token_col]  # (n,)
    hidden = model.hidden_states(micro.input_ids, micro.layout)  # (R, T, C)
    logp, entropy = logprobs_in_chunks(model.lm_head, hidden[micro.token_row, micro.predictor_col], targets,
                                       temperature, chunk_tokens, with_entropy)
    where = (micro.token_episode, micro.token_index)  # (n,) each: the token's place in (e, width)
    out = logp.new_zeros(micro.loss_mask.shape).index_put(where, logp)
    return out, entropy.new_zeros(micro.loss_mask.shape).index_put(where, entropy) if with_entropy else None
