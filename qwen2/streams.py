"""Random streams, one per episode rather than one per batch: what makes a seeded run sample the same
tokens on one process or several, and whatever rows are still in the batch.

A sampled token needs one uniform draw. Drawn from one generator for the whole batch, row r's draw
at token t would depend on how many rows were drawn before it: on the batch order, on which rows
already finished, and on how the questions were split over processes. Instead each episode gets a
key, `stream_key(seed, step, question, sample)`, and its draw at token t is a fixed function of
(key, t): a counter-based generator (splitmix64's mixing, Steele et al. 2014), computed in int64
tensor ops on the device so no number crosses to the host per token.

Simplification: 24 random bits per draw (exact in fp32), enough for inverse-CDF sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser (Steele et al. 2014) on a Python int: a 64-bit bijection that scatters
    nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def stream_key(*numbers: int) -> int:
    """One 64-bit key from a tuple of numbers (e.g. seed, step, question, sample), as a signed int64."""
    key = 0
    for n in numbers:
        key = _mix64(key ^ (n & MASK64))
    return key - (1 << 64) if key >= 1 << 63 else key


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 tensors (torch's >> keeps the sign)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


@dataclass(frozen=True)
class Streams:
    """One random stream per output row, keyed by what the row *is* (stream_key(seed, step,
    question, sample) in training): row r's draw at token t is a function of (key_r, t) alone, so
    it does not depend on which batch row samples it, on how the batch is split over processes, or
    on when finished rows leave the batch. The same splitmix64 mixing as stream_key, in int64
    tensor ops (wrapping multiplication), on the device: no host round trip per token."""

    keys: Tensor  # (N,) int64, one per output row

    @classmethod
    def of(cls, keys: Sequence[int], device: torch.device | str) -> Streams:
        return cls(torch.tensor(list(keys), dtype=torch.long, device=device))

    def uniforms(self, rows: Tensor, t: int) -> Tensor:
        """(B, 1) draws in (0, 1] for the output rows `rows` at token t."""
        x = self.keys[rows] ^ stream_key(t)
        x = x + _signed(0x9E3779B97F4A7C15)
        x = (x ^ _shr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
        x = (x ^ _shr(x, 27)) * _signed(0x94D049BB133111EB)
        x = x ^ _shr(x, 31)
        return ((_shr(x, 40) + 1).float() * 2.0**-24)[:, None]  # 24 random bits: exact in fp32
