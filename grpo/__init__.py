"""GRPO training pieces: advantages, per-token log-probs, the clipped policy loss."""
