"""NF4 (QLoRA, Dettmers et al. 2023): frozen linear weights in 4 bits, dequantised just in time.

A LoRA run trains only the adapters; the base weights are read, never written. NF4 stores each of
them as a 4-bit index into a code book of 16 values, one scale per block of 64 weights, and turns
them back into full-precision numbers inside each forward (and backward) pass, one layer at a time.

    blocks:  the weight, flattened row by row, cut into blocks of `block_size` (64) numbers
    scale:   s_b = max |w| over block b                                  (absmax, so w / s_b is in [-1, 1])
    code:    c_i = argmin_k | w_i / s_b - NF4[k] |                         (the nearest of the 16 values)
    value:   w_i ~ NF4[c_i] * s_b

The code book: the 16 quantiles of a standard normal, scaled to [-1, 1], with an exact 0 (the
paper's "NormalFloat"): neural-network weights are roughly normal, so each of the 16 values is used
about equally often. Two codes share a byte (the first in the high nibble), so a weight costs 4 bits.

Double quantisation: the scales themselves (one number per 64 weights: 0.5 bit a weight in fp32)
are stored in 8 bits: their mean m is subtracted, then blocks of `scaler_block_size` (256) of them
get an absmax factor of their own, f_j = 256 / (2 max |s_b - m|), and s_b ~ round((s_b - m) f_j) / f_j + m
(the codes are int8: a centred scale of +max maps to 128 and is clamped to 127, torchao's rounding,
kept). A weight then costs 4 + 8/64 bits and a factor per 16384 weights, 4.126 bits in bf16; 14B's
13.2B projection weights take 6.8 GB instead of 26.4 GB in bf16.

Bit for bit torchao's NF4Tensor (`to_nf4`, block_size 64, scaler_block_size 256; tests/test_nf4.py):
the same 16 values (torchao's, rounded to 4 decimals, in the weight's dtype; bitsandbytes' carry more
digits, a difference of < 5e-5 of a block's scale, far below the 4-bit steps), the codes from the
exact absmax (the double-quantised scales serve only the dequantisation), the same arithmetic in the
weight's dtype, the same byte layout. Departures, none of which changes a result torchao produces:
the number of scales need not be a multiple of 256 (the last scaler block is padded with zeros,
which leave its absmax alone), and an all-zero block or scaler block gets factor 1 instead of a
division by zero.

`NF4Linear` replaces a frozen nn.Linear under the same name (`q_proj`, ...), so LoRA's hooks and
PEFT's adapter names are unchanged (its state_dict holds the codes, not `weight`: saving a 4-bit
model as a Hugging Face model is refused, weights.save_model). Autograd keeps no dequantised weight
for backward: `_LinearNF4` dequantises again to pass the gradient to the input, as torchao's
linear_nf4 and bitsandbytes do; otherwise every layer's full weight would be held until backward.

Simplifications: weights whose size is a multiple of 64 (every Qwen2.5 and Qwen3 projection); the
quantisation runs in chunks on the weight's device in plain PyTorch (no fused kernel), and so does
the dequantisation (a 256 x 2 table lookup by byte and one multiply; torch.compile fuses it on the
compiled decode path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import BLOCK_LINEARS

# torchao's NF4 code book (nf4tensor.py): the QLoRA values rounded to 4 decimals.
CODE_BOOK = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
             0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0)
BLOCK_SIZE = 64  # weights per absmax scale
SCALER_BLOCK_SIZE = 256  # scales per int8 factor of the double quantisation
CHUNK = 2**22  # weights given their nearest code at once


def code_book(dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    return torch.tensor(CODE_BOOK, dtype=dtype, device=device)


def block_absmax(flat: Tensor, block_size: int) -> Tensor:
    """max |x| over each block of `block_size` consecutive numbers of the 1-D `flat`."""
    return flat.view(-1, block_size).abs().max(dim=1).values


def quantize_scales(scales: Tensor, scaler_block_size: int = SCALER_BLOCK_SIZE) -> tuple[Tensor, Tensor, Tensor]:
    """Double quantisation: (int8 codes, one factor per scaler block, the mean), so that
    scales ~ codes / factor + mean (dequantize_scales)."""
    mean = scales.mean()
    centred = scales - mean
    pad = -centred.numel() % scaler_block_size  # zeros: no effect on the absmax of the last scaler block
    blocks = F.pad(centred, (0, pad)).view(-1, scaler_block_size)
    absmax = blocks.abs().max(dim=1, keepdim=True).values
    factor = torch.where(absmax > 0, 256 / (2 * absmax), torch.ones_like(absmax))  # maps [-absmax, absmax] to [-128, 128]
    codes = (blocks * factor).round().clamp(-128, 127).flatten()[: scales.numel()].to(torch.int8)
    return codes, factor.flatten(), mean


def dequantize_scales(codes: Tensor, factor: Tensor, mean: Tensor, scaler_block_size: int = SCALER_BLOCK_SIZE) -> Tensor:
    """s_b = code_b / f_j + m, in the factor's dtype (the weight's)."""
    per_scale = factor.repeat_interleave(scaler_block_size)[: codes.numel()]
    return (codes / per_scale).to(factor.dtype) + mean


def nearest_codes(x: Tensor, book: Tensor) -> Tensor:
    """The index (uint8) of the nearest code-book value to each number of the 1-D `x`, the first of
    two at equal distance: torchao's argmin_k |x - NF4[k]| (distances rounded in x's dtype), found
    from the two values around x alone. Rounding is monotone, so no farther value can come nearer,
    and the values are >= 0.08 apart, so none ties with the nearer of the two. In chunks, to
    bound the int64 search results; 2.5x faster on this CPU than the 16-wide argmin."""
    out = torch.empty(x.numel(), dtype=torch.uint8, device=x.device)
    for start in range(0, x.numel(), CHUNK):
        part = x[start:start + CHUNK]
        above = torch.searchsorted(book, part).clamp_(max=len(CODE_BOOK) - 1)  # the first value >= x (or the last)
        below = (above - 1).clamp_(min=0)
        nearer_above = (part - book[above]).abs() < (part - book[below]).abs()  # a tie goes to the lower index
        out[start:start + CHUNK] = torch.where(nearer_above, above, below).to(torch.uint8)
    return out


@torch.no_grad()
def quantize(weight: Tensor, block_size: int = BLOCK_SIZE,
             scaler_block_size: int = SCALER_BLOCK_SIZE) -> dict[str, Tensor]:
    """`weight` (any shape, numel a multiple of block_size, its dtype the arithmetic's) in NF4:
    codes (uint8, two per byte), scale_codes (int8, one per block), scale_factor (one per
    scaler block), scale_mean (0-d)."""
    if weight.numel() % block_size or weight.numel() % 2:
        raise ValueError(f"NF4 needs a weight whose size is a multiple of {block_size}, got {tuple(weight.shape)}")
    if weight.is_meta:  # shapes only (the memory trace, grpo/plan/trace.py): nothing to compute
        blocks, dtype = weight.numel() // block_size, weight.dtype
        return {"codes": torch.empty(weight.numel() // 2, dtype=torch.uint8, device="meta"),
                "scale_codes": torch.empty(blocks, dtype=torch.int8, device="meta"),
                "scale_factor": torch.empty(-(-blocks // scaler_block_size), dtype=dtype, device="meta"),
                "scale_mean": torch.empty((), dtype=dtype, device="meta")}
    flat = weight.detach().contiguous().flatten()
    absmax = block_absmax(flat, block_size)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block: 0 / 1 = code of 0.0
    scaled = (flat.view(-1, block_size) / safe[:, None]).flatten()  # in [-1, 1]
    idx = nearest_codes(scaled, code_book(weight.dtype, weight.device))
    scale_codes, scale_factor, scale_mean = quantize_scales(absmax, scaler_block_size)
    return {"codes": idx[0::2] << 4 | idx[1::2],  # [a, b, c, d] -> [ab, cd]
            "scale_codes": scale_codes, "scale_factor": scale_factor, "scale_mean": scale_mean}


def byte_table(book: Tensor) -> Tensor:
    """(256, 2): the two code-book values each byte stands for (high nibble first)."""
    byte = torch.arange(256, device=book.device)
    return torch.stack([book[byte >> 4], book[byte & 15]], dim=-1)


def dequantize(codes: Tensor, scale_codes: Tensor, scale_factor: Tensor, scale_mean: Tensor, shape: tuple[int, ...],
               block_size: int = BLOCK_SIZE, scaler_block_size: int = SCALER_BLOCK_SIZE,
               table: Tensor | None = None) -> Tensor:
    """The weight back: NF4[code] * s_b, in scale_factor's dtype (the weight's when quantised).
    `table`: byte_table of the code book, when the caller keeps one."""
    dtype = scale_factor.dtype
    table = byte_table(code_book(dtype, codes.device)) if table is None else table
    scales = dequantize_scales(scale_codes, scale_factor, scale_mean, scaler_block_size)  # (n_blocks,)
    # One gather per byte (an int32 index: half of int64's memory) gives both of its values.
    values = torch.index_select(table, 0, codes.to(torch.int32)).view(-1, block_size)
    return values.mul_(scales[:, None]).view(shape)


def storage_bytes(numel: int, dtype_bytes: int, block_size: int = BLOCK_SIZE,
                  scaler_block_size: int = SCALER_BLOCK_SIZE) -> int:
    """Bytes NF4 keeps for a weight of `numel` numbers: codes, scale codes, factors, mean."""
    blocks = numel // block_size
    return numel // 2 + blocks + -(-blocks // scaler_block_size) * dtype_bytes + dtype_bytes


class _LinearNF4(torch.autograd.Function):
    """y = x W^T with W dequantised in forward and again in backward: nothing of W's size is saved."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: NF4Linear) -> Tensor:
        ctx.layer = layer
        return x @ layer.dequantize(x.dtype).T

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad @ ctx.layer.dequantize(grad.dtype), None  # dL/dx = dL/dy W; W is frozen: no dL/dW


