"""What keeps a run alive and honest, below the algorithm: none of it knows what GRPO is.

    checkpoint.py   atomic checkpoints, the training state of an exact resume, which run a resume writes into
    run_lock.py     one training process per run directory: an advisory lock on RUN/.lock
    manifest.py     each checkpoint's files with sizes and crc32s, written last, verified on resume
    save_errors.py  a save the disk refuses: one line with the space needed, every rank agreeing
    divergence.py   the non-finite guard: no update and no checkpoint from NaN/inf, a clean stop
    interrupt.py    Ctrl-C, a scheduler's signal, a dead launcher: finish or abandon the step, save, exit 130/75
    distributed.py  torchrun: process group, FSDP2 sharding, sums and gathers over ranks
    run_log.py      seconds per phase, metrics.jsonl, samples.jsonl, the console line, TensorBoard / W&B
    runtime.py      the device (checked), dtype names, CPU threads, activation checkpointing
    typed_yaml.py   YAML and --set parsing into typed dataclasses, each key with its range
"""
