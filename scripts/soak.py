"""Soak: does a long run grow? Memory (RSS), open file descriptors, step time and the compiled
decode's compiles and cache allocations, at the start and at the end of a long tiny run with
evaluation and checkpoints, in each way the trainer runs on a CPU.

    python scripts/soak.py --short                   # 200 steps a mode, ~1-2 min a mode on an idle core
    python scripts/soak.py                           # 2000 steps a mode, ~10-20 min in all
    python scripts/soak.py --modes compiled --steps 5000 --out runs/soak

Modes: `eager` (one process, rollout.compile=false), `compiled` (one process, rollout.compile=true),
`torchrun` (2 gloo CPU ranks, `python -m torch.distributed.run --nproc_per_node=2`, eager: the
compiled decode runs with one process only, grpo/machinery/distributed.py). Each runs
tests/dist_worker.py train, which is train.py plus the test reward `odd_length` that a random model's
completions vary on (so every step updates), on the tests' tiny random Qwen2 (tests/tiny_run.py:
2 layers, width 48) and synthetic problems, evaluating and saving every `--every` steps (2 checkpoints
kept). Every `--interval` seconds it reads, for each process of the run (all ranks; not torchrun's
launcher), VmRSS from /proc/<pid>/status and the entries of /proc/<pid>/fd, and the steps written to
metrics.jsonl so far. "start" is the median over the steps just after every phase has run once (after
the first evaluation and checkpoint: the compiles, the allocator's high-water marks, the checkpoint
code's imports), "end" the median over the last ones; step time is metrics.jsonl's time_step over
the same windows; the RSS trend is the least-squares slope over the second half of the run
(informative: over a short run its noise is tens of MiB per 1000 steps). Flagged: RSS growing more than max(--rss-noise MiB, 3%), any lasting extra file
descriptor, a decode compile or cache allocation after the start (compiled mode), and step time
slower by more than 25% (meaningless on a shared machine). Linux only (/proc). Writes the table and
the samples to OUT/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("eager", "compiled", "torchrun")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="200 steps a mode, evaluating and saving every 10")
    ap.add_argument("--steps", type=int, default=None, help="steps a mode (default 2000, --short 200)")
    ap.add_argument("--every", type=int, default=None, help="evaluate and save every N steps (default steps / 20)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--out", default="runs/soak", help="work directory (replaced): model, data, runs, soak.json")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("--rss-noise", type=float, default=16.0, help="MiB of RSS growth still counted as noise")
    return ap.parse_args(argv)


# -- what a process uses ---------------------------------------------------------------------------

def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def role(pid: int) -> str:
    """'rank<r>' for a torchrun worker (its RANK), 'train' for a plain run."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "train"
    rank = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)
    return f"rank{rank}" if rank is not None else "train"


def trainers(launched: subprocess.Popen, torchrun: bool) -> dict[str, int]:
    """{role: pid} of the processes that train (torchrun: its workers, not the launcher)."""
    if not torchrun:
        return {"train": launched.pid}
    return {role(pid): pid for pid in children(launched.pid) if role(pid).startswith("rank")}


def metrics_rows(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return [r for r in rows if "time_step" in r]


# -- one mode --------------------------------------------------------------------------------------

def setup(out: Path) -> Path:
    """The tiny model (once)."""
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    from tiny_run import build_tiny_model

    model = out / "model"
    if not (model / "config.json").is_file():
        build_tiny_model(model)
    return model


def command(mode: str, config: Path) -> list[str]:
    train = ["tests/dist_worker.py", "train", "--config", str(config),
             "--set", f"rollout.compile={'true' if mode == 'compiled' else 'false'}"]
    if mode != "torchrun":
        return [sys.executable, *train]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *train]


