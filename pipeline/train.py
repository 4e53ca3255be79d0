"""Train one dehazing model (plain, bild or bild-train), without Ray.

    python -m pipeline.train --backbone aodnet --preset small --epochs 5
    python -m pipeline.train --backbone ffanet --mode plain train.inner_lr=1e-3
    python -m pipeline.train --backbone ffanet --resume        # continue the same run exactly
    python -m pipeline.train --backbone aodnet --preset paper --init models/aodnet/dehazer   # fine-tune a model

The engine is ``pipeline.trainer``; this module is its command line.
"""

from __future__ import annotations

import argparse
import sys

from .bild import NonFiniteLossError
from .cli import add_init_flag, add_policy_flag, add_quiet_flag, add_threads_flag, flag_overrides, run_command
from .config import compose_config
from .trainer import TrainingOutOfMemoryError, train

__all__ = ["TRAIN_FLAGS", "main"]

TRAIN_FLAGS = {
    "backbone": "backbone=",
    "preset": "backbone.preset",
    "dataset": "datasets=",
    "data_root": "dataset.root",
    "crop": "dataset.crop",
    "mode": "mode",
    "epochs": "train.epochs",
    "steps": "train.steps_per_epoch",
    "seed": "seed",
    "device": "device",
    "run_dir": "run_dir",
    "policy": "policy=",
    "alpha": "bild.alpha",
    "inner_lr": "train.inner_lr",
    "outer_lr": "train.outer_lr",
    "val_fraction": "train.val_fraction",
    "estimator": "bild.estimator",
    "batch_size": "train.batch_size",
    "val_batch_size": "train.val_batch_size",
    "threads": "threads",
    "init": "train.init",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", help="aodnet | dehazenet | ffanet | griddehazenet | msbdn")
    p.add_argument("--preset", help="size preset: paper | small | tiny")
    p.add_argument("--dataset", help="descriptor in datasets/ (builtin, auto, sots-indoor, o-haze, ...)")
    p.add_argument("--data-root", help="folder holding the dataset in its native layout")
    p.add_argument("--crop", type=int, help="training crop size in pixels")
    p.add_argument("--mode", choices=["plain", "bild", "bild-train"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="steps per epoch")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--run-dir", help="where checkpoint.pt, metrics.jsonl and config.yaml go")
    add_policy_flag(p)
    p.add_argument("--alpha", type=float, help="regulariser coefficient of the reweighting policy")
    p.add_argument("--inner-lr", type=float, help="backbone learning rate (eta_1)")
    p.add_argument("--outer-lr", type=float, help="reweighter learning rate (eta_2)")
    p.add_argument("--val-fraction", type=float, help="share of the train pool held out to drive the outer loop")
    p.add_argument("--estimator", choices=["fd", "jvp", "loop"], help="per-crop alignment estimator")
    p.add_argument("--batch-size", type=int, help="n, training crops per step")
    p.add_argument("--val-batch-size", type=int, help="m, validation crops per step")
    add_threads_flag(p)
    add_init_flag(p)
    add_quiet_flag(p)
    p.add_argument("--resume", action="store_true", help="continue from run_dir/checkpoint.pt")
    p.add_argument("overrides", nargs="*", help="Hydra key=value overrides, e.g. train.steps_per_epoch=20")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)

    def body() -> int:
        try:
            quiet = ["progress=false"] if args.quiet else []
            train(compose_config(flag_overrides(vars(args), TRAIN_FLAGS) + quiet + args.overrides), resume=args.resume)
        except NonFiniteLossError as err:
            print(f"error: training diverged, {err}. The last good epoch's checkpoint is kept.", file=sys.stderr)
            return 3
        return 0

    return run_command(body, errors=(ValueError, OSError, TrainingOutOfMemoryError))


if __name__ == "__main__":
    raise SystemExit(main())
