"""Compare GRPO variants on the offline quick tiny recipe: variants x seeds, one table, one plot.

    python scripts/ablate.py                            # baseline,mu2,gspo,cispo,dynamic,overlong x seeds 0-4
    python scripts/ablate.py --list                     # the variants and their settings

For each seed the recipe's stages before GRPO (tokenizer, tiny model, data, SFT warm start and its
held-out evaluation) run once, as the `baseline` variant; every other variant reuses them
(`tiny_recipe.py --reuse`) and runs only GRPO (`train.py` with configs/tiny.yaml, the quick
recipe's 80 steps, and the variant's `--set` overrides) and the held-out evaluation. Runs go to
`--out/seed<S>/<variant>/`, two at a time on two cores (`--jobs`), each in its own process with one
thread, and a finished run is reused when the script is run again.

Printed and written to `--out/ablation.md` / `ablation.json`: per variant, held-out sampled
accuracy (mean@8 at T=1, the expected reward GRPO maximises) after GRPO, and for sampled and greedy
accuracy the change from the SFT start with its 95% confidence interval over seeds (Student's t),
then the paired difference to its reference (the baseline; mu2 for gspo and cispo), seed by seed
(each seed's variants share one SFT start, so the pairing removes the start's luck), marked '*' when
its interval excludes 0; then how many seeds a difference of 2, 5 or 10 points needs, from the
spread observed (80% power), and the odds of a '*' by chance among that many comparisons.
`--out/ablation.png` draws held-out greedy accuracy against the step for each variant (mean over
seeds; evaluated every 20 steps on the 200 held-out questions).

Simplifications: a 0.26M-parameter model on synthetic multiplication problems and 80 steps: what
helps here need not help a 3B model on GSM8K; intervals assume the seeds' results are normal, and
are not corrected for making several comparisons. GSPO and CISPO only differ from GRPO when the
ratio leaves 1, so their variants use two updates per batch (mu = 2) and are read against `mu2`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from qwen2.errors import InputError, run_command

ROOT = Path(__file__).resolve().parents[1]

# name -> (what it is, train.py --set overrides on top of the quick recipe)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the quick recipe as it is (token-level PPO clip, DAPO clip-higher, token-mean, mu = 1)", []),
    "mu2": ("two updates per batch (mu = 2): the reference for gspo and cispo", ["grpo.updates_per_batch=2"]),
    "gspo": ("GSPO: one clipped ratio per sequence (eps 3e-4 / 4e-4), mu = 2",
             ["grpo.ratio_level=sequence", "grpo.updates_per_batch=2"]),
    "cispo": ("CISPO: clipped ratio as a stop-gradient weight on log pi, mu = 2",
              ["grpo.loss=cispo", "grpo.updates_per_batch=2"]),
    "dynamic": ("DAPO dynamic sampling: up to 2 more rounds until 12 groups have spread",
                ["rollout.dynamic_sampling=true", "rollout.max_extra_rounds=2"]),
    "overlong": ("DAPO soft overlong punishment: -1 at 40 tokens, from 24 on", ["reward.overlong.max_tokens=40",
                                                                                "reward.overlong.buffer=16"]),
    "dr_grpo": ("Dr. GRPO: no std scaling, per-sequence sums over the budget",
                ["grpo.scale_rewards=none", "grpo.aggregation=seq_mean_token_sum_norm"]),
    "batch_std": ("advantages divided by the batch's reward std", ["grpo.scale_rewards=batch"]),
    "top_entropy": ("only the top 20% of tokens by entropy get gradient", ["grpo.top_entropy_quantile=0.2"]),
    "lora": ("LoRA rank 8 on every projection (alpha 16), 10x the learning rate: the base stays frozen",
             ["model.lora.rank=8", "model.lora.alpha=16", "optim.lr=3e-3"]),
}
# Whom each variant is compared with, seed by seed: the variant that differs from it in one thing
# only (GSPO and CISPO need mu = 2 to differ from GRPO at all, so they are read against mu2).
REFERENCE = {"gspo": "mu2", "cispo": "mu2"}
# The quick recipe has no evaluation during GRPO; the ablation plots one every 20 steps.
EVAL = ["train.eval_every=20", "train.eval_size=200"]


def run_variant(out: Path, seed: int, variant: str, base: Path | None) -> dict:
    """One quick recipe run in its own process (reusing `base`'s stages before GRPO); returns its results."""
    target = out / f"seed{seed}" / variant
    cmd = [sys.executable, str(ROOT / "scripts" / "tiny_recipe.py"), "--quick", "--seed", str(seed), "--out",
           str(target), "--no-plot", "--threads", "1", *[a for o in EVAL + VARIANTS[variant][1] for a in ("--set", o)]]
    if base is not None:
        cmd += ["--reuse", str(base)]
    log = target.with_suffix(".log")
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        raise InputError(f"{variant}, seed {seed} failed (exit {code}); see {log}")
    results = json.loads((target / "results.json").read_text())
    results["wall_seconds"] = time.perf_counter() - t0
    evals = [json.loads(line) for line in (target / "grpo" / "metrics.jsonl").read_text().splitlines()]
    results["curve"] = [(r["step"], r["eval_accuracy"]) for r in evals if "eval_accuracy" in r]
    print(f"{variant:12s} seed {seed}: sampled {results['before']['sampled']['accuracy']:.3f} -> "
          f"{results['after']['sampled']['accuracy']:.3f}, greedy {results['before']['accuracy']:.3f} -> "
          f"{results['after']['accuracy']:.3f} ({results['seconds'].get('grpo', 0):.0f}s GRPO)", flush=True)
    return results


# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1 for n seeds), from the usual
# table; between 30 and 120 interpolated linearly in 1 / df (as tables are read), 1.96 in the limit.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
       29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980, math.inf: 1.960}