def soak(mode: str, out: Path, model: Path, steps: int, every: int, interval: float) -> dict:
    from tiny_run import write_config

    config = write_config(out, model, out=mode, rollout={"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 12},
                          train={"steps": steps, "eval_every": every, "eval_size": 5, "save_every": every,
                                 "keep_checkpoints": 2, "samples_per_step": 1})
    log = open(out / f"{mode}.log", "w")
    t0 = time.time()
    proc = subprocess.Popen(command(mode, config), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    samples = []
    while proc.poll() is None:
        rows = metrics_rows(out / mode / "metrics.jsonl")
        procs = trainers(proc, mode == "torchrun")
        sample = {"t": time.time() - t0, "step": rows[-1]["step"] if rows else 0,
                  "rss": {r: rss_mib(p) for r, p in procs.items()}, "fds": {r: open_fds(p) for r, p in procs.items()}}
        if procs and all(v is not None for v in [*sample["rss"].values(), *sample["fds"].values()]):
            samples.append(sample)
        time.sleep(interval)
    log.close()
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: exit code {proc.returncode}; see {out / f'{mode}.log'}")
    return {"mode": mode, "seconds": time.time() - t0, "samples": samples,
            "rows": metrics_rows(out / mode / "metrics.jsonl")}


# -- the table -------------------------------------------------------------------------------------

def windows(steps: int, every: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first, last) step of the start and the end windows."""
    first = every + 2  # every phase (eval, save, and the compiles of each) has run once
    width = max(10, steps // 10)
    return (first, first + width), (steps - width, steps)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than 2 distinct x)."""
    if len({x for x, _ in points}) < 2:
        return 0.0
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def summary(result: dict, steps: int, every: int, rss_noise: float) -> list[dict]:
    (a0, a1), (b0, b1) = windows(steps, every)
    rows, samples = result["rows"], result["samples"]
    start = [s for s in samples if a0 <= s["step"] <= a1]
    end = [s for s in samples if b0 <= s["step"] <= b1]
    if not start or not end:
        raise SystemExit(f"{result['mode']}: no samples in the windows {a0}-{a1} and {b0}-{b1}: more --steps")
    out = []
    for who in sorted(start[0]["rss"]):
        rss = median([s["rss"][who] for s in start]), median([s["rss"][who] for s in end if who in s["rss"]])
        fds = median([s["fds"][who] for s in start]), median([s["fds"][who] for s in end if who in s["fds"]])
        late = [(s["step"], s["rss"][who]) for s in samples if s["step"] >= steps // 2 and who in s["rss"]]
        out.append({"what": f"{result['mode']} {who}", "rss_mib": rss, "fds": fds, "rss_slope": 1000 * slope(late),
                    "rss_grows": rss[1] - rss[0] > max(rss_noise, 0.03 * rss[0]), "fds_grow": fds[1] - fds[0] >= 1})
    step_time = (median([r["time_step"] for r in rows if a0 <= r["step"] <= a1]),
                 median([r["time_step"] for r in rows if b0 <= r["step"] <= b1]))
    compiled = {}
    for key in ("decode_compiles", "decode_cache_allocations"):
        at = [r.get(key) for r in rows if r["step"] in (a0, steps)]
        if len(at) == 2 and None not in at:
            compiled[key] = at
    out[0].update(step_s=step_time, slower=step_time[1] > 1.25 * step_time[0], **compiled)
    return out


def table(lines: list[dict]) -> str:
    head = ("| run, process | RSS start -> end (MiB) | RSS trend, 2nd half (MiB/1000 steps) | open fds start -> end "
            "| step time start -> end (s) | decode compiles, cache allocations | flagged |")
    out = [head, "|" + "---|" * 7]
    for x in lines:
        flags = [name for name, on in (("RSS", x["rss_grows"]), ("fds", x["fds_grow"]),
                                       ("step time", x.get("slower"))) if on]
        compiled = ""
        if "decode_compiles" in x:
            (c0, c1), (a0, a1) = x["decode_compiles"], x["decode_cache_allocations"]
            compiled = f"{c0} -> {c1}, {a0} -> {a1}"
            if c1 > c0 or a1 > a0:
                flags.append("compiles")
        step = f"{x['step_s'][0]:.3f} -> {x['step_s'][1]:.3f}" if "step_s" in x else ""
        out.append(f"| {x['what']} | {x['rss_mib'][0]:.1f} -> {x['rss_mib'][1]:.1f} ({x['rss_mib'][1] - x['rss_mib'][0]:+.1f}) "
                   f"| {x['rss_slope']:+.1f} | {x['fds'][0]:.0f} -> {x['fds'][1]:.0f} | {step} | {compiled} | {', '.join(flags) or 'none'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = args.steps or (200 if args.short else 2000)
    every = args.every or max(5, steps // 20)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"unknown mode(s) {sorted(unknown)}: pick from {', '.join(MODES)}")
    out = Path(args.out).resolve()
    for mode in modes:  # a run directory left by an earlier soak would be refused
        if (out / mode).exists():
            import shutil
            shutil.rmtree(out / mode)
    out.mkdir(parents=True, exist_ok=True)
    model = setup(out)
    lines, results = [], []
    for mode in modes:
        result = soak(mode, out, model, steps, every, args.interval)
        results.append(result)
        lines += summary(result, steps, every, args.rss_noise)
        print(f"{mode}: {steps} steps in {result['seconds']:.0f} s, {len(result['samples'])} samples", flush=True)
    text = table(lines)
    (out / "soak.json").write_text(json.dumps({"steps": steps, "every": every, "lines": lines,
                                               "results": results}, indent=1) + "\n")
    print(f"\n{steps} steps a mode, evaluating and saving every {every}; start = steps "
          f"{windows(steps, every)[0][0]}-{windows(steps, every)[0][1]}, end = steps "
          f"{windows(steps, every)[1][0]}-{windows(steps, every)[1][1]} (medians)\n")
    print(text)
    return int(any(x["rss_grows"] or x["fds_grow"] for x in lines))


if __name__ == "__main__":
    sys.exit(main())
