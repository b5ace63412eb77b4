"""The GRPO training loop: rollout -> advantages -> clipped policy-gradient updates, with logs,
evaluation, atomic checkpoints and exact resume.

One step (`Trainer.train_step`):
  1. generate  take N questions, sample G completions each with our KV-cache sampler
  2. reward    score every completion; group-normalise rewards into advantages; drop groups whose
               rewards are all equal (no signal) and, optionally, truncated episodes
  3. logprobs  (beta > 0 only) log-probs of the frozen reference model, for the KL term
  4. update    mu passes over the batch in micro-batches; gradients accumulate exactly
  5. optimizer clip the gradient norm, AdamW step (optionally offloaded), LR schedule

Where pi_old (the PPO ratio's denominator) comes from: the first update pass runs on the weights
that sampled, so its detached log-probs are pi_old exactly and later passes (mu > 1) reuse them. The
sampler's own log-probs are not used for it: computed one token at a time against a KV cache, with
other kernels and (in bf16) other rounding, they would make the ratio differ from 1 before any
update (`grpo.old_logprobs: sampler` uses them only as a truncated importance weight instead).

Every episode samples from its own random stream (seed, step, question, sample), so a run is the
same on any number of processes; a step whose numbers turn non-finite applies no update and saves
no checkpoint (grpo/machinery/divergence.py). Simplifications: the batch is rebuilt from Python lists each
step; several processes (torchrun, grpo/machinery/distributed.py) are data parallel only.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from data.gsm8k import Problem
from qwen2.lora import adapters_disabled
from qwen2.streams import Streams, stream_key

from .advantages import group_advantages
from .batch import Batch, MicroBatch, build_batch, filler_batch, micro_batches, padded_tokens
from .machinery.checkpoint import (TrainingState, latest_checkpoint, refuse_to_overwrite, restore_checkpoint, run_of,
                         save_checkpoint, trim_logs)
from .config import Config
from .machinery.distributed import Dist, check_distributed, full_weights, in_lockstep
from .machinery.divergence import NonfiniteGuard, nonfinite_tensors
from .evaluate import evaluate_on_ranks
from .machinery.interrupt import Interrupt, Stopped
from .machinery.run_lock import RunLock, refuse_if_in_use
from .logprobs import micro_batch_logprobs
from .loss import policy_loss, top_entropy_mask, truncated_importance_weights
from .optim.adamw import OffloadAdamW
from .policy import load_policy
from .rollout import Episode, problems_that_fit, sample_groups, score_groups
from .machinery.run_log import PhaseTimer, RunLog
from .metrics import StepResult, UpdateResult, UpdateStats, step_metrics
from .machinery.runtime import resolve_device
from .schedule import DataOrder, lr_factor
from .stuck import StuckDetector, warn


class Trainer:
    def __init__(self, cfg: Config, resume: str | Path | None = None, dist: Dist | None = None, restart: bool = False):
        """`resume`: a run or checkpoint directory to continue from; `restart`: train.out_dir holds a
        run that saved no checkpoint, to start again from step 0 (train.py --resume of such a run).
        `dist`: this process's rank under torchrun (grpo/machinery/distributed.py); None for a plain run."""
        self.cfg, self.dist = cfg, dist or Dist.single(resolve_device(cfg.model.device))
        dist = self.dist
        self.out_dir = Path(cfg.train.out_dir)
        self.device = dist.device
        self.dtype = getattr(torch, cfg.model.dtype)
        if dist.launched:
            check_distributed(cfg, dist)
        torch.manual_seed(cfg.train.seed)
        refuse_if_in_use(self.out_dir, dist)  # one process per run directory (grpo/machinery/run_lock.py)
        # Inputs are read before the output directory is judged, so a wrong file is the first error.
        self.task = cfg.task()  # rows, prompt and rewards (data/task.py): your reward functions are imported here
        train_rows = self.task.load(cfg.data.train_file)
        self.eval_set = self.task.load(cfg.data.test_file)[:cfg.train.eval_size] if cfg.train.eval_every else []
        ckpt = latest_checkpoint(resume) if resume else None
        # Only the run being resumed is written into: trimming its logs and pruning its checkpoints
        # would destroy another run's (a checkpoint standing alone starts a new run from it).
        continuing = restart or (ckpt is not None and _same_dir(run_of(ckpt), self.out_dir))
        self.lock = RunLock(self.out_dir, dist, check=None if continuing else refuse_to_overwrite)  # before any write

        self.model, self.ref_model, self.tokenizer = load_policy(cfg, ckpt, dist)
        self.train_set = problems_that_fit(train_rows, self.tokenizer, cfg.data, cfg.rollout.tools)

        optim = cfg.optim
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # with LoRA: the adapters only
        self.optimizer = OffloadAdamW(trainable, lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                      eps=optim.eps, weight_decay=optim.weight_decay, offload=optim.offload)
        self.loss = cfg.policy_loss()  # which loss, decided once
        self.compile = cfg.rollout.compiled(self.device, dist.launched)  # rollouts and evaluation
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup=optim.warmup_steps, total=cfg.train.steps, min_ratio=optim.min_lr_ratio))
        self.data = DataOrder(len(self.train_set), cfg.train.seed)
        self.step = 0
        if ckpt:
            state = restore_checkpoint(ckpt, self.out_dir, self.optimizer, self.scheduler, self.model, dist, optim)
            self.step = state.step
            self.data = DataOrder(len(self.train_set), cfg.train.seed, **state.data)
            self._say(f"resumed from {ckpt} at step {self.step}")
        elif restart:
            if dist.main:
                trim_logs(self.out_dir, -1)  # its steps will be redone
            self._say(f"{self.out_dir} saved no checkpoint before it stopped: starting it again from step 0")
        self.interrupt: Interrupt | None = None
        self.guard = NonfiniteGuard(cfg.train.max_nonfinite_steps, self.out_dir, cfg.optim.lr, self._say)
        self.stuck = StuckDetector.of_run(cfg, self.out_dir) if dist.main else None  # replays the (cut) metrics.jsonl
        self.log = RunLog(self.out_dir, cfg.to_dict(), cfg.train.steps, cfg.train.samples_per_step,
                          tensorboard=cfg.train.tensorboard, wandb=cfg.train.wandb)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None) -> None:
        """Train until train.steps (or `stop_after` more steps), evaluating and saving on schedule. Ctrl-C or a
        stop signal saves the last completed step, then raises Stopped (grpo/machinery/interrupt.py)."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            (self.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            self.log.open()
        self.interrupt = interrupt = Interrupt(self.dist, cfg.train.stop_signals, cfg.train.grace_seconds)
        last_saved = self.step
        snapshot = self._capture()  # the state after the last completed step
        steps_this_run = 0
        try:
            if cfg.train.eval_every and cfg.train.eval_at_start and self.step == 0:
                self._evaluate()  # step 0: where the run starts from
            while self.step < cfg.train.steps and (stop_after is None or steps_this_run < stop_after):
                t0 = time.perf_counter()
                result = self.train_step()
                interrupt.commit()  # a signal now waits until the step is on the books
                self.step += 1
                steps_this_run += 1
                if self.dist.main:  # a stuck run's warnings (grpo/stuck.py) are marked in its row, said after it
                    stuck = self.stuck.check(self.step, result.metrics)
                    self.log.step(self.step, result.metrics, result.samples(), time.perf_counter() - t0)
                    warn(stuck)
                snapshot = self._capture()
                self.guard.record(self.step, bool(result.metrics["skipped_nonfinite"]))  # grpo/machinery/divergence.py
                interrupt.at_boundary()  # one tiny all-reduce: a stop asked of any rank stops every rank here
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    self._evaluate()
                with interrupt.saving():
                    if (self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps) and self._save(snapshot):
                        last_saved = self.step
            with interrupt.saving():
                if last_saved != self.step:
                    self._save(snapshot)
        except KeyboardInterrupt as e:
            if self.dist.launched and not isinstance(e, Stopped):  # not a stop the ranks agreed on: none can save alone
                self._say(f"\ninterrupted at step {self.step}; the last saved checkpoint is step {last_saved}")
                raise
            # The step in progress was abandoned before its first update, or completed: the weights are `snapshot`'s.
            self._say(f"\n{getattr(e, 'reason', 'interrupted')}: saving the checkpoint of step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            if last_saved != self.step:
                self._save(snapshot)
            raise
        finally:
            interrupt.restore()
            self.log.close()
            self.lock.release()

    def train_step(self) -> StepResult:
        """One GRPO step, its phases in order; the helpers below each do one of them."""
        cfg, N = self.cfg, self.cfg.rollout.prompts_per_step
        timer = PhaseTimer(self.device)
        # 1. generate: N questions x G completions each, scored. With dynamic sampling (DAPO), more
        #    rounds of N questions until N groups have reward spread (or the rounds run out).
        problems, episodes, rounds = self._sample(N, timer)

        # 2. reward -> advantages: A_i = (r_i - mean(r_group)) / std(r_group). A group whose rewards
        #    are all equal has A = 0 everywhere (no signal): only groups with spread are trained on.
        with timer("reward"):
            advantages, has_spread = self._advantages(episodes, rounds)
            keep = [i for i, e in enumerate(episodes) if has_spread[i] and (e.finished or not cfg.grpo.skip_truncated)]

        # 3-5. log-probs, update, optimizer, on the kept episodes (with several ranks: all of them
        #      take part when any has episodes; none when any sampler produced non-finite numbers).
        trained, nonfinite = self._trainable(episodes, keep)
        update, micros = UpdateResult(), []
        if trained:
            batch = (build_batch([episodes[i] for i in keep], advantages[keep], self.device) if keep
                     else filler_batch(self.tokenizer.pad_token_id, self.device))  # a rank with nothing to train
            micros = micro_batches(batch, shared_prefix=cfg.grpo.shared_prefix, micro_batch_size=cfg.grpo.micro_batch_size,
                                   micro_batch_tokens=cfg.grpo.micro_batch_tokens, pad_id=self.tokenizer.pad_token_id,
                                   device=self.device)
            update = self._update(batch, micros, timer)
        self._schedule_step()

        tokens = ([sum(m.num_tokens for m in micros), padded_tokens(batch.episodes, cfg.grpo.micro_batch_size)]
                  if keep and trained else [0, 0])
        metrics = step_metrics(self.cfg, self.dist.sum, episodes, problems, has_spread, keep, rounds, trained, nonfinite,
                               update, tokens, lr=self.scheduler.get_last_lr()[0], compiled=self.compile,
                               seconds=timer.seconds)
        return StepResult(metrics, episodes, problems)

    # -- the phases' helpers ----------------------------------------------------------------------

    def _sample(self, n: int, timer: PhaseTimer) -> tuple[list[Problem], list[Episode], int]:
        """Phase 1: (questions, scored episodes, sampling rounds) of the step."""
        problems, episodes = self._rollout(n, timer, round=0)
        rounds = 1
        while (self.cfg.rollout.dynamic_sampling and rounds <= self.cfg.rollout.max_extra_rounds
               and self._spread_groups(episodes) < n):
            more_problems, more = self._rollout(n, timer, round=rounds, first_group=len(problems))
            problems, episodes, rounds = problems + more_problems, episodes + more, rounds + 1
        return problems, episodes, rounds

    def _advantages(self, episodes: list[Episode], rounds: int) -> tuple[Tensor, Tensor]:
        """Phase 2: (advantage, has spread) per episode (grpo/advantages.py)."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        rewards = torch.tensor([e.reward for e in episodes])
        # The batch std is the whole step's (all ranks' rewards); groups never span ranks.
        batch_rewards = self.dist.gather(rewards) if cfg.grpo.scale_rewards == "batch" else None
        advantages, has_spread = group_advantages(rewards, G, scale=cfg.grpo.scale_rewards, batch_rewards=batch_rewards)
        if cfg.rollout.dynamic_sampling:  # train on the step's first N groups with spread: a full step's worth
            has_spread &= self._first_groups(has_spread.view(-1, G)[:, 0], cfg.rollout.prompts_per_step,
                                             rounds).repeat_interleave(G)
        return advantages, has_spread

    def _trainable(self, episodes: list[Episode], keep: list[int]) -> tuple[int, int]:
        """(episodes the step trains on over all ranks, sampled tokens with non-finite entropy). A
        diverged model shows first in the sampler (NaN entropies): no update from those samples."""
        nonfinite, trained = self.dist.sum([sum(not math.isfinite(x) for e in episodes for x in e.entropies), len(keep)])
        return (0 if nonfinite else int(trained)), int(nonfinite)

    def _schedule_step(self) -> None:
        if self.interrupt is not None:
            self.interrupt.commit()  # the schedule moves on: from here the step completes
        with warnings.catch_warnings():
            # The schedule follows training steps, also those with no update (all groups had zero
            # spread), which torch would flag as "scheduler.step() before optimizer.step()".
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    def _rollout(self, n: int, timer: PhaseTimer, round: int, first_group: int = 0) -> tuple[list[Problem], list[Episode]]:
        """The next n training questions, G samples each (phase "generate"), scored (phase "reward").

        The same question order on every rank, of which each rank samples its own slice. Every
        episode draws from its own random stream, keyed by (seed, step, the question's place in the
        step, sample), so one process and N ranks sample the same episodes."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        problems = self.dist.share([self.train_set[i] for i in self.data.take(n)])
        first = round * n + self.dist.bounds(n)[0]  # this rank's first question, counted over the step
        keys = [stream_key(cfg.train.seed, self.step, first + q, j) for q in range(len(problems)) for j in range(G)]
        with timer("generate"), full_weights(self.model):
            rows, out, tools = sample_groups(self.model, self.tokenizer, problems, cfg.rollout.group_size,
                                             max_new_tokens=cfg.rollout.max_new_tokens, template=self.task.prompt,
                                             sampling=cfg.rollout.sampling, streams=Streams.of(keys, self.device),
                                             progress=cfg.train.progress and self.dist.main,
                                             return_logprobs=cfg.grpo.old_logprobs == "sampler", compile=self.compile,
                                             tools=cfg.rollout.tools, max_tool_calls=cfg.rollout.max_tool_calls)
        overlong = cfg.reward.overlong
        with timer("reward"):
            episodes = score_groups(self.tokenizer, problems, rows, out, template=self.task.prompt,
                                    rewards=self.task.rewards, first_group=first_group, runner=tools,
                                    overlong=(overlong.max_tokens, overlong.buffer) if overlong.max_tokens else None)
        return problems, episodes

    def _say(self, message: str) -> None:
        if self.dist.main:
            print(message, flush=True)

    def _spread_groups(self, episodes: list[Episode]) -> int:
        """How many groups of the step (over all ranks) got different rewards: those with a learning signal."""
        G = self.cfg.rollout.group_size
        return int(self.dist.sum([int(group_advantages(torch.tensor([e.reward for e in episodes]), G)[1].sum()) // G])[0])

    def _first_groups(self, spread: Tensor, n: int, rounds: int) -> Tensor:
        """Which of this rank's groups are among the step's first n with spread (one flag per group).
        The step's order is one process's: round by round, and within a round rank by rank."""
        shares = [end - start for start, end in map(partial(self.dist.bounds, n), range(self.dist.world))]
        per_rank = self.dist.gather(spread.long()).split([rounds * s for s in shares])  # each: its rounds x share
        pieces = [part[r * s:(r + 1) * s] for r in range(rounds) for part, s in zip(per_rank, shares)]
        chosen = (torch.cat(pieces).cumsum(0) <= n).split([len(p) for p in pieces])  # in one process's order
        return spread & torch.cat(chosen[self.dist.rank::self.dist.world])  # this rank's pieces, round by round

    def _update(self, batch: Batch, micros: list[MicroBatch], timer: PhaseTimer) -> UpdateResult:
        """mu passes over the batch; each pass accumulates micro-batch gradients, then steps the optimizer.

        Statistics stay on the device and are read back once at the end; each optimizer step reads
        one pair of numbers (the pass's loss and gradient norm, to refuse a non-finite update)."""
        grpo, mu = self.cfg.grpo, self.cfg.grpo.updates_per_batch
        # The loss normalisers are the whole step's counts (over all ranks), known on the host.
        counts = tuple(int(c) for c in self.dist.sum([batch.completion_tokens, batch.sequences]))
        schedule = in_lockstep(micros, self.dist)
        ref: list[Tensor] | None = None
        if grpo.beta > 0:  # the frozen reference: a copy, or with LoRA the base (adapters off)
            with timer("logprobs"), adapters_disabled(self.model), torch.no_grad():
                ref = [micro_batch_logprobs(self.ref_model or self.model, micro, self.cfg.rollout.temperature,
                                            grpo.logprob_chunk)[0] for micro, _ in schedule]
        weights = top_entropy_mask(batch.entropies, batch.loss_mask, grpo.top_entropy_quantile, gather=self.dist.gather)
        # pi_old of the PPO ratio, one tensor per micro-batch: the first pass runs on the weights that
        # sampled, so its log-probs (detached) are pi_old exactly: ratio 1, plain GRPO's gradient.
        # Later passes (mu > 1) reuse them, so no separate forward pass is needed for them.
        old: list[Tensor] = []
        stats = torch.zeros(3, device=self.device)  # loss, kl, clip fraction, summed over micro-batches
        tis = torch.zeros(2, device=self.device)  # sum and max of pi_old / pi_sampler (grpo.old_logprobs: sampler)
        norms, skipped = [], False
        self.model.train()
        bar = tqdm(total=mu * len(schedule), desc="update", leave=False,
                   disable=not (self.cfg.train.progress and self.dist.main))
        for epoch in range(mu):
            pass_stats = torch.zeros_like(stats)
            with timer("update"):
                for k, (micro, weight) in enumerate(schedule):
                    logp, _ = micro_batch_logprobs(self.model, micro, self.cfg.rollout.temperature, grpo.logprob_chunk)
                    if epoch == 0:
                        old.append(logp.detach())
                    token_weights = weights[micro.episodes, :micro.loss_mask.shape[1]]
                    if batch.sampler_logprobs is not None:  # grpo.old_logprobs: sampler
                        ratio = self._sampler_ratio(micro, old[k], batch.sampler_logprobs)
                        token_weights = token_weights * torch.clamp(ratio, max=grpo.tis_cap)
                        if epoch == 0:
                            tis = torch.stack([tis[0] + ratio.sum(), torch.maximum(tis[1], ratio.max())])
                    pass_stats += self._micro_step(micro, batch, logp, old[k], None if ref is None else ref[k],
                                                   token_weights, counts, weight)
                    bar.update()
            stats += pass_stats / mu
            with timer("optimizer"):
                norm, finite = self._optimizer_step(pass_stats[0])
            norms.append(norm)
            if not finite:  # not applied: the weights stay those of the last good update
                skipped = True
                break
        bar.close()
        self.model.eval()
        loss, kl, clip = self.dist.sum(stats.tolist())  # the one read-back of the step's statistics
        result = UpdateResult(UpdateStats(loss, kl, clip, sum(norms) / len(norms)), skipped)
        if batch.sampler_logprobs is not None:  # how far the sampler's numbers are from the trainer's (this rank's)
            total, largest = tis.tolist()
            result.tis = {"tis_ratio_mean": total / max(batch.completion_tokens, 1), "tis_ratio_max": largest}
        return result

    @staticmethod
    def _sampler_ratio(micro: MicroBatch, old: Tensor, sampler_logprobs: Tensor) -> Tensor:
        """pi_old / pi_sampler per completion token of the micro-batch (e, width); 0 on padding."""
        return truncated_importance_weights(old, sampler_logprobs[micro.episodes, :old.shape[1]], micro.loss_mask,
                                            cap=float("inf"))

    def _micro_step(self, micro: MicroBatch, batch: Batch, logp: Tensor, old: Tensor, ref: Tensor | None,
                    token_weights: Tensor, counts: tuple[int, int], weight: float = 1.0) -> Tensor:
        """Loss of one micro-batch and its backward (gradients accumulate); returns its share of the
        step's statistics (loss, kl, clip fraction) as a device tensor (3,). `counts` = (completion
        tokens, sequences) of the whole step; `weight` 0 = a filler pass."""
        num_tokens, num_sequences = counts
        # The normalisers are the whole batch's counts, so the micro-batch losses add up to the batch loss.
        loss, stats = policy_loss(logp, old, batch.advantages[micro.episodes], micro.loss_mask, self.loss,
                                  ref_logp=ref, num_sequences=num_sequences, num_tokens=num_tokens,
                                  token_weights=token_weights)
        (loss * (weight * self.dist.world)).backward()  # x N: FSDP averages over ranks
        share = weight * micro.completion_tokens / max(num_tokens, 1)  # per-token statistics weigh by token count
        kl = stats.kl if stats.kl is not None else torch.zeros_like(stats.loss)
        return torch.stack([weight * stats.loss, kl * share, (stats.clip_frac_low + stats.clip_frac_high) * share])

    def _optimizer_step(self, loss: Tensor) -> tuple[float, bool]:
        """Clip the gradient norm, AdamW step, clear the gradients. Returns the norm before clipping
        and whether the update was applied: a non-finite loss or gradient norm (a too-high learning
        rate, an fp16 overflow, a bad batch) skips it, so non-finite numbers never reach the weights."""
        votes = self.interrupt.first_update() if self.interrupt else []  # from the first update on, the step completes
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()  # sharded: the norm over all ranks
        norm, total = torch.stack([grad_norm.float(), self.dist.world * loss.float()]).tolist()  # one read per pass
        total, *votes = self.dist.sum([total, *votes])  # with every rank's stop votes (grpo/machinery/interrupt.py)
        if self.interrupt:
            self.interrupt.abandon_if(votes)  # too late to finish a stop: every rank abandons the step, before any update
        finite = math.isfinite(total) and math.isfinite(norm)  # every rank decides alike
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, finite

    # -- checkpoints, evaluation, logs ------------------------------------------------------------

    def _capture(self) -> TrainingState:
        return TrainingState.capture(self.step, self.data.state())

    def _save(self, state: TrainingState) -> bool:
        """Write the checkpoint of `state`, unless the step had non-finite numbers or the weights are
        not finite (a diverging run): then nothing is written, and the newest checkpoint stays good."""
        bad = self.dist.sum([nonfinite_tensors(p for p in self.model.parameters() if p.requires_grad)])[0]
        if self.guard.streak or bad:
            self._say(f"not saving step {state.step}: its numbers are not finite (the newest checkpoint stays the last good one)")
            return False
        path = save_checkpoint(self.out_dir, state, self.model, self.tokenizer, self.optimizer, self.scheduler,
                               self.cfg.to_dict(), self.dist, keep=self.cfg.train.keep_checkpoints)
        self._say(f"saved {path}")
        return True

    def _evaluate(self) -> None:
        """Accuracy on the eval questions (greedy, or mean@k: train.eval_*), logged as eval_* (over all ranks)."""
        cfg = self.cfg
        summary = evaluate_on_ranks(self.model, self.tokenizer, self.eval_set, self.dist, max_new_tokens=cfg.rollout.max_new_tokens,
                                    template=self.task.prompt, rewards=self.task.rewards, seed=cfg.train.seed,
                                    sampling=cfg.train.eval_sampling, samples=cfg.train.eval_samples,
                                    batch_size=cfg.rollout.prompts_per_step * cfg.rollout.group_size,
                                    progress=cfg.train.progress and self.dist.main, compile=self.compile,
                                    tools=cfg.rollout.tools, max_tool_calls=cfg.rollout.max_tool_calls)
        k = cfg.train.eval_samples
        kind = f"mean@{k} {summary['accuracy']:.3f}, pass@{k} {summary['pass_at_k']:.3f}" if k > 1 else \
            f"accuracy {summary['accuracy']:.3f}"
        self._say(f"eval step {self.step}: {kind} on {summary['questions']} test questions "
                  f"(mean length {summary['length']:.0f}, truncated {summary['truncated']:.2f})")
        if self.dist.main:
            self.log.append("metrics.jsonl", {"step": self.step, **{f"eval_{k}": v for k, v in summary.items()}})


def _same_dir(a: Path | None, b: Path) -> bool:
    return a is not None and a.resolve() == b.resolve()
