"""Tensors on one device, used with something on another: what a CPU-only suite cannot see unless the
second device is stood in for. Here the stand-in is torch's meta device, which DTensor moves tensors
to exactly as it moves them to a GPU.

- Offloaded optimizer state (CPU) of FSDP-sharded parameters (GPU, here meta) is saved from and
  loaded into the optimizer's own CPU tensors (grpo/optim/sharded_state.py), on 2 gloo ranks.
- Under torchrun the model is loaded on the CPU and sharded onto the rank's device (GPU, here meta)
  afterwards: new LoRA adapters are drawn with a generator of the CPU, where the weights are
  (grpo/policy.py).

The last test runs both through the real code on a GPU (torch.multiprocessing ranks with NCCL, FSDP2,
state offloaded to the CPU); on the CPU it runs only under GPU_CHECK_SMOKE=1, as tests/test_gpu.py's.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from grpo.optim import sharded_state
from grpo.optim.adamw import OffloadAdamW, local
from qwen2 import load_model
from qwen2.lora import add_lora
from tiny_run import write_config

SHAPES = {"w": (6, 3), "b": (4,)}  # whole parameters, sharded on dim 0 over 2 ranks


def given_state(shape: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(step=torch.tensor(float(seed // 100)), master=torch.randn(shape, generator=g),
                exp_avg=torch.randn(shape, generator=g), exp_avg_sq=torch.rand(shape, generator=g))


class GivenState(OffloadAdamW):
    """OffloadAdamW (offloaded: state in CPU memory) whose new state holds values of its own, different
    per optimizer (`seed`), rank and parameter, instead of copies of the weights: meta weights hold none."""

    def __init__(self, params, seed: int, rank: int) -> None:
        super().__init__(params, lr=1e-3, offload=True)
        self.seed, self.rank, self.made = seed, rank, 0

    def _new_state(self, p):
        self.made += 1
        return given_state(tuple(local(p).shape), 100 * self.seed + 10 * self.rank + self.made)


def sharded_model(mesh_type: str, world: int) -> nn.Module:
    """The parameters of SHAPES as FSDP2 leaves them: DTensors sharded on dim 0 over every rank, on a mesh
    of `mesh_type` with local shards on that device."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = DeviceMesh.from_group(dist.group.WORLD, mesh_type)
    model = nn.Module()
    for name, shape in SHAPES.items():
        piece = torch.empty((shape[0] // world, *shape[1:]), device=mesh_type)
        model.register_parameter(name, nn.Parameter(DTensor.from_local(piece, mesh, [Shard(0)])))
    return model


def states(optimizer: OffloadAdamW) -> list[dict[str, torch.Tensor]]:
    return [state for _, state in optimizer.states()]


def assert_loaded(into: OffloadAdamW, want: OffloadAdamW, what: str) -> None:
    """`into`'s state tensors, in CPU memory, hold `want`'s values."""
    for mine, theirs in zip(states(into), states(want)):
        for key, tensor in mine.items():
            assert tensor.device.type == "cpu" and torch.equal(tensor, theirs[key]), f"{what}: {key} not loaded"


def mismatch_worker(rank: int, world: int, init: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        gpu = sharded_model("meta", world)  # the stand-in for a CUDA mesh: from_local moves its tensors there
        saved = GivenState(gpu.parameters(), seed=1, rank=rank)
        # What save hands to DCP is the optimizer's own CPU tensors, not copies on the parameters' device.
        tensors = sharded_state.optimizer_tensors(saved, gpu)
        own = [t for state in states(saved) for t in state.values()]
        for name, t in tensors.items():
            piece = local(t)
            assert piece.device.type == "cpu", f"{name} was moved to the {piece.device} device to be saved"
            assert any(piece.data_ptr() == o.data_ptr() for o in own), f"{name} is a copy, not the state"
        sharded_state.save_optimizer(saved, gpu, f"{folder}/gpu")
        loaded = GivenState(gpu.parameters(), seed=2, rank=rank)
        before = [dict(state) for state in states(loaded)]
        sharded_state.load_optimizer(loaded, gpu, f"{folder}/gpu")
        assert all(state[k] is was[k] for state, was in zip(states(loaded), before) for k in was), "state replaced"
        assert_loaded(loaded, saved, "saved and loaded on the GPU stand-in")
        # Load alone: state saved where mesh and state agree (a CPU mesh), loaded on the GPU stand-in.
        cpu = sharded_model("cpu", world)
        on_cpu = GivenState(cpu.parameters(), seed=3, rank=rank)
        sharded_state.save_optimizer(on_cpu, cpu, f"{folder}/cpu")
        loaded = GivenState(gpu.parameters(), seed=4, rank=rank)
        sharded_state.load_optimizer(loaded, gpu, f"{folder}/cpu")
        assert_loaded(loaded, on_cpu, "saved on a CPU mesh, loaded on the GPU stand-in")
    finally:
        dist.destroy_process_group()
    # Passed: leave without the interpreter's teardown, which now and then aborts a gloo process
    # (grpo.machinery.distributed.exit_process); a failure above has already written its traceback for spawn.
    os._exit(0)


def test_offloaded_state_of_gpu_sharded_parameters_is_saved_and_loaded_in_place(tmp_path):
    """2 ranks, parameters on a meta mesh (a GPU's stand-in), state on the CPU: the checkpoint is the
    optimizer's own tensors, a fresh optimizer loads it into its own tensors, and the pieces sit
    where they belong in the whole tensors (one plain process reads them back whole)."""
    world = 2
    mp.spawn(mismatch_worker, args=(world, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=world)
    params = [nn.Parameter(torch.zeros(shape)) for shape in SHAPES.values()]
    model = nn.Module()
    for name, p in zip(SHAPES, params):
        model.register_parameter(name, p)
    whole = GivenState(params, seed=9, rank=0)
    sharded_state.load_optimizer(whole, model, tmp_path / "gpu")
    for i, (shape, state) in enumerate(zip(SHAPES.values(), states(whole)), start=1):
        pieces = [given_state((shape[0] // world, *shape[1:]), 100 + 10 * rank + i) for rank in range(world)]
        for key in ("master", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], torch.cat([piece[key] for piece in pieces])), key
        assert state["step"].item() == 1.0


def adapters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t for name, t in model.state_dict().items() if "lora_" in name}


def test_lora_under_torchrun_is_drawn_on_the_cpu_the_model_is_loaded_on(tmp_path, tiny_model, monkeypatch):
    """A rank whose device is not the CPU (meta, a GPU's stand-in) loads the model on the CPU: its new
    adapters are drawn there, the very numbers of a one-process CPU run with the same seed, which are
    those of add_lora with a CPU generator seeded with train.seed."""
    from grpo import policy
    from grpo.config import load_config
    from grpo.machinery.distributed import Dist

    cfg = load_config(write_config(tmp_path, tiny_model, model={"lora": {"rank": 4, "alpha": 8.0}}))
    sharded = []
    monkeypatch.setattr(policy, "shard", lambda model, dist: sharded.append(model))  # no process group here
    model, ref_model, _ = policy.load_policy(cfg, None, Dist(rank=1, world=2, device=torch.device("meta"), token=0))
    assert sharded == [model] and ref_model is None
    one_process = policy.load_policy(cfg, None, Dist.single(torch.device("cpu")))[0]
    expected = load_model(tiny_model)
    add_lora(expected, 4, 8.0, cfg.model.lora.targets, generator=torch.Generator().manual_seed(cfg.train.seed))
    got, same, want = adapters(model), adapters(one_process), adapters(expected)
    assert got.keys() == same.keys() == want.keys() and any("lora_A" in name for name in got)
    for name, t in got.items():
        assert t.device.type == "cpu" and torch.equal(t, same[name]) and torch.equal(t, want[name]), name


def real_worker(rank: int, world: int, init: str, folder: str, configs: list[str], device_type: str) -> None:
    """load_policy as train.py does under torchrun, one training step with offloaded state, the optimizer
    saved and loaded into a fresh one: no GPU memory for the state, and the fresh optimizer's own CPU
    tensors hold what was saved. For full fine-tuning and for LoRA."""
    from grpo.config import load_config
    from grpo.machinery.distributed import Dist
    from grpo.policy import load_policy

    torch.set_num_threads(1)
    cuda = device_type == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init, rank=rank, world_size=world)
    try:
        device = torch.device(device_type, rank) if cuda else torch.device("cpu")
        for i, config in enumerate(configs):
            model = load_policy(load_config(config), None, Dist(rank, world, device, token=0))[0]
            trainable = [p for p in model.parameters() if p.requires_grad]
            saved = OffloadAdamW(trainable, lr=1e-2, offload=True)
            ids = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(rank)).to(device)
            model(ids).float().pow(2).mean().backward()
            saved.step()
            want = [{k: t.clone() for k, t in state.items()} for state in states(saved)]
            assert all(t.device.type == "cpu" for state in want for t in state.values())
            before = torch.cuda.memory_allocated(device) if cuda else 0
            tensors = sharded_state.optimizer_tensors(saved, model)
            grew = (torch.cuda.memory_allocated(device) if cuda else 0) - before
            assert grew == 0 and all(local(t).device.type == "cpu" for t in tensors.values()), f"{grew} bytes"
            del tensors
            sharded_state.save_optimizer(saved, model, f"{folder}/{i}")
            fresh = OffloadAdamW(trainable, lr=1e-2, offload=True)  # its masters are the weights, moments 0
            fresh.step()  # another step: state different from what was saved
            sharded_state.load_optimizer(fresh, model, f"{folder}/{i}")
            for got, expected in zip(states(fresh), want):
                for key, t in expected.items():
                    assert torch.equal(got[key], t), f"config {i}: {key} not loaded"
            for p, state in zip(trainable, states(fresh)):  # and the model holds the loaded masters
                assert torch.equal(local(p).detach().cpu().float(), state["master"]), f"config {i}: weights"
            model.zero_grad(set_to_none=True)
    finally:
        dist.destroy_process_group()
    os._exit(0)  # see mismatch_worker


def test_on_a_gpu_offloaded_state_and_lora_of_sharded_models_save_and_load(tmp_path, tiny_model):
    if torch.cuda.is_available():
        device_type, world = "cuda", min(2, torch.cuda.device_count())
    elif os.environ.get("GPU_CHECK_SMOKE") == "1":
        device_type, world = "cpu", 2
    else:
        pytest.skip("needs CUDA")
    rewards = {"weights": {"format": 0.1, "correctness": 1.0}}  # the spawned ranks lack the test reward
    configs = [str(write_config(tmp_path, tiny_model, out=out, reward=rewards,
                                model={"device": device_type, "lora": lora}))
               for out, lora in (("full", {"rank": 0}), ("lora", {"rank": 4, "alpha": 8.0}))]
    mp.spawn(real_worker, args=(world, f"file://{tmp_path / 'store'}", str(tmp_path), configs, device_type),
             nprocs=world)
