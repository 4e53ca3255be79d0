"""Search BILD's hyperparameters with Ray Tune and Optuna.

    python -m pipeline.search --backbone msbdn                       # built-in data, this machine
    python -m pipeline.search --backbone ffanet --mode both --trials 8 --epochs 10
    python -m pipeline.search --backbone msbdn --name msbdn-a --resume   # continue after Ctrl-C / a crash
    python -m pipeline.search --backbone msbdn --address HEAD_IP:6379 --storage /shared/runs
    python -m pipeline.search --backbone msbdn --address HEAD_IP:6379 --storage s3://bucket/runs   # no shared disk
    python -m pipeline.search --backbone aodnet --preset paper --init models/aodnet/dehazer   # every trial starts from it

Every flag is checked before any Ray work starts. Trailing ``key=value`` arguments are Hydra
overrides of the training config (e.g. ``train.steps_per_epoch=20 dataset.crop=96``);
``search_space=NAME`` is the same as ``--search-space NAME``. The library behind this
command is ``pipeline.tune.experiment``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .backbones import list_backbones
from .cli import ALL_FAILED, add_init_flag, add_policy_flag, flag_overrides, positive_int, run_command
from .tune.experiment import MODES, SearchRequest, failed_search, format_summary, run_experiment
from .tune.runner import Trainable
from .tune.trainable import train_trial

__all__ = ["main", "search"]

# Flags that are keys of the training config; the rest are the search's own (SearchRequest).
CONFIG_FLAGS = {
    "preset": "backbone.preset",
    "dataset": "datasets=",
    "data_root": "dataset.root",
    "epochs": "train.epochs",
    "policy": "policy=",
    "seed": "seed",
    "init": "train.init",
}
SPACE_OVERRIDES = ("search_space=", "search_spaces=")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--backbone", default=None, help=f"network to search for (default msbdn): {', '.join(list_backbones())}")
    p.add_argument("--preset", default=None, help="size preset: paper | small | tiny (default: the backbone config's, small)")
    p.add_argument("--dataset", default=None, help="descriptor in datasets/ (default builtin: needs no download)")
    p.add_argument("--data-root", default=None, help="folder with the dataset in its native layout")
    p.add_argument("--mode", default=None, choices=MODES,
                   help="bild (default); plain (the baseline); both: the same trial budget on each, for comparison")
    add_policy_flag(p)
    add_init_flag(p)
    p.add_argument("--trials", type=int, default=None, help="trials per mode (default: the search space's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial, ASHA's max_t (default: config's train.epochs)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="trials running at once (default: every GPU share of the cluster, else 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial (torch threads follow)")
    p.add_argument("--gpus-per-trial", type=_gpus, default="auto",
                   help="GPUs per trial: auto (default: 1/--trials-per-gpu when the cluster has GPUs, else 0), "
                        "0 (CPU only), a fraction in (0, 1] or a whole number")
    p.add_argument("--trials-per-gpu", type=positive_int, default=None, metavar="K",
                   help="with --gpus-per-trial auto: K trials share each GPU (a 1/K share each; default 1)")
    p.add_argument("--search-space", default=None, help="name in search_spaces/ or a YAML path (default: the backbone's own, else default)")
    p.add_argument("--name", default=None, help="experiment name; the same name again resumes it (default: backbone-mode-time)")
    p.add_argument("--storage", default="runs",
                   help="where experiments live: a folder (on a cluster, one every node sees) or a URI such as "
                        "s3://bucket/runs (credentials from the AWS_* environment)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (HEAD_IP:PORT or 'auto') instead of starting one")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment (the newest matching one without --name)")
    p.add_argument("--seed", type=int, default=None, help="seeds training and the search space's sampler")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="interface the local dashboard binds to")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of a crashed trial from its last checkpoint")
    p.add_argument("overrides", nargs="*", help="Hydra key=value overrides of the training config")
    return p


def _gpus(text: str) -> str | float:
    """argparse type of --gpus-per-trial: ``auto`` or a number (its range is checked with the other flags)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or a number of GPUs") from None


def _request(args: argparse.Namespace) -> SearchRequest:
    space = args.search_space
    overrides = []
    for item in args.overrides:  # search_space=NAME is --search-space NAME: one way to choose a space
        if item.startswith(SPACE_OVERRIDES):
            space = item.partition("=")[2]
        else:
            overrides.append(item)
    return SearchRequest(
        backbone=args.backbone, mode=args.mode, trials=args.trials, concurrency=args.concurrency,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        trials_per_gpu=args.trials_per_gpu, search_space=space,
        name=args.name, storage=args.storage, address=args.address, resume=args.resume, seed=args.seed,
        dashboard_host=args.dashboard_host, max_failures=args.max_failures,
        overrides=flag_overrides(vars(args), CONFIG_FLAGS) + overrides,
    )


def search(argv: list[str], trainable: Trainable = train_trial) -> dict[str, Any]:
    """Parse ``argv`` as the command line does and run the search; ``trainable`` is what each trial runs."""
    return run_experiment(_request(_parser().parse_intermixed_args(argv)), trainable)


def main(argv: list[str] | None = None, trainable: Trainable = train_trial) -> int:
    """The command line; exit 1 when every trial failed (the summary and the most common failure are printed)."""

    def body() -> int:
        summary = search(sys.argv[1:] if argv is None else argv, trainable)
        print(format_summary(summary))
        failure = failed_search(summary)
        if failure:
            print(f"error: {failure}", file=sys.stderr)
            return ALL_FAILED
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
