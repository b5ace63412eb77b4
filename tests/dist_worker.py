"""What tests/test_distributed.py starts under torchrun (or as one plain process).

    python tests/dist_worker.py update CONFIG OUT.pt AGGREGATION[,AGGREGATION]  # one update on fixed episodes
    torchrun --nproc_per_node=2 tests/dist_worker.py train [train.py arguments]
    EPISODES=FILE python tests/dist_worker.py train ...   # also: every episode's tokens, per rank, to FILE.rank<r>
    torchrun --nproc_per_node=2 tests/dist_worker.py downgrade CHECKPOINT   # rewrite it in the per-rank format

`update` builds the Trainer as train.py does (joining the process group under torchrun), gives
each rank its share of 4 fixed groups, runs `Trainer._update`, and rank 0 saves the new full
weights. `train` is train.py with one more reward, `odd_length`, that a random model's completions
vary on (the real rewards are all 0 for it, so no update would happen). With EPISODES set, every
step's episodes are written as JSON lines (step, the question's place in the step, sample, tokens),
so that runs on different numbers of ranks can be compared episode by episode.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import train
from data import rewards

ROOT = Path(__file__).resolve().parents[1]

rewards.REWARD_FUNCTIONS["odd_length"] = lambda completion, answer, tags=None: float(len(completion) % 2)


def fixed_episodes(vocab: int):
    """4 groups of 3 samples with ragged lengths and varied advantages (the same on every rank)."""
    from data.rewards import Score
    from grpo.rollout import Episode

    g = torch.Generator().manual_seed(0)
    episodes = []
    for group in range(4):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(3):
            completion = torch.randint(3, vocab, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
            episodes.append(Episode(group, prompt, completion, True, "", "0", Score({}, 0.0, False)))
    return episodes, torch.randn(len(episodes), generator=g)


def update(config: str, out: str, aggregations: str) -> None:
    """For each aggregation: a fresh Trainer, one _update on the fixed episodes, the new full weights."""
    from grpo.batch import build_batch, micro_batches
    from grpo.config import load_config
    from grpo.machinery.distributed import full_state_dict, init_from_env, launched_by_torchrun, shutdown
    from grpo.machinery.run_log import PhaseTimer
    from grpo.trainer import Trainer

    dist = init_from_env("cpu") if launched_by_torchrun() else None
    results = {}
    for aggregation in aggregations.split(","):
        cfg = load_config(config, [f"grpo.aggregation={aggregation}"])
        trainer = Trainer(cfg, dist=dist)
        episodes, advantages = fixed_episodes(trainer.model.config.vocab_size)
        if dist:  # groups never span ranks: rank r trains groups r, r + world, ...
            mine = [i for i, e in enumerate(episodes) if e.group % dist.world == dist.rank]
            episodes, advantages = [episodes[i] for i in mine], advantages[mine]
        batch = build_batch(episodes, advantages, trainer.device)
        micros = micro_batches(batch, shared_prefix=cfg.grpo.shared_prefix, micro_batch_size=cfg.grpo.micro_batch_size,
                               micro_batch_tokens=cfg.grpo.micro_batch_tokens, pad_id=0, device=trainer.device)
        trainer._update(batch, micros, PhaseTimer(trainer.device))
        weights = full_state_dict(trainer.model) if dist else trainer.model.state_dict()
        results[aggregation] = {k: v.detach().cpu().clone() for k, v in weights.items()}
    if dist is None or dist.main:
        torch.save(results, out)
    shutdown()


def downgrade(ckpt: str) -> None:
    """Rewrite a checkpoint in the format of earlier versions: optimizer_rank<r>.pt and rng_rank<r>.pt
    per rank (optimizer.pt and rng.pt for one process), no optimizer/ directory."""
    import json
    import shutil

    from grpo.machinery.checkpoint import read_trainer_state
    from grpo.config import load_config
    from grpo.machinery.distributed import init_from_env, launched_by_torchrun, shutdown
    from grpo.trainer import Trainer

    path = Path(ckpt)
    dist = init_from_env("cpu") if launched_by_torchrun() else None
    trainer = Trainer(load_config(None, base=read_trainer_state(path)["config"]), resume=path, dist=dist)
    suffix = "" if trainer.dist.world == 1 else f"_rank{trainer.dist.rank}"
    torch.save({"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict()},
               path / f"optimizer{suffix}.pt")
    torch.save({"sampler": torch.Generator().get_state(), "torch": torch.get_rng_state()}, path / f"rng{suffix}.pt")
    trainer.dist.barrier()
    if trainer.dist.main:
        shutil.rmtree(path / "optimizer")
        if suffix:
            (path / "rng.pt").unlink()
        # Earlier versions wrote no manifest: trainer_state.json alone marks the checkpoint complete.
        (path / "manifest.json").unlink()
        state = read_trainer_state(path)
        del state["manifest"]
        (path / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    shutdown()


def dump_episodes(path: str) -> None:
    """Write each step's episodes (step, question of the step, sample, completion tokens) to path.rank<r>."""
    import json

    from grpo.trainer import Trainer

    original = Trainer.train_step

    def train_step(self):
        result = original(self)
        N, G = self.cfg.rollout.prompts_per_step, self.cfg.rollout.group_size
        start, end = self.dist.bounds(N)  # this rank's share of each round's questions
        with open(f"{path}.rank{self.dist.rank}", "a") as f:
            for i, e in enumerate(result.episodes):
                round_, q = divmod(e.group, end - start)
                f.write(json.dumps([self.step + 1, round_ * N + start + q, i % G, e.completion_ids]) + "\n")
        return result

    Trainer.train_step = train_step


if __name__ == "__main__":
    from grpo.machinery.distributed import exit_process

    if os.environ.get("EPISODES"):
        dump_episodes(os.environ["EPISODES"])
    if sys.argv[1] == "update":
        update(*sys.argv[2:5])
        exit_process(0)
    elif sys.argv[1] == "downgrade":
        downgrade(sys.argv[2])
        exit_process(0)
    pid_dir = Path(sys.argv[2]) if sys.argv[2].endswith(".pids") else None  # where each rank notes its pid
    if pid_dir is not None:
        pid_dir.mkdir(exist_ok=True)
        (pid_dir / f"rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    exit_process(train.main(sys.argv[3 if pid_dir else 2:]))
