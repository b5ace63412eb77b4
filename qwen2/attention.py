"""The attention kernel call every layout shares: PyTorch's scaled_dot_product_attention (SDPA)
with grouped-query heads.

Qwen2 has fewer key/value heads than query heads (grouped-query attention: 14 query heads share 2
key/value heads in the 0.5B model). SDPA's `enable_gqa` lets each group of query heads read its
key/value head without a copy. On CUDA, though, its fused kernels take either grouped heads or an
explicit mask, not both: given both, SDPA quietly falls back to its math kernel, which holds every
query x key score of every head in fp32 (transformers repeats the heads for the same reason). So on
CUDA, when many queries come with a mask (padded or packed training rows, prefill), the key/value
heads are first repeated to all query heads, a small copy, and the memory-efficient kernel takes the
mask. Decoding (one query per row) needs no copy at all: the query heads of one key/value head share
its keys and their mask row, so they are laid out as that head's query axis, and the fused kernel
reads the cache once per key/value head (the math kernel would repeat the whole cache for every
query head at every step). The CPU kernel takes grouped heads and a mask, so there nothing changes.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention as sdpa  # one name, so a tracer can stand in (grpo/plan/trace.py)

REPEAT_HEADS_ON = ("cuda",)  # devices whose fused kernels need every head to take a mask


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Outputs (B, H, T, D) of queries (B, H, T, D) over keys/values (B, Hkv, S, D). `mask`
    (B, 1, T, S), True = may attend; None = plain causal attention (T == S)."""
    group = q.shape[1] // k.shape[1]  # query heads per key/value head: head h reads h // group
    if group > 1 and mask is not None and q.device.type in REPEAT_HEADS_ON:
        B, H, T, D = q.shape
        if T == 1:  # decoding: a group's queries share their head's keys and one mask row, so they
            # become that head's query axis: (B, Hkv, group, D) over (B, Hkv, S, D), nothing copied
            y = sdpa(q.reshape(B, k.shape[1], group, D), k, v, attn_mask=mask)
            return y.reshape(B, H, 1, D)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return sdpa(q, k, v, attn_mask=mask)
    return sdpa(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
