"""Search BILD's hyperparameters with Ray Tune and Optuna.

    python -m pipeline.search --backbone msbdn                       # built-in data, this machine
    python -m pipeline.search --backbone ffanet --mode both --trials 8 --epochs 10
    python -m pipeline.search --backbone msbdn --name msbdn-a --resume   # continue after Ctrl-C / a crash
    python -m pipeline.search --backbone msbdn --address HEAD_IP:6379 --storage /shared/runs

Every flag is checked before any Ray work starts. Trailing ``key=value`` arguments are Hydra
overrides of the training config (e.g. ``train.steps_per_epoch=20 dataset.crop=96``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf

from .backbones import UnknownBackboneError, list_backbones, list_presets
from .config import REPO_ROOT, ConfigError, add_policy_flag, compose_config, flag_overrides, saved_config
from .train import Trainer, load_store
from .tune import SearchOptions, load_search_space, run_search, start_ray
from .tune.space import SearchSpace, space_from_dict

__all__ = ["main", "prepare", "search"]

SEARCH_FLAGS = {
    "backbone": "backbone=",
    "preset": "backbone.preset",
    "dataset": "datasets=",
    "data_root": "dataset.root",
    "epochs": "train.epochs",
    "policy": "policy=",
    "seed": "seed",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--backbone", default="msbdn", help=f"network to search for: {', '.join(list_backbones())}")
    p.add_argument("--preset", default=None, help="size preset: paper | small | tiny (default: the backbone config's, small)")
    p.add_argument("--dataset", default=None, help="descriptor in datasets/ (default builtin: needs no download)")
    p.add_argument("--data-root", default=None, help="folder with the dataset in its native layout")
    p.add_argument("--mode", default="bild", choices=["bild", "plain", "both", "bild-train"],
                   help="bild (default); plain (the baseline); both: the same trial budget on each, for comparison")
    add_policy_flag(p)
    p.add_argument("--trials", type=int, default=None, help="trials per mode (default: the search space's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial, ASHA's max_t (default: config's train.epochs)")
    p.add_argument("--concurrency", type=int, default=2, help="trials running at once")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial (torch threads follow)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial; fractions share one GPU, e.g. 0.25")
    p.add_argument("--search-space", default=None, help="name in search_spaces/ or a YAML path (default: the backbone's own, else default)")
    p.add_argument("--name", default=None, help="experiment name; the same name again resumes it (default: backbone-mode-time)")
    p.add_argument("--storage", default="runs", help="folder holding experiments; on a cluster, a path every node sees")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (HEAD_IP:PORT or 'auto') instead of starting one")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment (the newest matching one without --name)")
    p.add_argument("--seed", type=int, default=None, help="seeds training and Optuna's sampler")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="interface the local dashboard binds to")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of a crashed trial from its last checkpoint")
    p.add_argument("overrides", nargs="*", help="Hydra key=value overrides of the training config")
    return p


def _fail(flag: str, message: str) -> None:
    raise ConfigError(f"{flag}: {message}")


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value, lowest in [("--trials", args.trials, 1), ("--epochs", args.epochs, 1), ("--concurrency", args.concurrency, 1)]:
        if value is not None and value < lowest:
            _fail(flag, f"got {value}; expected an integer >= {lowest}")
    if args.cpus_per_trial <= 0:
        _fail("--cpus-per-trial", f"got {args.cpus_per_trial}; expected > 0")
    if args.gpus_per_trial < 0 or (args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer()):
        _fail("--gpus-per-trial", f"got {args.gpus_per_trial}; expected 0, a fraction in (0, 1], or a whole number")


def _space(args: argparse.Namespace, cfg: DictConfig) -> SearchSpace:
    if args.search_space is None:
        own = REPO_ROOT / "search_spaces" / f"{args.backbone}.yaml"
        return load_search_space(str(own) if own.exists() else "default", cfg)
    return load_search_space(args.search_space, cfg)


def _experiment_name(args: argparse.Namespace) -> str:
    prefix = f"{args.backbone}-{args.mode}"
    if args.name:
        return args.name
    if args.resume:
        earlier = sorted(Path(args.storage).glob(f"{prefix}-*"), key=lambda p: p.stat().st_mtime)
        if not earlier:
            _fail("--resume", f"no earlier experiment {prefix}-* under {args.storage}; pass --name")
        return earlier[-1].name
    return f"{prefix}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def _check_backbone(args: argparse.Namespace) -> None:
    try:
        presets = list_presets(args.backbone)
    except UnknownBackboneError as err:
        raise ConfigError(f"--backbone: {err}") from err
    if args.preset is not None and args.preset not in presets:
        _fail("--preset", f"unknown preset {args.preset!r} for {args.backbone}; expected one of {', '.join(presets)}")


def _new_experiment(args: argparse.Namespace, name: str) -> tuple[DictConfig, SearchSpace, SearchOptions]:
    cfg = compose_config(flag_overrides(vars(args), SEARCH_FLAGS) + ["progress=false"] + args.overrides)
    space = _space(args, cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.search_space = OmegaConf.load(space.source)  # saved with the experiment, so a resume needs no file
    OmegaConf.set_struct(cfg, True)
    opts = SearchOptions(
        name=name,
        storage=str(Path(args.storage).resolve()),
        modes={"both": ("bild", "plain")}.get(args.mode, (args.mode,)),
        trials=args.trials or space.trials,
        epochs=cfg.train.epochs,
        concurrency=args.concurrency,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        seed=cfg.seed,
        max_failures=args.max_failures,
    )
    return cfg, space, opts


def _saved_experiment(folder: Path) -> tuple[DictConfig, SearchSpace, SearchOptions]:
    """An earlier experiment resumes with its own config, space and options, whatever else is passed."""
    cfg = saved_config(OmegaConf.load(folder / "config.yaml"))
    space = space_from_dict(OmegaConf.to_container(cfg.search_space), str(folder / "config.yaml"))
    saved = json.loads((folder / "search.json").read_text())
    saved["modes"] = tuple(saved["modes"])
    return cfg, space, SearchOptions(**saved)


def prepare(argv: list[str]) -> tuple[DictConfig, SearchSpace, Any, SearchOptions]:
    """Parse and validate everything (config, space, data, crops) before Ray starts."""
    args = _parser().parse_intermixed_args(argv)
    _check_backbone(args)
    _check_numbers(args)
    name = _experiment_name(args)
    folder = Path(args.storage) / name
    if (folder / "search.json").exists():
        cfg, space, opts = _saved_experiment(folder)
    elif args.resume:
        _fail("--resume", f"no experiment at {folder}")
    else:
        cfg, space, opts = _new_experiment(args, name)
    opts.address, opts.dashboard_host = args.address, args.dashboard_host  # where to run may change
    store = load_store(cfg)
    Trainer(cfg, store)  # builds data splits, crops and networks once: a bad config fails before Ray
    return cfg, space, store, opts


def search(argv: list[str]) -> dict[str, Any]:
    """Validate, start or join Ray, run the search, and return its summary."""
    cfg, space, store, opts = prepare(argv)
    ray_info = start_ray(opts)
    print(f"Ray dashboard: {ray_info['dashboard_url'] or 'not running'} ({ray_info['auth']})", flush=True)
    print(f"experiment: {opts.experiment_dir}  ({', '.join(opts.modes)}; {opts.trials} trials each, "
          f"{opts.epochs} epochs, {opts.concurrency} at once)", flush=True)
    try:
        return {**run_search(cfg, space, store, opts), "dashboard": ray_info}
    finally:
        ray.shutdown()  # disconnects from a cluster; stops the local Ray this search started


def _print_summary(summary: dict[str, Any]) -> None:
    print("\n== search finished ==")
    for mode in summary["modes"]:
        print(f"[{mode['mode']}] {mode['trials']} trials, {mode['errors']} failed")
        best = mode.get("best")
        if best is None:
            print("  no trial reported a result")
            continue
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        print(f"  best trial {best['trial_id']} (epoch {best['epoch']}): select PSNR {best['select_psnr']:.2f} dB, "
              f"SSIM {best['select_ssim']:.4f}")
        print(f"  hyperparameters: {params}")
        print(f"  checkpoint: {best['checkpoint']}")
    print(f"results (Parquet): {summary['results']}")
    print(f"next: python -m pipeline.analyze {summary['experiment_dir']}  |  python -m pipeline.promote {summary['experiment_dir']}")


def main(argv: list[str] | None = None) -> int:
    try:
        summary = search(sys.argv[1:] if argv is None else argv)
    except (ValueError, FileNotFoundError) as err:  # ConfigError, SearchSpaceError, DataError among them
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_summary(summary)
    with open(Path(summary["experiment_dir"]) / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
