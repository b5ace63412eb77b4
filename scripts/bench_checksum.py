"""Benchmark the checksums a checkpoint's manifest could use: GB/s of each on this CPU.

Hashes `--gb` GB of random bytes held in memory (so it measures the hash, not the disk) in
`--chunk-mb` MiB pieces, the way grpo/machinery/manifest.py reads a file: with one thread, and
with `--threads` threads hashing different pieces at once (hashlib and zlib release the GIL for
large buffers, so threads scale with cores). Best of `--repeats`; the machine may be shared.

    python scripts/bench_checksum.py [--gb 1] [--chunk-mb 64] [--threads 2] [--repeats 3]

Then: what a save or a resume of a 7B-sized checkpoint (~15 GB model + ~90 GB optimizer state)
would spend hashing at the measured rates; and the manifest's own code (grpo/machinery/manifest.py)
on the same bytes written to a file in `--dir`: hashing it right after writing, as a save does (its
pages still in memory), and checking it against a manifest, as a resume does (also from the page
cache here: a resume after a reboot reads from the disk, at the disk's speed). Ends with one line
`RESULT {json}`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grpo.machinery import manifest  # noqa: E402


def _digest(name: str) -> Callable[[memoryview], object]:
    if name == "crc32":
        return zlib.crc32
    if name == "adler32":
        return zlib.adler32
    return lambda data: hashlib.new(name, data).digest()


ALGORITHMS = ["crc32", "adler32", "sha1", "sha256", "blake2b", "md5"]
SEVEN_B = {"model": 15e9, "optimizer": 90e9}  # bytes: bf16 weights; fp32 masters + two Adam moments


def rate(name: str, data: bytes, chunk: int, threads: int, repeats: int) -> float:
    """GB/s of `name` over `data`, hashed in `chunk`-byte pieces by `threads` threads."""
    fn = _digest(name)
    view = memoryview(data)
    pieces = [view[i:i + chunk] for i in range(0, len(data), chunk)]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(fn, pieces)) if threads > 1 else [fn(p) for p in pieces]
            best = min(best, time.perf_counter() - start)
    return len(data) / best / 1e9


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--chunk-mb", type=int, default=64)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--dir", default=None,
                    help="where to write the file for the manifest's timing (default: a temporary directory)")
    args = ap.parse_args(argv)

    data = os.urandom(int(args.gb * 1e9))
    chunk = args.chunk_mb << 20
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
          f"zlib {zlib.ZLIB_RUNTIME_VERSION}, {__import__('ssl').OPENSSL_VERSION}")
    print(f"{args.gb:g} GB in {args.chunk_mb} MiB pieces, best of {args.repeats}\n")
    print(f"{'checksum':10} {'1 thread':>10} {f'{args.threads} threads':>11}   7B save/resume hashing, 1 thread"
          f" (model 15 GB | optimizer 90 GB)")
    results = {}
    for name in args.algorithms.split(","):
        one = rate(name, data, chunk, 1, args.repeats)
        many = rate(name, data, chunk, args.threads, args.repeats) if args.threads > 1 else one
        results[name] = {"gbps_1_thread": round(one, 3), f"gbps_{args.threads}_threads": round(many, 3)}
        costs = " | ".join(f"{size / 1e9 / one:6.1f} s" for size in SEVEN_B.values())
        print(f"{name:10} {one:7.2f} GB/s {many:7.2f} GB/s   {costs}")
    results["manifest"] = manifest_timing(data, args.dir)
    result = {"bench": "checksum", "gb": args.gb, "chunk_mb": args.chunk_mb, "threads": args.threads,
              "results": results}
    print("RESULT " + json.dumps(result))
    return result


def manifest_timing(data: bytes, where: str | None) -> dict:
    """GB/s of manifest.file_entries (a save) and manifest_problem (a resume) on `data` in a file."""
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        ckpt = Path(tmp)
        (ckpt / "model").mkdir()
        file = ckpt / "model" / "model.safetensors"
        start = time.perf_counter()
        file.write_bytes(data)
        written = time.perf_counter() - start
        start = time.perf_counter()
        entries = manifest.file_entries(ckpt, [file], full=True)
        saved = time.perf_counter() - start
        manifest.write_manifest(ckpt, 1, entries)
        start = time.perf_counter()
        problem = manifest.manifest_problem(ckpt)
        checked = time.perf_counter() - start
    assert problem is None, problem
    gb = len(data) / 1e9
    out = {"write_gbps": round(gb / written, 3), "hash_after_write_gbps": round(gb / saved, 3),
           "verify_gbps": round(gb / checked, 3), "threads": manifest.hash_threads()}
    print(f"\nmanifest.py on a {gb:g} GB file ({out['threads']} thread(s)): written at {out['write_gbps']:.2f} GB/s, "
          f"hashed after writing at {out['hash_after_write_gbps']:.2f} GB/s, verified at {out['verify_gbps']:.2f} GB/s")
    return out


if __name__ == "__main__":
    main()
