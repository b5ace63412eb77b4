"""The optimizer, one unit: AdamW with fp32 master weights (adamw.py), the pipelined copies that keep
its state in CPU memory (offload.py), and its checkpoint format that N ranks write and M read
(sharded_state.py). It knows nothing of GRPO: it steps whatever parameters it is given."""

from .adamw import OffloadAdamW

__all__ = ["OffloadAdamW"]
