"""Count the places where code waits for the device: numbers read back to the host, and operations
whose output size depends on the data (on a GPU both stall the CPU until the queue drains).

    with HostReads() as reads:
        trainer._update(...)
    reads.count, reads.where      # how many, and which ops

Counted at the dispatcher, so every spelling is seen: `.item()`, `bool(t)`, `float(t)`, `int(t)`
(all `aten._local_scalar_dense`), `nonzero`, `unique`, `masked_select`, boolean-mask indexing,
`repeat_interleave` without `output_size`; plus `Tensor.tolist`, which bypasses the dispatcher.
On the CPU nothing actually waits; the count is what a GPU would pay.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
DATA_DEPENDENT = {aten._local_scalar_dense.default, aten.nonzero.default, aten._unique2.default,
                  aten.unique_dim.default, aten.unique_consecutive.default, aten.masked_select.default,
                  aten.bincount.default}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.where: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.where.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DATA_DEPENDENT:
            self.where[str(func)] += 1
        elif func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.where["index with a boolean mask"] += 1
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.where["repeat_interleave without output_size"] += 1
        return func(*args, **kwargs)

    def __enter__(self):
        original = torch.Tensor.tolist
        reads = self

        def tolist(t, *a, **k):
            reads.where["tolist"] += 1
            return original(t, *a, **k)

        self._original_tolist = original
        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._original_tolist
        return super().__exit__(*exc)
