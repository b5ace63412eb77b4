"""Planning, above the trainer: how much memory a config needs before anything is loaded
(memory.py, `python plan.py` / `train.py --dry-run`) and the real step's peaks traced on the meta
device (trace.py, `--trace`). Clients of the algorithm and the optimizer; nothing below imports them."""