class NF4Linear(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4 (buffers: weight_codes, weight_scale_codes,
    weight_scale_factor, weight_scale_mean) and dequantised in each call; the bias stays as it was."""

    def __init__(self, in_features: int, out_features: int, bias: Tensor | None, q: dict[str, Tensor],
                 block_size: int = BLOCK_SIZE, scaler_block_size: int = SCALER_BLOCK_SIZE):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.scaler_block_size = block_size, scaler_block_size
        for name, t in q.items():
            self.register_buffer(f"weight_{name}", t)
        # The byte table, in the weight's dtype, where the codes are; not saved (it is the code book's).
        self.register_buffer("code_table", byte_table(code_book(q["scale_factor"].dtype, q["codes"].device)),
                             persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight: Tensor | None = None) -> NF4Linear:
        """The NF4 layer of `linear` (of `weight` instead of linear.weight, when given: a layer on the
        meta device being loaded)."""
        w = linear.weight if weight is None else weight
        return cls(linear.in_features, linear.out_features, linear.bias, quantize(w))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weight had, and comes back in."""
        return self.weight_scale_factor.dtype

    @property
    def device(self) -> torch.device:
        return self.weight_codes.device

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The full (out_features, in_features) weight, in `dtype` (default: its own)."""
        w = dequantize(self.weight_codes, self.weight_scale_codes, self.weight_scale_factor, self.weight_scale_mean,
                       (self.out_features, self.in_features), self.block_size, self.scaler_block_size,
                       self.code_table)
        return w if dtype in (None, w.dtype) else w.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            y = _LinearNF4.apply(x, self)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantize(x.dtype), self.bias)  # no autograd: nothing saved anyway

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nf4 block_size={self.block_size}, scaler_block_size={self.scaler_block_size}")


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, NF4Linear) for m in model.modules())


def quantizable(name: str, module: nn.Module) -> bool:
    """The frozen base linears NF4 stores: the seven projections of every block (not the LM head,
    which scores every token's log-prob; nor the embedding, a lookup, not a matmul)."""
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in BLOCK_LINEARS and ".layers." in f".{name}"


def quantize_model(model: nn.Module) -> nn.Module:
    """Replace every block projection of `model` by its NF4Linear, in place, one layer at a time
    (each bf16 weight is freed as soon as its codes exist). Returns the model."""
    for name, module in list(model.named_modules()):
        if quantizable(name, module):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, NF4Linear.from_linear(module))
    return model
