"""Several processes, one training run: torchrun, torch.distributed and FSDP2.

    torchrun --nproc_per_node=N train.py [--set ...]      # a plain `python train.py` stays one process
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=N --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT train.py

Each of the N ranks samples its share of the step's questions with full weights (gathered once
per step, `full_weights`), scores them and computes its groups' advantages (groups never span
ranks), then trains on its own episodes. Every episode draws from its own random stream
(qwen2.streams.Streams, keyed by seed, step, question and sample), so N ranks sample exactly the
episodes one process would. The model is sharded with FSDP2 (`fully_shard`, one unit per block
plus the root): every rank holds 1/N of the weights, gradients and optimizer state (OffloadAdamW
updates each rank's local shards, offloaded or not); with LoRA the frozen base and the adapters are
sharded alike. The loss normalisers (token and sequence counts) are the whole step's, summed over
ranks, and each rank's loss is multiplied by N against FSDP's averaging, so N ranks compute the
gradient of the same global batch as one process would. Batch-wide statistics are the whole step's
too (`Dist.sum`, `Dist.gather`): the groups with spread and the extra rounds of dynamic sampling,
the batch reward std, the entropy quantile of the top-entropy mask. Metrics are summed over ranks
(rank 0 writes them); rank 0 saves the model (or the LoRA adapter) whole, every rank its optimizer
shards in PyTorch's distributed checkpoint format, so a run resumes on any number of ranks
(grpo/optim/sharded_state.py). NCCL on GPUs, gloo on CPUs; torchrun stops every rank when one fails.

Simplifications: data parallel only (no tensor or pipeline parallelism); every rank loads the full
checkpoint on the CPU before sharding it; the compiled decode (rollout.compile) runs with one
process only; nodes must share the run directory (a network file system).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from qwen2 import Qwen2
from qwen2.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Which process this is. A plain `python train.py` is `Dist.single`: rank 0 of 1, whose sums,
    maxima and barriers are the values themselves, so the trainer reads the same either way."""

    rank: int
    world: int
    device: torch.device  # this rank's device: cuda:LOCAL_RANK, or the CPU
    token: int  # rank 0's process id, the same on every rank (names a checkpoint's temporary directory)
    launched: bool = True  # started by torchrun: a process group exists and the model is sharded

    @classmethod
    def single(cls, device: torch.device) -> Dist:
        return cls(0, 1, device, os.getpid(), launched=False)

    @property
    def main(self) -> bool:
        """Rank 0 writes logs and the model."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.launched:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int) -> int:
        if not self.launched:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, values: Tensor) -> Tensor:
        """Every rank's 1-D `values` (lengths may differ), concatenated in rank order, on every rank:
        what a batch-wide statistic over the whole step (all ranks' episodes) is computed from."""
        if not self.launched:
            return values
        sizes = torch.tensor([values.numel()], device=self.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world)]
        torch_dist.all_gather(all_sizes, sizes)
        longest = int(max(all_sizes))
        padded = torch.zeros(longest, dtype=values.dtype, device=self.device)
        padded[:values.numel()] = values.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch_dist.all_gather(parts, padded)
        return torch.cat([part[:int(n)] for part, n in zip(parts, all_sizes)]).to(values.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order, on every rank (a collective under torchrun):
        what the ranks agree on a save's outcome or a lock's holder with."""
        if not self.launched:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.launched:
            torch_dist.barrier()

    @property
    def train_command(self) -> str:
        """How this run is started again: `python train.py`, or torchrun with as many processes."""
        return train_command(self.world, self.launched)

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """[start, end) of `rank`'s (this rank's) share of n items, in rank order: n / world each,
        the first n % world ranks one more."""
        rank = self.rank if rank is None else rank
        q, r = divmod(n, self.world)
        start = rank * q + min(rank, r)
        return start, start + q + (rank < r)

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's slice of `items` (all of them for one process)."""
        start, end = self.bounds(len(items))
        return list(items[start:end])


def train_command(world: int, launched: bool) -> str:
    """The command that starts train.py as `world` processes (torchrun) or as one plain process."""
    return f"torchrun --nproc_per_node={world} train.py" if launched else "python train.py"


