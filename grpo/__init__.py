"""GRPO for Qwen2.5. Read it in the order one training step runs (learn/grpo.py is the same step in
one file, tested equal to this code):

    trainer.py      the loop; Trainer.train_step shows a step's phases in order, each below:
    rollout.py        1. generate: N questions x G completions through the sampler, scored (data/rewards.py)
    advantages.py     2. reward -> advantages: group-normalised; zero-spread groups flagged
    batch.py          3. episodes -> micro-batches: shared-prefix rows [prompt | c_1 | ... | c_G] or padded
    logprobs.py          per-token log-probs in checkpointed chunks (no full fp32 logits)
    loss.py           4. the clipped policy loss (token-level, DAPO's clip-higher; CISPO, GSPO), k3 KL
    optim/            5. AdamW with fp32 masters, its state on the GPU or in CPU memory (offload)
    metrics.py        the step's line of metrics.jsonl
    stuck.py          warnings when the last steps show the run cannot learn (truncated, no spread, ...)
    schedule.py     LR schedule and data order: pure functions of the step
    evaluate.py     held-out accuracy through the sampler (greedy, or seeded mean@k)
    policy.py       the models a run trains and scores with, loaded as the config and checkpoint say
    tools.py        tool calls in the rollouts (the calculator)
    config.py       config.yaml -> typed dataclasses, --set overrides, each key's range
    run_config.py   --config / --set / --resume -> the run's Config (a resume writes only into its run)

Below the algorithm, knowing nothing of GRPO: machinery/ (checkpoints and exact resume, torchrun,
Ctrl-C, the non-finite guard, run logs, devices, typed YAML). Above it, as its clients: plan/ (the
--dry-run memory planner and the tracer). tests/test_layers.py keeps the imports in that order.
"""
