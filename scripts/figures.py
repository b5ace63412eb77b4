"""The figures of docs/walkthrough.md, drawn from the rules they picture (needs matplotlib).

    python scripts/figures.py            # -> docs/figures/{kv_cache,clipped_objective,shared_prefix_mask}.png

kv_cache            which cache slots a batch of left-padded prompts fills at prefill and at each
                    decode step, and which keys each row's newest query may read
clipped_objective   the PPO-clip surrogate min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) against the
                    ratio r, for A > 0 and A < 0, with DAPO's clip-higher (eps_low 0.2, eps_high 0.28)
shared_prefix_mask  the attention of one packed row [prompt | c_1 | c_2 | c_3]: the prompt is causal,
                    each completion sees the prompt and its own earlier tokens, never another completion
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def kv_cache_slots(prompt_lengths: list[int], steps: int, finished_at: dict[int, int]) -> np.ndarray:
    """(rows, width) grid: 0 = empty, 1 = left padding (never attended), 2 = prompt (prefill),
    3 + s = the token written at decode step s. A row that finished keeps its slots but writes padding
    (1) from then on: one shared write position for all rows, as in the sampler's cache."""
    P = max(prompt_lengths)
    grid = np.zeros((len(prompt_lengths), P + steps), dtype=int)
    for r, n in enumerate(prompt_lengths):
        grid[r, :P - n] = 1  # left padding: the prompts end together, so decoding writes one column for all
        grid[r, P - n:P] = 2
        for s in range(steps):
            grid[r, P + s] = 1 if s >= finished_at.get(r, steps) else 3 + s
    return grid


def clipped_surrogate(ratio: np.ndarray, advantage: float, eps_low: float, eps_high: float) -> np.ndarray:
    """min(r A, clip(r, 1 - eps_low, 1 + eps_high) A): the per-token objective GRPO maximises."""
    return np.minimum(ratio * advantage, np.clip(ratio, 1 - eps_low, 1 + eps_high) * advantage)


def shared_prefix_mask(prompt: int, completions: list[int]) -> np.ndarray:
    """(T, T) boolean: may query token i read key token j, in the packed row [prompt | c_1 | ... ]."""
    T = prompt + sum(completions)
    mask = np.zeros((T, T), dtype=bool)
    mask[:prompt, :prompt] = np.tril(np.ones((prompt, prompt), dtype=bool))
    start = prompt
    for n in completions:
        mask[start:start + n, :prompt] = True  # the shared prompt
        mask[start:start + n, start:start + n] = np.tril(np.ones((n, n), dtype=bool))  # itself, causally
        start += n
    return mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    args.out.mkdir(parents=True, exist_ok=True)

    # 1. The KV cache during decode.
    steps = 5
    grid = kv_cache_slots([3, 6, 4], steps, finished_at={2: 3})
    colors = ["white", "#dddddd", "#7aa6d6"] + [plt.cm.Oranges(0.35 + 0.6 * s / steps) for s in range(steps)]
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.imshow(grid, cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1, aspect="equal")
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            label = {1: "pad", 2: "p"}.get(grid[r, c], f"t{grid[r, c] - 2}" if grid[r, c] >= 3 else "")
            ax.text(c, r, label, ha="center", va="center", fontsize=7)
    P = 6
    ax.axvline(P - 0.5, color="black", lw=1)
    ax.set_xticks(range(grid.shape[1]), [str(i) for i in range(grid.shape[1])], fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [f"row {r}" for r in range(grid.shape[0])], fontsize=8)
    ax.set_xlabel("cache slot (prefill writes slots 0-5 at once; decode step s writes slot 5 + s for every row)", fontsize=8)
    ax.set_title("KV cache: left-padded prompts, one new column per decode step; row 2 stopped after t3", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "kv_cache.png", dpi=130)
    plt.close(fig)

    # 2. The clipped objective.
    r = np.linspace(0.4, 1.8, 400)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharex=True)
    for ax, A in zip(axes, (1.0, -1.0)):
        ax.plot(r, r * A, "--", color="gray", label="r A (unclipped)")
        ax.plot(r, clipped_surrogate(r, A, 0.2, 0.28), color="C0", lw=2, label="min(r A, clip(r) A)")
        for x in (0.8, 1.28):
            ax.axvline(x, color="C3", lw=0.8, ls=":")
        ax.set_title(f"A {'> 0' if A > 0 else '< 0'}: " + ("flat (no gradient) above 1 + eps_high = 1.28" if A > 0
                     else "flat (no gradient) below 1 - eps_low = 0.8"), fontsize=9)
        ax.set_xlabel("ratio r = pi_theta / pi_old", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "clipped_objective.png", dpi=130)
    plt.close(fig)

    # 3. The shared-prefix attention mask.
    prompt, completions = 4, [3, 2, 3]
    mask = shared_prefix_mask(prompt, completions)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.imshow(mask, cmap=ListedColormap(["white", "#3b6fb6"]))
    edges = np.cumsum([prompt, *completions])[:-1] - 0.5
    for e in edges:
        ax.axhline(e, color="gray", lw=0.6)
        ax.axvline(e, color="gray", lw=0.6)
    names = ["p"] * prompt + [f"c{i + 1}" for i, n in enumerate(completions) for _ in range(n)]
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("key", fontsize=8)
    ax.set_ylabel("query", fontsize=8)
    ax.set_title("one row [prompt | c1 | c2 | c3]: who sees whom", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "shared_prefix_mask.png", dpi=130)
    plt.close(fig)
    print(f"wrote {', '.join(str(args.out / n) for n in ('kv_cache.png', 'clipped_objective.png', 'shared_prefix_mask.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
