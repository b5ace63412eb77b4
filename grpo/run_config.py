"""Which run a command means: `--config`, `--set` and `--resume` of train.py and plan.py -> a Config.

A fresh run reads --config (default config.yaml) plus any --set. A resumed run is based on its own
saved config.json unless --config names a file, and always writes into its own directory: a
--config naming another train.out_dir is overruled with a note, an explicit --set train.out_dir
contradicts --resume and is refused (no resume ever writes into another run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config


def add_config_arguments(ap: argparse.ArgumentParser) -> None:
    """--config, --set and --resume: which run a command means."""
    ap.add_argument("--config", help="YAML config file (default: config.yaml; with --resume: the run's own config)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value, e.g. --set rollout.group_size=16 (repeatable)")
    ap.add_argument("--resume", metavar="DIR", help="run directory (or one checkpoint directory) to continue from")


def read_run_config(config_path: str | None, overrides: list[str], resume: str | None = None) -> tuple[Config, Any]:
    """(config, where a --resume continues from or None). Resuming, the run's own config is the base
    (plus any --set) unless --config names a file, and train.out_dir becomes the resumed run's
    directory: a resumed run writes there and nowhere else. A --config naming another out_dir (the
    one the run was started with, or a recipe's) is overruled with a note; an explicit
    --set train.out_dir=OTHER contradicts --resume: refused."""
    point, base = None, None
    if resume:
        from .machinery.checkpoint import resume_point

        point = resume_point(resume)  # the newest intact checkpoint (damaged ones are skipped, saying why)
        base = None if config_path else point.config
    elif config_path is None and Path("config.yaml").is_file():
        config_path = "config.yaml"
    cfg = load_config(config_path, overrides, base=base)
    if point is not None and point.run_dir is not None:
        named, run_dir = Path(cfg.train.out_dir), point.run_dir
        if named.resolve() != run_dir.resolve():
            if any(o.split("=", 1)[0].strip() == "train.out_dir" for o in overrides):
                raise ConfigError(f"--resume {run_dir} continues that run in its own directory, but --set "
                                  f"train.out_dir={named} names another: drop the --set (to start a new run "
                                  "elsewhere, leave out --resume)")
            source = f"from {config_path}" if config_path else "of its saved config (the run was moved)"
            print(f"note: resuming writes into {run_dir}, the run being resumed; train.out_dir={named} {source} "
                  "is not used", file=sys.stderr)
            cfg.train.out_dir = str(run_dir)
    return cfg, point