def in_lockstep(micros: Sequence[T], dist: Dist) -> list[tuple[T, float]]:
    """(micro-batch, weight) pairs: every rank runs as many forward/backward passes as the busiest
    one, because FSDP's gathers and reductions pair up across ranks; the repeats weigh 0."""
    steps = dist.max(len(micros))
    return [(micros[min(k, len(micros) - 1)], float(k < len(micros))) for k in range(steps)]


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def init_from_env(device: str) -> Dist:
    """Join the process group torchrun set up (env:// rendezvous). `device` is model.device: auto or
    cuda gives each rank the GPU of its LOCAL_RANK with NCCL, cpu uses gloo."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not on_gpu:
        raise InputError(f"model.device={device} under torchrun, but torch sees no CUDA GPU: use cpu")
    if on_gpu:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if on_gpu else "gloo")
    where = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    token = torch.tensor([os.getpid() if torch_dist.get_rank() == 0 else 0], device=where)
    torch_dist.all_reduce(token)
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), where, int(token.item()))


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End this process with `code`. A torchrun worker skips the interpreter's teardown (its logs and
    checkpoints are closed by then): that teardown destroys gloo's threads in no set order and now
    and then aborts a finished process ("terminate called without an active exception", SIGABRT;
    measured: 1 run in 20-40 of a 2-rank CPU run on a busy machine), which torchrun then reports as
    a failed run and which stops the other ranks mid-exit."""
    if not launched_by_torchrun():
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def report_input_error(message: str, wait_s: float = 30.0) -> bool:
    """Whether this process should print `message`, a bad input, and fail; a torchrun rank whose
    error rank 0 reports too leaves at once instead (exit code 0, `exit_process`), never returning.

    Under torchrun every rank usually meets the same bad input (a missing model, a bad value). If
    every rank failed, torchrun would list one failure per rank; if only rank 0 did while the others
    were still on their way out, torchrun would stop them and list those too. So the ranks meet at
    torchrun's own key-value store: rank 0 posts its error, the others see it and leave, and rank 0
    fails once they have gone, so its error is the one failure torchrun reports (as its last line).
    A rank whose error rank 0 does not share reports it and fails, so that torchrun stops the run
    instead of leaving rank 0 waiting for that rank at the next collective. Without torchrun's
    shared store (other launchers) rank 0 alone reports."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if not launched_by_torchrun() or world == 1:
        return True
    rank = int(os.environ.get("RANK", 0))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # no store of the launcher's to meet at
        return rank == 0
    try:
        store = torch_dist.PrefixStore(
            f"qwen-grpo/input-error/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/",
            torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                timeout=timedelta(seconds=wait_s)))
        if rank == 0:
            store.set("rank0", message)
            deadline = time.monotonic() + wait_s
            while store.add("answered", 0) < world - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # the quiet ranks posted just before their os._exit
            return True
        store.wait(["rank0"])  # raises after wait_s: rank 0 did not fail like this rank
        store.add("answered", 1)
        if store.get("rank0").decode() == message:
            exit_process(0)
        time.sleep(2.0)  # another error than rank 0's: let rank 0 say its own first, then fail too
        return True
    except (RuntimeError, KeyError, ValueError):  # no store reachable, or rank 0 did not fail: report it here
        return True


def shard(model: Qwen2, dist: Dist) -> None:
    """FSDP2: one unit per block plus the root (embedding, final norm, LM head); shards go to this
    rank's device. FSDP averages the gradients over ranks; the trainer multiplies each rank's loss
    by the number of ranks, so the result is their sum (each loss already divides by the whole
    step's counts). (A divide factor of 1 would say the same, but gloo lacks the reduction it needs.)"""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    # bf16 weights compute in bf16; their gradients are summed over ranks in fp32 (then rounded once),
    # so N ranks add no more rounding than one process accumulating micro-batches.
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    for block in model.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # The trainer calls model.hidden_states, then the LM head itself in checkpointed chunks
    # (grpo/logprobs.py): FSDP gathers the root's weights (embedding, final norm, LM head) for that
    # method as for forward, and, being the root, keeps them gathered until backward has used them.
    register_fsdp_forward_method(model, "hidden_states")


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_weights(model: nn.Module) -> Iterator[None]:
    """Every rank holds all weights for the block (sampling, evaluation: many small forwards that
    must not gather the weights again each time); sharded again afterwards. No-op without FSDP."""
    units = fsdp_units(model)
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            # The root (the model itself) keeps FSDP's default for a root: gathered from forward to
            # backward, which the trainer's LM head relies on (shard()).
            unit.set_reshard_after_forward(unit is not model)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (an empty dict on the other ranks); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_distributed(cfg, dist: Dist) -> None:
    """One-line errors for what several ranks cannot do."""
    N = cfg.rollout.prompts_per_step
    if N < dist.world:
        raise InputError(f"rollout.prompts_per_step={N} is fewer than the {dist.world} ranks: each rank samples its "
                         f"share of the step's questions, so give every rank at least one")
    if cfg.rollout.compile is True:
        raise InputError("rollout.compile=true is not supported with several processes (the sampler runs on the "
                         "FSDP-sharded model): leave rollout.compile=auto, which decodes eagerly under torchrun")
