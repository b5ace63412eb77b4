"""GRPO for Qwen2.5, one concept per module, in the order a training step uses them:

    config.py       config.yaml -> typed dataclasses, --set overrides, validation
    runtime.py      device (checked), dtype names, activation checkpointing
    schedule.py     LR schedule and data order: pure functions of the step
    rollout.py      N questions x G samples through the sampler -> scored episodes
    advantages.py   group-normalised advantages; zero-spread groups flagged
    batch.py        episodes -> micro-batches, shared-prefix rows (default) or padded rows
    logprobs.py     per-token log-probs in checkpointed chunks (no full fp32 logits)
    loss.py         PPO clip with eps_low/eps_high (also CISPO, GSPO), three aggregations, k3 KL
    optim.py        AdamW with fp32 master weights, state on the device or in CPU memory
    offload.py      the pipelined CUDA <-> CPU copies of the offloaded optimizer step
    trainer.py      the loop: the step's phases, logging, evaluation, Ctrl-C
    interrupt.py    Ctrl-C: finish the step in progress (or stop every rank at once), then save
    run_log.py      console lines, metrics.jsonl, samples.jsonl, TensorBoard / W&B
    checkpoint.py   atomic checkpoints and the training state that makes resume exact
    evaluate.py     held-out accuracy through the sampler (greedy, or seeded mean@k)
    memory.py       the --dry-run memory planner
    distributed.py  several processes (torchrun): FSDP2 sharding, ranks summing their counts
"""
