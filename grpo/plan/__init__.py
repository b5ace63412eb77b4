"""Planning, above the trainer: how much memory a config needs before anything is loaded
(memory.py, `python plan.py` / `train.py --dry-run`; the machine it is compared with, machine.py;
what to change when it does not fit, advice.py; the table and train.py's messages, report.py) and
the real step's peaks traced on the meta device (trace.py, `--trace`). Clients of the algorithm and
the optimizer; nothing below imports them."""
