"""A checkpoint's manifest: every file's size and checksum, written last, checked on resume.

    checkpoints/step_000025/manifest.json
    {"format": "qwen-grpo checkpoint manifest", "version": 1, "step": 25,
     "checksum": "crc32", "chunk_bytes": 67108864, "total_bytes": 1234567,
     "files": {"model/model.safetensors": {"bytes": 988097824, "crc32": ["5f3a09c1", ...]}, ...},
     "manifest_crc32": "0b6e44d2"}

Each file's `crc32` lists zlib.crc32 of its consecutive 64 MiB pieces (one for a small file), so a
file is hashed by several threads at once. `manifest_crc32` is the checksum of the rest of the
manifest (as compact JSON with sorted keys): a manifest damaged in place is found too.

What is checked (`GRPO_CHECKPOINT_VERIFY`, read when saving and when resuming):
    full   (default) every file's size and checksum: any missing, truncated or changed byte
    sizes  every file's size; checksums only of files up to one piece (64 MiB: JSON, tokenizer,
           rng.pt, the optimizer's .metadata): for runs whose files do not fit the page cache,
           where hashing means reading the whole checkpoint from disk once more. A same-size
           change inside a weight or optimizer file then goes unnoticed.
crc32 finds accidental damage (a flipped bit, a short copy, a zeroed block); it is no defence
against someone who changes a file on purpose. Costs: docs/checkpoints.md.
"""

from __future__ import annotations

import json
import os
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


MANIFEST = "manifest.json"
CHUNK = 64 << 20
FORMAT = "qwen-grpo checkpoint manifest"
MODES = ("full", "sizes")
_verified: dict[tuple, str | None] = {}  # (checkpoint, its files' sizes and times) -> problem: resume checks twice


def verify_mode() -> str:
    """GRPO_CHECKPOINT_VERIFY: full (the default) or sizes; anything else is full."""
    mode = os.environ.get("GRPO_CHECKPOINT_VERIFY", "full").strip().lower()
    return mode if mode in MODES else "full"


def hash_threads() -> int:
    """Threads that hash at once: up to 8, this process's share of the CPUs (torchrun: of its node)."""
    share = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, share))


def _pieces(size: int) -> list[tuple[int, int]]:
    return [(offset, min(CHUNK, size - offset)) for offset in range(0, size, CHUNK)] or [(0, 0)]


_buffers = threading.local()  # a reused buffer per hashing thread: 2.5x faster than a new read() each piece


def _crc(task: tuple[Path, int, int]) -> str:
    file, offset, length = task
    if getattr(_buffers, "data", None) is None or len(_buffers.data) < length:
        _buffers.data = bytearray(max(length, 1 << 20))
    view = memoryview(_buffers.data)
    with open(file, "rb", buffering=0) as f:
        f.seek(offset)
        got = f.readinto(view[:length])
    return f"{zlib.crc32(view[:got]):08x}"


def _hash_all(tasks: list[tuple[Path, int, int]]) -> list[str]:
    """The crc32 of each (file, offset, length), hashed by threads (their buffers go with them)."""
    if not tasks:
        return []
    with ThreadPoolExecutor(min(hash_threads(), len(tasks))) as pool:
        return list(pool.map(_crc, tasks))


def _hashed(size: int, full: bool) -> bool:
    return full or size <= CHUNK


