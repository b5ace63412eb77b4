"""The GRPO training loop: rollout -> advantages -> clipped policy-gradient updates, with logs,
evaluation, atomic checkpoints and exact resume.

One step:
  1. generate  take N questions, sample G completions each with our KV-cache sampler
  2. reward    score every completion; group-normalise rewards into advantages; drop groups whose
               rewards are all equal (no signal) and, optionally, truncated episodes
  3. logprobs  (only when needed) log-probs of the old policy (mu > 1) and of the reference (beta > 0)
  4. update    mu passes over the batch in micro-batches; gradients accumulate exactly
  5. optimizer clip the gradient norm, AdamW step (optionally offloaded), LR schedule
Simplifications: one process, one device; the batch is rebuilt from Python lists each step.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from data.gsm8k import Problem, load_gsm8k
from qwen2 import Qwen2, Tokenizer, load_model

from .advantages import group_advantages
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint_state, save_checkpoint
from .config import Config
from .evaluate import evaluate
from .logprobs import token_logprobs
from .loss import policy_loss
from .optim import OffloadAdamW
from .rollout import Episode, encode_prompt, rollout


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def enable_activation_checkpointing(model: Qwen2) -> None:
    """Recompute each block's activations in backward instead of storing them.

    Done from the outside by wrapping each block's forward, so the model code and the parameter
    names stay untouched. Without autograd (sampling, evaluation) the block runs as it is.
    """
    for block in model.model.layers:
        def forward(*args, _forward=block.forward):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False)
            return _forward(*args)
        block.forward = forward


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine from 1 down to `min_ratio` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class DataOrder:
    """Endless, reproducible pass over the training problems: a fresh shuffle each epoch."""

    def __init__(self, n: int, seed: int, epoch: int = 0, position: int = 0):
        self.n, self.seed, self.epoch, self.position = n, seed, epoch, position
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


@dataclass
class Batch:
    input_ids: Tensor  # (B, T): [left-padded prompt | completion | right padding]
    attention_mask: Tensor  # (B, T)
    loss_mask: Tensor  # (B, T - P): 1 on completion tokens (the stop token included)
    advantages: Tensor  # (B,)
    prompt_len: int  # P


def build_batch(episodes: list[Episode], advantages: Tensor, pad_id: int, device: torch.device) -> Batch:
    P = max(len(e.prompt_ids) for e in episodes)
    C = max(len(e.completion_ids) for e in episodes)
    ids = torch.full((len(episodes), P + C), pad_id, dtype=torch.long)
    attn = torch.zeros((len(episodes), P + C), dtype=torch.long)
    for i, e in enumerate(episodes):
        p, c = e.prompt_ids, e.completion_ids
        ids[i, P - len(p):P + len(c)] = torch.tensor(p + c)
        attn[i, P - len(p):P + len(c)] = 1
    return Batch(ids.to(device), attn.to(device), attn[:, P:].float().to(device), advantages.to(device), P)


def micro_batches(batch: Batch, size: int):
    """Yield (rows, input_ids, attention_mask, targets_start, loss_mask) trimmed to their own padding."""
    for start in range(0, len(batch.input_ids), size):
        rows = slice(start, start + size)
        attn = batch.attention_mask[rows]
        cols = attn.any(0).nonzero()[:, 0]
        lo, hi = int(cols[0]), int(cols[-1]) + 1  # drop columns that are padding in every row
        P = batch.prompt_len
        yield rows, batch.input_ids[rows, lo:hi], attn[:, lo:hi], P - lo, batch.loss_mask[rows, :hi - P]


class Interrupt:
    """Ctrl-C handling that never tears a step in half.

    Before a step's first optimizer update, SIGINT raises KeyboardInterrupt at once: the step is
    abandoned and the weights are still those of the last completed step. From `defer()` (called
    just before the first update) to `release()` (after the step is logged), it is held back and
    raised at `release()`, so the step in progress completes first.
    """

    def __init__(self):
        self.deferring = self.pending = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if not self.deferring:
            raise KeyboardInterrupt
        self.pending = True
        print("\ninterrupt: finishing the current step, then saving", file=sys.stderr)

    def defer(self) -> None:
        self.deferring = True

    def release(self) -> None:
        self.deferring = False
        if self.pending:
            raise KeyboardInterrupt

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


class Trainer:
    def __init__(self, cfg: Config, resume: str | Path | None = None):
        self.cfg = cfg
        self.out_dir = Path(cfg.train.out_dir)
        self.device = resolve_device(cfg.model.device)
        self.dtype = getattr(torch, cfg.model.dtype)
        torch.manual_seed(cfg.train.seed)
        if resume is None:
            self._refuse_to_overwrite()

        ckpt = latest_checkpoint(resume) if resume else None
        model_dir = ckpt / "model" if ckpt else Path(cfg.model.path)
        self.model = load_model(model_dir, device=self.device, dtype=self.dtype)
        self.tokenizer = Tokenizer.from_pretrained(model_dir)
        self.ref_model = None
        if cfg.grpo.beta > 0:  # frozen initial policy for the KL term
            self.ref_model = load_model(cfg.model.path, device=self.device, dtype=self.dtype).requires_grad_(False)
        if cfg.model.activation_checkpointing:
            enable_activation_checkpointing(self.model)

        self.train_set = self._load_problems(cfg.data.train_file)
        self.eval_set = load_gsm8k(cfg.data.test_file)[:cfg.train.eval_size] if cfg.train.eval_every else []

        o = cfg.optim
        self.optimizer = OffloadAdamW(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                      weight_decay=o.weight_decay, offload=o.offload)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup=o.warmup_steps, total=cfg.train.steps, min_ratio=o.min_lr_ratio))
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed)
        self.data = DataOrder(len(self.train_set), cfg.train.seed)
        self.step = 0
        self.interrupt: Interrupt | None = None
        if ckpt:
            self._restore(ckpt)
        self.writers = self._external_loggers()

    # -- setup -------------------------------------------------------------------------------

    def _refuse_to_overwrite(self) -> None:
        """A new run must not write into another run's directory: its checkpoints would be pruned
        (train.keep_checkpoints) and its logs mixed with ours."""
        ckpts = list_checkpoints(self.out_dir)
        if ckpts:
            raise ValueError(f"{self.out_dir} already holds a run (latest checkpoint {ckpts[-1].name}): "
                             f"continue it with --resume {self.out_dir}, or start a new one with --set train.out_dir=<new dir>")
        if (self.out_dir / "metrics.jsonl").is_file():
            raise ValueError(f"{self.out_dir} holds the logs of an earlier run that saved no checkpoint: "
                             f"delete the directory, or pick another one with --set train.out_dir=<new dir>")

    def _load_problems(self, path: str) -> list[Problem]:
        problems = load_gsm8k(path)
        limit = self.cfg.data.max_prompt_tokens
        kept = [p for p in problems if len(encode_prompt(self.tokenizer, p.question, self.cfg.data.template)) <= limit]
        if len(kept) < len(problems):
            print(f"skipping {len(problems) - len(kept)} of {len(problems)} training problems longer than data.max_prompt_tokens={limit}")
        if not kept:
            raise ValueError(f"no training problem in {path} fits data.max_prompt_tokens={limit}: raise it")
        return kept

    def _restore(self, ckpt: Path) -> None:
        state, opt_state, rng = load_checkpoint_state(ckpt)
        self.optimizer.load_state_dict(opt_state["optimizer"])
        self.scheduler.load_state_dict(opt_state["scheduler"])
        self.generator.set_state(rng["sampler"])
        torch.set_rng_state(rng["torch"])
        self.step = state["step"]
        self.data = DataOrder(len(self.train_set), self.cfg.train.seed, **state["data"])
        # Drop log lines of steps after the checkpoint: they will be redone.
        for name in ("metrics.jsonl", "samples.jsonl"):
            f = self.out_dir / name
            if f.is_file():
                lines = [ln for ln in f.read_text().splitlines() if json.loads(ln)["step"] <= self.step]
                f.write_text("".join(ln + "\n" for ln in lines))
        print(f"resumed from {ckpt} at step {self.step}")

    def _external_loggers(self) -> list[Any]:
        writers = []
        if self.cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                writers.append(SummaryWriter(str(self.out_dir / "tensorboard")))
            except ImportError:
                print("train.tensorboard=true but tensorboard is not installed (pip install tensorboard): skipping")
        if self.cfg.train.wandb:
            try:
                import wandb
                writers.append(wandb.init(project="qwen-grpo", config=self.cfg.to_dict(), dir=str(self.out_dir)))
            except ImportError:
                print("train.wandb=true but wandb is not installed (pip install wandb): skipping")
        return writers

    # -- one step ------------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        cfg, t = self.cfg, {}
        problems = [self.train_set[i] for i in self.data.take(cfg.rollout.prompts_per_step)]
        G = cfg.rollout.group_size
        episodes = rollout(self.model, self.tokenizer, problems, G, max_new_tokens=cfg.rollout.max_new_tokens,
                           template=cfg.data.template, reward_weights=cfg.reward.weights,
                           temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                           generator=self.generator, progress=cfg.train.progress, timings=t)

        t0 = time.perf_counter()
        rewards = torch.tensor([e.reward for e in episodes])
        advantages, has_spread = group_advantages(rewards, G, scale_by_std=cfg.grpo.scale_by_std)
        keep = [i for i, e in enumerate(episodes) if has_spread[i] and (e.finished or not cfg.grpo.skip_truncated)]
        t["reward"] += time.perf_counter() - t0

        m = self._rollout_metrics(episodes, has_spread)
        m.update(loss=0.0, kl=0.0, entropy=0.0, grad_norm=0.0, clip_frac=0.0, trained_episodes=len(keep))
        if keep:
            batch = build_batch([episodes[i] for i in keep], advantages[keep], self.tokenizer.pad_token_id, self.device)
            m.update(self._update(batch, t))
        with warnings.catch_warnings():
            # The schedule follows training steps, also those with no update (all groups had zero
            # spread), which torch would flag as "scheduler.step() before optimizer.step()".
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        m.update({f"time_{k}": v for k, v in t.items()})
        return m | {"_episodes": episodes, "_problems": problems}

    def _rollout_metrics(self, episodes: list[Episode], has_spread: Tensor) -> dict[str, Any]:
        n, G = len(episodes), self.cfg.rollout.group_size
        m: dict[str, Any] = {"reward": sum(e.reward for e in episodes) / n}
        for part in self.cfg.reward.weights:
            m[f"reward_{part}"] = sum(e.rewards[part] for e in episodes) / n
        m.update(accuracy=sum(e.correct for e in episodes) / n,
                 length=sum(len(e.completion_ids) for e in episodes) / n,
                 truncated=sum(not e.finished for e in episodes) / n,
                 zero_spread_groups=int((~has_spread).sum()) // G,
                 lr=self.scheduler.get_last_lr()[0])
        return m

    def _logprobs(self, model: Qwen2, batch: Batch) -> Tensor:
        """Log-probs of the completion tokens under `model`, without gradients, micro-batch by micro-batch."""
        out = torch.zeros_like(batch.loss_mask)
        with torch.no_grad():
            for rows, ids, attn, start, lmask in micro_batches(batch, self.cfg.grpo.micro_batch_size):
                out[rows, :lmask.shape[1]] = token_logprobs(model, ids, attn, start, self.cfg.rollout.temperature,
                                                            self.cfg.grpo.logprob_chunk)
        return out

    def _update(self, batch: Batch, t: dict[str, float]) -> dict[str, float]:
        cfg, g = self.cfg, self.cfg.grpo
        t0 = time.perf_counter()
        # The PPO ratio compares against the policy that sampled: with mu = 1 that is the current
        # model itself (ratio 1, the gradient of plain GRPO); with mu > 1 it is fixed once, here.
        old = self._logprobs(self.model, batch) if g.updates_per_batch > 1 else None
        ref = self._logprobs(self.ref_model, batch) if self.ref_model is not None else None
        t["logprobs"] = time.perf_counter() - t0
        t["update"], t["optimizer"] = 0.0, 0.0

        num_tokens, num_seqs = int(batch.loss_mask.sum()), len(batch.input_ids)
        totals = dict(loss=0.0, kl=0.0, entropy=0.0, clip_frac=0.0, grad_norm=0.0)
        self.model.train()
        bar = tqdm(total=g.updates_per_batch * math.ceil(num_seqs / g.micro_batch_size), desc="update",
                   leave=False, disable=not cfg.train.progress)
        for _ in range(g.updates_per_batch):
            t0 = time.perf_counter()
            for rows, ids, attn, start, lmask in micro_batches(batch, g.micro_batch_size):
                bar.update()
                logp, entropy = token_logprobs(self.model, ids, attn, start, cfg.rollout.temperature,
                                               g.logprob_chunk, with_entropy=True)
                width = lmask.shape[1]
                loss, stats = policy_loss(
                    logp, logp.detach() if old is None else old[rows, :width], batch.advantages[rows], lmask,
                    eps_low=g.epsilon_low, eps_high=g.epsilon_high, aggregation=g.aggregation,
                    ref_logp=None if ref is None else ref[rows, :width], beta=g.beta,
                    num_sequences=num_seqs, num_tokens=num_tokens, max_tokens=cfg.rollout.max_new_tokens)
                loss.backward()
                # The step's loss is the sum of the micro-batch shares (not the last one's);
                # per-token statistics are weighted by the micro-batch's token count.
                share = float(lmask.sum()) / num_tokens
                totals["loss"] += loss.item() / g.updates_per_batch
                totals["kl"] += stats.get("kl", 0.0) * share / g.updates_per_batch
                totals["clip_frac"] += (stats["clip_frac_low"] + stats["clip_frac_high"]) * share / g.updates_per_batch
                totals["entropy"] += float((entropy * lmask).sum()) / num_tokens / g.updates_per_batch
            t1 = time.perf_counter()
            if self.interrupt is not None:
                self.interrupt.defer()  # from the first update on, this step must complete
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            totals["grad_norm"] += float(grad_norm) / g.updates_per_batch
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            t["update"] += t1 - t0
            t["optimizer"] += time.perf_counter() - t1
        bar.close()
        self.model.eval()
        return totals

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None) -> None:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        self.interrupt = interrupt = Interrupt()
        last_saved = self.step
        snapshot = self._snapshot()
        steps_this_run = 0
        try:
            while self.step < cfg.train.steps and (stop_after is None or steps_this_run < stop_after):
                t0 = time.perf_counter()
                m = self.train_step()
                interrupt.defer()  # a Ctrl-C now waits until the step is on the books
                self.step += 1
                steps_this_run += 1
                self._log(m, time.perf_counter() - t0)
                snapshot = self._snapshot()  # state after the last completed step
                interrupt.release()
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    self._evaluate()
                if self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps:
                    self._save(snapshot)
                    last_saved = self.step
            if last_saved != self.step:
                self._save(snapshot)
        except KeyboardInterrupt:
            # Either the step in progress was abandoned before its first update, or it was
            # completed first (see Interrupt): the weights match `snapshot` either way.
            print(f"\ninterrupted: saving the checkpoint of step {self.step}", file=sys.stderr)
            self.optimizer.zero_grad(set_to_none=True)
            if last_saved != self.step:
                self._save(snapshot)
            raise
        finally:
            interrupt.restore()
            for w in self.writers:
                w.close() if hasattr(w, "close") else w.finish()

    def _snapshot(self) -> dict[str, Any]:
        return dict(step=self.step, data=self.data.state(),
                    rng={"sampler": self.generator.get_state(), "torch": torch.get_rng_state()})

    def _save(self, snap: dict[str, Any]) -> None:
        state = {"step": snap["step"], "data": snap["data"], "config": self.cfg.to_dict()}
        opt = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        path = save_checkpoint(self.out_dir, snap["step"], self.model, self.tokenizer, opt, snap["rng"], state,
                               keep=self.cfg.train.keep_checkpoints)
        print(f"saved {path}")

    def _evaluate(self) -> None:
        c = self.cfg
        summary, _ = evaluate(self.model, self.tokenizer, self.eval_set, max_new_tokens=c.rollout.max_new_tokens,
                              template=c.data.template, reward_weights=c.reward.weights,
                              batch_size=c.rollout.prompts_per_step * c.rollout.group_size, progress=c.train.progress)
        print(f"eval step {self.step}: accuracy {summary['accuracy']:.3f} on {summary['n']} test questions "
              f"(mean length {summary['length']:.0f}, truncated {summary['truncated']:.2f})")
        self._append("metrics.jsonl", {"step": self.step, **{f"eval_{k}": v for k, v in summary.items()}})

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.out_dir / name, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        for w in self.writers:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            if hasattr(w, "add_scalar"):
                for k, v in scalars.items():
                    w.add_scalar(k, v, record["step"])
            else:
                w.log(scalars, step=record["step"])

    def _log(self, m: dict[str, Any], seconds: float) -> None:
        episodes, problems = m.pop("_episodes"), m.pop("_problems")
        record = {"step": self.step, **m, "time_step": seconds}
        self._append("metrics.jsonl", record)
        for e in episodes[:: max(1, len(episodes) // max(1, self.cfg.train.samples_per_step))][: self.cfg.train.samples_per_step]:
            with open(self.out_dir / "samples.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "question": problems[e.group].question, "answer": e.answer,
                                    "completion": e.text, "reward": e.reward, "finished": e.finished},
                                   ensure_ascii=False) + "\n")
        parts = " ".join(f"{k[7:]} {m[k]:.2f}" for k in m if k.startswith("reward_"))
        times = " ".join(f"{k[5:]} {v:.1f}s" for k, v in m.items() if k.startswith("time_"))
        G = self.cfg.rollout.group_size
        print(f"step {self.step}/{self.cfg.train.steps} | reward {m['reward']:.3f} ({parts}) | acc {m['accuracy']:.3f} "
              f"| len {m['length']:.0f} | trunc {m['truncated']:.2f} | zero-spread {m['zero_spread_groups']}/{len(episodes) // G} "
              f"| loss {m['loss']:.4f} | kl {m['kl']:.4f} | ent {m['entropy']:.3f} | gnorm {m['grad_norm']:.3f} "
              f"| lr {m['lr']:.2e} | {seconds:.1f}s ({times})", flush=True)
