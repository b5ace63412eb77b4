"""A run that says when it is stuck: one warning line, and a field in metrics.jsonl, when the last
steps show that GRPO can learn nothing from what it samples.

GRPO learns only from differences within a group, A_i = (r_i - mean(r_group)) / std(r_group), so
anything that makes a group's G rewards equal makes its gradient 0. Four causes show in a step's
metrics long before a flat accuracy curve does:

  truncated    most completions hit rollout.max_new_tokens: cut off before their answer, they all
               score alike (a budget too small for the task's answers)
  no_spread    most groups got one reward for all G samples: every advantage is 0. All right = too
               easy; all wrong = too hard, or the reward cannot read the answers; right and wrong
               answers scored alike = the reward does not tell them apart
  entropy      the policy's entropy at sampling collapsed: its G samples of a question are (nearly)
               the same text, so are their rewards
  flat_reward  the mean reward stayed within a tiny range for many steps: nothing moves it

Each cause is judged over the last `window` steps (flat_reward over the last `flat_steps`) and
warned about at most once every `every` steps while it lasts (train.stuck in grpo/config.py). The
main process prints the warnings to stderr and marks them in the step's metrics.jsonl row
(`stuck_<cause>: 1`). That file is also the detector's memory: `--resume` cuts it back to the
checkpoint's step (grpo/machinery/checkpoint.py), and the detector replays it, so a resumed run warns
exactly as the uninterrupted one would, with nothing added to the checkpoint.

Simplifications: fixed thresholds on window means (no trend tests); rows logged before these
metrics existed (an older version's run) are not replayed.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, StuckConfig
    from .rollout import Episode

CAUSES = ("truncated", "no_spread", "entropy", "flat_reward")
# What the detector keeps of a step's row: all it judges by (grpo/metrics.py writes them).
FIELDS = ("step", "reward", "truncated", "length", "entropy", "groups",
          "zero_spread_right", "zero_spread_wrong", "zero_spread_mixed")


def same_reward_groups(episodes: Sequence[Episode], group_size: int) -> tuple[int, int, int]:
    """(all right, all wrong, mixed): the groups whose G rewards are all equal, by whether their
    answers were all right, all wrong, or both (then the reward ignored correctness). Counted on
    the rewards themselves, so dynamic sampling's choice of groups (grpo/trainer.py) does not enter."""
    counts = [0, 0, 0]
    for start in range(0, len(episodes), group_size):  # episodes are laid out group by group
        group = episodes[start:start + group_size]
        if len({e.reward for e in group}) > 1:
            continue  # spread: a learning signal
        correct = sum(e.score.correct for e in group)
        counts[0 if correct == len(group) else 1 if correct == 0 else 2] += 1
    return counts[0], counts[1], counts[2]


