"""Plot a training run's reward and accuracy curves from its metrics.jsonl into a PNG.

    python scripts/plot.py runs/tiny/grpo/metrics.jsonl -o curve.png
    python scripts/plot.py runs/gsm8k/metrics.jsonl --smooth 10 --baseline 0.31

train.py appends one JSON line per step (reward, accuracy, ... of that step's rollouts) and one per
evaluation (eval_accuracy, ... on held-out questions, greedy; step 0 is the model before training,
with train.eval_at_start). Left panel: mean rollout reward and accuracy per step (thin) with a
moving average (thick). Right panel: held-out greedy accuracy at each evaluation; --baseline draws
a step-0 point for runs that have none.

matplotlib is an optional extra (pip install matplotlib, or pip install -e .[plot]); without it the
script prints that hint and exits with status 0 having written nothing, so pipelines keep going.
Simplifications: one run per plot, steps on the x axis (not time or samples).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from qwen2.errors import InputError, MissingInput, run_command


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step records, evaluation records) of a metrics.jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path} not found: pass the metrics.jsonl that train.py wrote into train.out_dir")
    steps, evals = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number}: not valid JSON (a run killed mid-write? delete the line)") from None
        if "eval_accuracy" in row:
            evals.append(row)
        elif "reward" in row:
            steps.append(row)
    if not steps and not evals:
        raise InputError(f"{path} has no step or eval records: is it a train.py metrics.jsonl?")
    return steps, evals


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(steps: list[dict], evals: list[dict], out: str | Path, *, smooth: int = 5, baseline: float | None = None,
         title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["step"] for r in steps]
    for key, color in (("reward", "tab:blue"), ("accuracy", "tab:orange")):
        y = [r[key] for r in steps]
        left.plot(x, y, color=color, alpha=0.3, linewidth=1)
        left.plot(x, moving_average(y, smooth), color=color, linewidth=2, label=f"{key} (mean of {smooth} steps)")
    left.set_xlabel("step")
    left.set_title("rollouts (temperature sampling, training questions)")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend(loc="lower right")

    ex = [r["step"] for r in evals]
    ey = [r["eval_accuracy"] for r in evals]
    if baseline is not None and 0 not in ex:  # a run with eval_at_start has its own step-0 point
        ex, ey = [0, *ex], [baseline, *ey]
    right.plot(ex, ey, "o-", color="tab:green")
    for sx, sy in zip(ex, ey):
        right.annotate(f"{sy:.0%}", (sx, sy), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if not ex:  # train.eval_every = 0
        right.text(0.5, 0.5, "no held-out evaluation in this run\n(train.eval_every = 0)", ha="center", va="center",
                   transform=right.transAxes, color="gray")
        right.set_xlim(0, max(x, default=1))
    right.set_xlabel("step")
    right.set_ylim(0, 1)
    right.set_title("held-out accuracy (greedy)")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", help="metrics.jsonl written by train.py")
    ap.add_argument("-o", "--out", default=None, help="PNG path (default: curve.png next to metrics.jsonl)")
    ap.add_argument("--smooth", type=int, default=5, help="moving-average window in steps (default 5)")
    ap.add_argument("--baseline", type=float, default=None, help="held-out accuracy before training, drawn at step 0")
    ap.add_argument("--title", default=None, help="figure title (default: the run directory's name)")
    args = ap.parse_args(argv)
    if args.smooth < 1:
        ap.error("--smooth must be >= 1")
    steps, evals = read_metrics(args.metrics)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print('matplotlib is not installed, so no plot was drawn: pip install matplotlib (or pip install -e ".[plot]")')
        return None
    out = plot(steps, evals, args.out or Path(args.metrics).with_name("curve.png"), smooth=args.smooth,
               baseline=args.baseline, title=args.title or f"GRPO run {'/'.join(Path(args.metrics).resolve().parent.parts[-2:])}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(run_command(main))