def file_entries(root: Path, files: list[Path], full: bool | None = None) -> dict[str, dict[str, Any]]:
    """{path relative to `root`: {"bytes", "crc32"}} of `files`, as they are on disk now."""
    full = verify_mode() == "full" if full is None else full
    entries: dict[str, dict[str, Any]] = {}
    tasks, slots = [], []
    for file in files:
        rel = file.relative_to(root).as_posix()
        size = file.stat().st_size
        entries[rel] = {"bytes": size}
        if _hashed(size, full):
            entries[rel]["crc32"] = []
            for offset, length in _pieces(size):
                tasks.append((file, offset, length))
                slots.append(rel)
    for rel, crc in zip(slots, _hash_all(tasks)):
        entries[rel]["crc32"].append(crc)
    return entries


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def optimizer_files_of(path: Path, rank: int) -> list[Path]:
    """The files of the DCP directory `path` that `rank` wrote: DCP names them `__{rank}_{i}.distcp`;
    rank 0 also takes .metadata and anything else."""
    def owner(p: Path) -> int:
        m = re.match(r"__(\d+)_", p.name)
        return int(m.group(1)) if m else 0
    return [p for p in files_under(path) if owner(p) == rank]


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(ckpt: Path, step: int, entries: dict[str, dict[str, Any]]) -> None:
    """Write `ckpt`/manifest.json for `entries` (every other file of the checkpoint)."""
    body = {"format": FORMAT, "version": 1, "step": step, "checksum": "crc32", "chunk_bytes": CHUNK,
            "total_bytes": sum(e["bytes"] for e in entries.values()), "files": dict(sorted(entries.items()))}
    body["manifest_crc32"] = f"{zlib.crc32(_canonical(body)):08x}"
    files = ",\n".join(f"  {json.dumps(rel)}: {json.dumps(entry)}" for rel, entry in body.pop("files").items())
    head = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in body.items())
    (ckpt / MANIFEST).write_text(f"{{\n{head} \"files\": {{\n{files}\n }}\n}}\n")  # one line per file


def read_manifest(ckpt: Path) -> dict[str, Any]:
    """The manifest of `ckpt`; ValueError when it is not one or does not match its own checksum."""
    try:
        body = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(str(e)) from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ValueError("not a checkpoint manifest")
    claimed = body.pop("manifest_crc32", None)
    if claimed != f"{zlib.crc32(_canonical(body)):08x}":
        raise ValueError("it does not match its own checksum")
    files = body.get("files")
    if body.get("version") != 1 or body.get("chunk_bytes") != CHUNK or not isinstance(files, dict):
        raise ValueError("unknown version")
    for rel, entry in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not isinstance(entry.get("bytes"), int):
            raise ValueError(f"bad entry {rel!r}")
    return body


def manifest_problem(ckpt: Path) -> str | None:
    """Why `ckpt`'s files are not the ones its manifest lists (a missing, truncated or changed file,
    a missing or damaged manifest), or None. Checksums as `verify_mode` says."""
    if not (ckpt / MANIFEST).is_file():
        return f"{MANIFEST} is missing (it is written last: the checkpoint is incomplete)"
    key = (str(ckpt.resolve()), verify_mode(), tuple((str(p), s.st_size, s.st_mtime_ns)
                                                     for p in files_under(ckpt) for s in [p.stat()]))
    if key not in _verified:
        _verified.clear()
        _verified[key] = _problem(ckpt, verify_mode() == "full")
    return _verified[key]


def _problem(ckpt: Path, full: bool) -> str | None:
    try:
        manifest = read_manifest(ckpt)
    except (OSError, ValueError) as e:
        return f"{MANIFEST} is damaged ({e})"
    tasks, slots = [], []
    for rel, entry in manifest["files"].items():
        file = ckpt / rel
        if not file.is_file():
            return f"{rel} is missing"
        size, saved = file.stat().st_size, entry["bytes"]
        if size != saved:
            return f"{rel} is {'truncated' if size < saved else 'longer than saved'} ({size} of {saved} bytes)"
        crcs = entry.get("crc32")
        if crcs is not None and _hashed(size, full):
            if len(crcs) != len(_pieces(size)):
                return f"{MANIFEST} is damaged (bad entry {rel!r})"
            for (offset, length), crc in zip(_pieces(size), crcs):
                tasks.append((file, offset, length))
                slots.append((rel, offset, crc))
    for (rel, offset, crc), found in zip(slots, _hash_all(tasks)):
        if found != crc:
            where = f" (from byte {offset})" if offset else ""
            return f"{rel} is damaged: its bytes{where} differ from the checksum in {MANIFEST}"
    return None


def checkpoint_bytes(ckpt: Path) -> int:
    """The size of a checkpoint: its manifest's total, or its files' sizes added up."""
    try:
        return int(read_manifest(ckpt)["total_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return sum(p.stat().st_size for p in files_under(ckpt))