class StuckDetector:
    """Fed each step's metrics (`check`), returns the warning lines of the causes that hold."""

    def __init__(self, cfg: StuckConfig, max_new_tokens: int, history: Iterable[dict[str, Any]] = ()):
        """`history`: the run's metrics.jsonl rows so far (eval rows are skipped), replayed."""
        self.cfg, self.max_new_tokens = cfg, max_new_tokens
        self.rows: deque[dict[str, Any]] = deque(maxlen=max(cfg.window, cfg.flat_steps))
        self.warned: dict[str, int] = {}  # cause -> the last step it was warned about
        for row in history:
            if all(k in row for k in FIELDS):
                self.rows.append({k: row[k] for k in FIELDS})
                self.warned.update({c: row["step"] for c in CAUSES if row.get(f"stuck_{c}")})

    @classmethod
    def of_run(cls, cfg: Config, out_dir: Path) -> StuckDetector:
        """The detector of the run in `out_dir` as it stood after the last step in its metrics.jsonl."""
        path, rows = Path(out_dir) / "metrics.jsonl", []
        if cfg.train.stuck.enabled and path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by a killed run: not a step the run completed
                    pass
        return cls(cfg.train.stuck, cfg.rollout.max_new_tokens, rows)

    def check(self, step: int, metrics: dict[str, Any]) -> list[str]:
        """The warnings of `step`, one line per cause, each also marked in `metrics` (the step's row)."""
        if not self.cfg.enabled:
            return []
        self.rows.append({"step": step, **{k: metrics[k] for k in FIELDS[1:]}})
        lines = []
        for cause, line in self._causes().items():
            if cause in self.warned and step - self.warned[cause] < self.cfg.every:
                continue  # said recently: once every `every` steps while it lasts
            self.warned[cause] = step
            metrics[f"stuck_{cause}"] = 1
            lines.append(f"warning: {line}")
        return lines

    def _causes(self) -> dict[str, str]:
        """cause -> what it is and what to do, for each cause that holds now."""
        cfg, rows, found = self.cfg, list(self.rows), {}
        last = rows[-cfg.window:] if len(rows) >= cfg.window else []  # judged only over a full window
        if last:
            steps = f"steps {last[0]['step']}-{last[-1]['step']}" if len(last) > 1 else f"step {last[0]['step']}"
            truncated = _mean(r["truncated"] for r in last)
            if truncated > cfg.truncated:
                found["truncated"] = (
                    f"{truncated:.0%} of the completions of {steps} hit rollout.max_new_tokens={self.max_new_tokens} "
                    f"(mean length {_mean(r['length'] for r in last):.0f} tokens): cut off before they answer, "
                    f"they cannot earn an answer's reward; raise it (e.g. --set rollout.max_new_tokens="
                    f"{2 * self.max_new_tokens})")
            groups = sum(r["groups"] for r in last)
            right, wrong, mixed = (sum(r[f"zero_spread_{k}"] for r in last) for k in ("right", "wrong", "mixed"))
            if (right + wrong + mixed) / max(groups, 1) > cfg.no_spread:
                found["no_spread"] = (
                    f"{right + wrong + mixed} of the {groups} groups of {steps} got one reward for all their "
                    f"samples, so their advantages are 0 and they teach nothing ({right} all right, {wrong} all "
                    f"wrong, {mixed} right and wrong answers scored alike): {_no_spread_advice(right, wrong, mixed)}")
            entropy = _mean(r["entropy"] for r in last)
            if entropy < cfg.entropy:
                found["entropy"] = (
                    f"the policy's entropy at sampling averaged {entropy:.3f} nats per token over {steps} (below "
                    f"train.stuck.entropy={cfg.entropy:g}): it has collapsed, so the samples of a question are "
                    "nearly the same text and score alike; lower optim.lr or continue from an earlier checkpoint "
                    "(with grpo.updates_per_batch > 1, a higher grpo.epsilon_high resists it)")
        if len(rows) >= cfg.flat_steps:
            rewards = [r["reward"] for r in rows[-cfg.flat_steps:]]
            if max(rewards) - min(rewards) < cfg.flat_range:
                found["flat_reward"] = (
                    f"the mean reward stayed between {min(rewards):.4f} and {max(rewards):.4f} for the last "
                    f"{cfg.flat_steps} steps ({rows[-cfg.flat_steps]['step']}-{rows[-1]['step']}): nothing moves it; "
                    "look at what the completions score in samples.jsonl and check reward.weights")
        return found


def _no_spread_advice(right: int, wrong: int, mixed: int) -> str:
    """What to do, for the most common kind of group without spread."""
    if right >= max(wrong, mixed):
        return "the questions are too easy for this model: use harder ones"
    if wrong >= mixed:
        return ("the questions are too hard for this model, or the reward cannot read its answers (look at "
                "samples.jsonl): easier questions, a warm start (scripts/sft.py), a larger rollout.group_size "
                "or rollout.dynamic_sampling=true")
    return "the reward does not tell right answers from wrong ones: check reward.weights and the reward functions"


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def warn(lines: list[str]) -> None:
    """Print the warnings of a step (the main process's job)."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)