def t95(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` >= 1 degrees of freedom."""
    if df in T95:
        return T95[df]
    lo, hi = max(d for d in T95 if d < df), min(d for d in T95 if d > df)
    w = (1 / lo - 1 / df) / (1 / lo - 1 / hi)  # 1 / inf = 0
    return T95[lo] + w * (T95[hi] - T95[lo])


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% confidence interval) over seeds: t(n - 1) x sample std / sqrt(n).
    One value has no interval (half-width inf): a difference needs at least two seeds."""
    n = len(values)
    m = statistics.mean(values)
    return m, (t95(n - 1) * statistics.stdev(values) / n ** 0.5 if n > 1 else float("inf"))


def seeds_needed(sd: float, difference: float) -> int:
    """Seeds for a paired difference of `difference` to show at 95% with 80% power, when the paired
    difference varies by `sd` from seed to seed: the smallest n >= 2 with
    (t(n - 1) + 0.84) x sd / sqrt(n) <= difference (0.84: the 80% quantile of the normal)."""
    n = 2
    while (t95(n - 1) + 0.84) * sd / n ** 0.5 > difference:
        n += 1
    return n


def interval(values: list[float]) -> str:
    """'+12.8 ± 3.1' in points (a 95% interval over seeds)."""
    m, h = mean_ci(values)
    return f"{100 * m:+.1f} ± {100 * h:.1f}" if math.isfinite(h) else f"{100 * m:+.1f}"


def paired(values: list[float], base: list[float]) -> str:
    """The seed-by-seed difference to a reference with its interval; '*' when the interval excludes 0."""
    diffs = [v - b for v, b in zip(values, base)]
    m, h = mean_ci(diffs)
    return interval(diffs) + (" *" if abs(m) > h else "")


def reference(name: str, runs: dict[str, list[dict]]) -> str | None:
    """The variant `name` is compared with (REFERENCE, else baseline), if it ran; None for the baseline."""
    if name == "baseline":
        return None
    return next((ref for ref in (REFERENCE.get(name), "baseline") if ref in runs), None)


def changes(results: list[dict], key: str) -> list[float]:
    """Per seed: held-out accuracy after GRPO minus the SFT start's (`key`: sampled or greedy)."""
    def acc(r: dict) -> float:
        return r["sampled"]["accuracy"] if key == "sampled" else r["accuracy"]
    return [acc(r["after"]) - acc(r["before"]) for r in results]


def table(runs: dict[str, list[dict]]) -> str:
    seeds = len(next(iter(runs.values())))
    lines = [f"| variant | sampled accuracy after, % | sampled change from SFT, points (95% CI, {seeds} seeds) "
             "| minus reference, paired | greedy change, points | minus reference, paired | reference | GRPO seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, results in runs.items():
        after = statistics.mean(r["after"]["sampled"]["accuracy"] for r in results)
        ref = reference(name, runs)
        cells = [name, f"{100 * after:.1f}"]
        for key in ("sampled", "greedy"):
            cells.append(interval(changes(results, key)))
            cells.append(paired(changes(results, key), changes(runs[ref], key)) if ref else "")
        cells.append(ref or "")
        cells.append(f"{statistics.mean(r['seconds'].get('grpo', 0.0) for r in results):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_advice(runs: dict[str, list[dict]]) -> str:
    """How many seeds a difference needs, from the spread of the paired differences observed here,
    and how likely a '*' is by chance alone when there are several comparisons."""
    pairs = [(rs, runs[ref]) for name, rs in runs.items() if (ref := reference(name, runs)) and len(rs) > 2]
    if not pairs:
        return ""
    sd = statistics.median(statistics.stdev([v - b for v, b in zip(changes(rs, "sampled"), changes(ref_rs, "sampled"))])
                           for rs, ref_rs in pairs)
    sizes = ", ".join(f"{d} points: {seeds_needed(sd, d / 100)} seeds" for d in (2, 5, 10))
    k = 2 * len(pairs)  # sampled and greedy
    return (f"Paired differences to the reference vary by {100 * sd:.1f} points (std over seeds, median over "
            f"variants). To show a difference at 95% with 80% power: {sizes}. '*': the interval excludes 0; with "
            f"{k} paired intervals, about {1 - 0.95 ** k:.0%} odds that at least one '*' is chance alone when no "
            "variant differs.")


def plot(runs: dict[str, list[dict]], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed, so no plot was drawn: pip install matplotlib")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, results in runs.items():
        steps = [s for s, _ in results[0]["curve"]]
        mean = [statistics.mean(r["curve"][i][1] for r in results) for i in range(len(steps))]
        ax.plot(steps, mean, "o-", label=name, markersize=3)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("held-out greedy accuracy (mean over seeds)")
    ax.set_title("GRPO variants on the quick tiny recipe")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="baseline,mu2,gspo,cispo,dynamic,overlong", help="comma-separated, see --list")
    ap.add_argument("--seeds", default="0,1,2,3,4",
                    help="comma-separated seeds (5 show a ~5-point difference here; a 2-point one needs ~11: the "
                         "script prints how many from the spread it measures)")
    ap.add_argument("--out", default="runs/ablate", help="output directory (runs are reused when present)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, (what, overrides) in VARIANTS.items():
            print(f"{name:12s} {what}\n{'':12s} {' '.join('--set ' + o for o in overrides) or '(no overrides)'}")
        return {}
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant {', '.join(unknown)}: valid are {', '.join(VARIANTS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds or args.jobs < 1:
        raise InputError("give at least one seed and --jobs >= 1")
    out = Path(args.out)
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with ThreadPoolExecutor(args.jobs) as pool:
        # The baseline of each seed first: it builds the stages the other variants reuse.
        bases = {s: pool.submit(run_variant, out, s, "baseline", None) for s in seeds}
        futures = {}
        for s in seeds:
            bases[s] = bases[s].result()
            for v in variants:
                if v != "baseline":
                    futures[v, s] = pool.submit(run_variant, out, s, v, out / f"seed{s}" / "baseline")
        for v in variants:
            runs[v] = [bases[s] if v == "baseline" else futures[v, s].result() for s in seeds]
    elapsed = time.perf_counter() - t0
    text = table(runs) + ("\n\n" + seeds_advice(runs) if seeds_advice(runs) else "")
    header = (f"GRPO variants on the quick tiny recipe (scripts/ablate.py, {len(seeds)} seeds: {args.seeds}); "
              f"torch {runs[variants[0]][0]['torch']}, one thread per run, {args.jobs} at a time; "
              f"{time.strftime('%Y-%m-%d')}; total {elapsed / 60:.1f} min")
    print(f"\n{header}\n\n{text}")
    (out / "ablation.md").write_text(f"{header}\n\n{text}\n")
    (out / "ablation.json").write_text(json.dumps({v: [{k: r[k] for k in ("seed", "before", "after", "seconds", "curve")}
                                                       for r in rs] for v, rs in runs.items()}, indent=2) + "\n")
    if plot(runs, out / "ablation.png"):
        print(f"wrote {out / 'ablation.png'}")
    return runs


if __name__ == "__main__":
    sys.exit(run_command(main))
