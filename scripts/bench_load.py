"""Benchmark checkpoint loading: wall time and peak memory of `load_model` vs transformers.

Builds (once, in .bench/) a random checkpoint with real Qwen2.5 shapes (fp32 by default, one
safetensors file), then loads it in fresh subprocesses, so every measurement starts from a clean
process and reads its own peak:
  - "import" children only import torch + qwen2 (resp. transformers): their peak RSS is the
    baseline that the loaders' peak is measured against;
  - "load" children import the same, then time the load, then read their peak RSS
    (getrusage ru_maxrss), then touch every weight once and read the peak again (a loader that
    leaves weights as lazily mapped file pages would otherwise look free).
Reported: load seconds, and (peak RSS - baseline) / checkpoint file size; the target for ours is
<= 1.3x (1.0x = exactly one copy of the weights). Ours and transformers alternate, repeated.

How to read it: safetensors memory-maps the file, and when no dtype or device change is asked
both loaders keep the mapped tensors as the model's weights (no copy). Right after "loading",
almost nothing is resident and nothing has been read: the pages come in on first use. So the
"after touching weights" column is the real footprint, and load time + first-touch time the
real cost. `--to-dtype bfloat16` makes both loaders convert while loading (a real copy).

Simplifications: the file is read once before timing, so every load reads from the page cache
(memory bandwidth, not disk); RSS counts mapped file pages that are resident as well as
anonymous memory, both are printed at the end of each load.

Usage: python scripts/bench_load.py [--model Qwen2.5-0.5B] [--dtype float32] [--repeats 3] [--no-hf]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _bench_common import hardware, median, random_checkpoint


def _proc_status() -> dict[str, int]:
    """RssAnon / RssFile / VmHWM of this process in bytes (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(mode: str, path: str, to_dtype: str) -> None:
    """Run in a fresh process: import, maybe load, print one JSON line of measurements."""
    import torch

    if mode.endswith("hf"):
        import transformers
        from transformers import AutoModelForCausalLM
        transformers.logging.set_verbosity_error()
    else:
        from qwen2 import load_model
    result = {}
    if mode.startswith("load"):
        start = time.perf_counter()
        dtype = getattr(torch, to_dtype) if to_dtype != "none" else None
        if mode == "load-hf":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
        else:
            model = load_model(path, dtype=dtype)
        result["seconds"] = time.perf_counter() - start
        result["peak_after_load"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update(_proc_status())
        start = time.perf_counter()
        with torch.no_grad():  # touch every weight once, as a first forward would
            total = sum(float(p.sum()) for p in model.parameters())  # no fp32 copy of bf16 weights
        result["touch_seconds"] = time.perf_counter() - start
        result["checksum"] = total
    result["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def spawn(mode: str, path: Path, to_dtype: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path), to_dtype], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        return child(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="Qwen2.5-0.5B", help="Qwen2.5 shape (Qwen2Config.from_name)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--to-dtype", default="none", choices=["none", "float32", "bfloat16"],
                    help="dtype asked of the loaders (none: keep the checkpoint's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    args = ap.parse_args()

    path = random_checkpoint(args.model, args.dtype)
    files = sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    for f in files:  # warm the page cache, so every timed load reads from memory
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    print(f"{args.model} random {args.dtype} checkpoint: {size / 2**30:.2f} GiB in {len(files)} file(s), loaded as {args.to_dtype}; {hardware()}")

    systems = ["ours"] + ([] if args.no_hf else ["hf"])
    base = {s: spawn(f"import-{s}", path, args.to_dtype)["peak"] for s in systems}
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(args.repeats):
        for s in systems if r % 2 == 0 else systems[::-1]:
            res = spawn(f"load-{s}", path, args.to_dtype)
            runs[s].append(res)
            print(f"  repeat {r}: {s:5s} {res['seconds']:5.2f} s (+ {res['touch_seconds']:4.2f} s to touch), peak {(res['peak_after_load'] - base[s]) / size:.2f}x "
                  f"(after touching weights {(res['peak'] - base[s]) / size:.2f}x), end of load: anon "
                  f"{res['RssAnon'] / 2**30:.2f} GiB, file {res['RssFile'] / 2**30:.2f} GiB", flush=True)
    checks = {s: runs[s][0]["checksum"] for s in systems}
    if len(set(checks.values())) > 1 and abs(checks["ours"] - checks["hf"]) > 1e-3 * abs(checks["ours"]):
        print(f"warning: the two loaders read different weights (checksums {checks})")

    print("\n| loader | load time (s) | first touch of all weights (s) | baseline RSS (GiB) "
          "| peak RSS over baseline / file size | after touching weights |")
    print("|---|---|---|---|---|---|")
    for s, name in [("ours", "qwen2.load_model"), ("hf", "transformers from_pretrained")]:
        if s in runs:
            t = median([x["seconds"] for x in runs[s]])
            touch = median([x["touch_seconds"] for x in runs[s]])
            load = median([(x["peak_after_load"] - base[s]) / size for x in runs[s]])
            touched = median([(x["peak"] - base[s]) / size for x in runs[s]])
            print(f"| {name} | {t:.2f} | {touch:.2f} | {base[s] / 2**30:.2f} | {load:.2f}x | {touched:.2f}x |")
    if "hf" in runs:
        ratio = median([x["seconds"] for x in runs["hf"]]) / median([x["seconds"] for x in runs["ours"]])
        print(f"load time transformers / ours: {ratio:.2f}x")


if __name__ == "__main__":
    main()
