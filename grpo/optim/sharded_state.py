"""The optimizer's part of a checkpoint, in a format any number of processes can load:
PyTorch's distributed checkpoint (`torch.distributed.checkpoint`, DCP).

A run on N ranks holds 1/N of every parameter's fp32 master weights and Adam moments (FSDP2 shards
dim 0, OffloadAdamW works on the local shards, in GPU or CPU memory). Saved per rank, those shards
could only be loaded by N ranks again. Saved with DCP, each rank writes its shards together with
where they sit in the whole tensor (each state tensor is described as a DTensor laid out like its
parameter), and a later run with M ranks, or one plain process, reads the pieces its own shards
need: N -> M resharding on load, with no gathering of the whole state in one place. The DTensors
wrap the optimizer's own tensors where they live: offloaded state is described on a CPU mesh over
the parameters' ranks, so it is written from and read into CPU memory, never copied to the GPU.

    checkpoints/step_000025/optimizer/      DCP files (.metadata plus one .distcp per writing rank)

Keys are parameter names (`model.layers.0.mlp.up_proj.weight.exp_avg`), which do not depend on the
number of ranks. The model itself is saved whole by rank 0 as a Hugging Face directory (checkpoint.py),
so it loads anywhere; its weights are then overwritten by the loaded fp32 masters rounded to the
model dtype, exactly as a same-N resume does.

Simplifications: one parameter group and a one-dimensional device mesh (what the trainer and
grpo.machinery.distributed.shard build).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from .adamw import OffloadAdamW


def _mesh_on(mesh: DeviceMesh, device_type: str) -> DeviceMesh:
    """`mesh` (same ranks, same process groups) on `device_type`. DTensor.from_local copies a local
    tensor to its mesh's device type, so offloaded (CPU) state described on the parameters' CUDA mesh
    would be copied to the GPU: on save, all of it at once (12 bytes a parameter: out of memory on a
    24 GB card), and on load DCP would fill those copies while the optimizer's own CPU tensors kept
    their values. Nothing here communicates over the mesh (DCP exchanges its plans over the default
    process group; a DTensor's mesh only says where this rank's piece lies), so the groups can stay
    the parameters' (NCCL) ones."""
    return DeviceMesh.from_group(mesh.get_group(), device_type, mesh=mesh.mesh, mesh_dim_names=mesh.mesh_dim_names)


def _global(state: Tensor, param: Tensor, meshes: dict[tuple[int, str], DeviceMesh]) -> Tensor:
    """A parameter's state tensor as the whole tensor it is a shard of: a DTensor laid out like the
    (FSDP-sharded) parameter, or the tensor itself in a one-process run. Steps are scalars: replicated.
    The DTensor's local tensor is `state` itself, wherever it lives (its mesh is on `state`'s device
    type: `_mesh_on`), so DCP saves from and loads into the optimizer's own tensors. `meshes` caches
    those meshes, by (parameter mesh, device type)."""
    if not isinstance(param, DTensor) or state.dim() == 0:
        return state
    mesh = param.device_mesh
    if mesh.device_type != state.device.type:
        key = (id(mesh), state.device.type)
        if key not in meshes:
            meshes[key] = _mesh_on(mesh, state.device.type)
        mesh = meshes[key]
    return DTensor.from_local(state, mesh, param.placements, run_check=False, shape=param.shape,
                              stride=param.stride())


def optimizer_tensors(optimizer: OffloadAdamW, model: nn.Module) -> dict[str, Tensor]:
    """{parameter name.state key: tensor} for the trainable parameters, in this run's layout: each
    one is (or, as a DTensor, holds as its local tensor) the optimizer's own state tensor."""
    names = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    meshes: dict[tuple[int, str], DeviceMesh] = {}
    out = {}
    for param, state in optimizer.states():
        for key, tensor in state.items():
            out[f"{names[id(param)]}.{key}"] = _global(tensor, param, meshes)
    return out


def save_optimizer(optimizer: OffloadAdamW, model: nn.Module, path: Path) -> None:
    """Write the optimizer state to the DCP directory `path` (under torchrun: every rank, collectively)."""
    with warnings.catch_warnings():  # one plain process: DCP says it saves without a process group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"optimizer": optimizer_tensors(optimizer, model)}, checkpoint_id=str(path))


@torch.no_grad()
def load_optimizer(optimizer: OffloadAdamW, model: nn.Module, path: Path) -> None:
    """Read the state saved by any number of ranks into this run's shards, in place, then write the
    masters into the model (collective under torchrun)."""
    tensors = optimizer_tensors(optimizer, model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"optimizer": tensors}, checkpoint_id=str(path))
    optimizer.write_masters()


def optimizer_problem(path: Path) -> str | None:
    """Why the DCP directory `path` cannot be read (missing metadata, a missing or truncated data
    file), or None. Reads the metadata only: where every piece of every tensor lies, and how long."""
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # a missing or damaged .metadata file: DCP raises several kinds
        return f"optimizer/.metadata is missing or damaged ({type(e).__name__})"
    ends: dict[str, int] = {}
    for info in metadata.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in ends.items():
        file = path / name
        if not file.is_file():
            return f"optimizer/{name} is missing"
        if file.stat().st_size < end:
            return f"optimizer/{name} is truncated ({file.stat().st_size} of {end} bytes)"
    return None
