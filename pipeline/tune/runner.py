"""Build and run one search: Ray (local with the dashboard, or an existing cluster), Optuna's
TPE through Ray Tune's OptunaSearch, ASHA, per-trial resources, the shared dataset index,
Parquet results, and resumption of an interrupted experiment.

Experiment folder (``<storage>/<name>/``):

    config.yaml        the resolved Hydra config (backbone, dataset, search space, training)
    search.json        the search options (trials, concurrency, resources, modes)
    results/           the Parquet tables (pipeline/results.py)
    tune-bild/         Ray Tune's experiment for the bild trials (trial folders, checkpoints)
    tune-plain/        ... and for plain trials with ``--mode both``
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ..data import PairIndex
from ..files import atomic_write_text
from ..results import HYPERPARAM_KEYS
from .callback import ParquetResultsCallback
from .space import SearchSpace, make_sampler
from .trainable import train_trial

__all__ = ["SearchOptions", "Trainable", "start_ray", "run_search"]

# What each trial runs: ``train_trial``'s signature (config, *, base_cfg, space, index).
Trainable = Callable[..., None]


@dataclass
class SearchOptions:
    name: str
    storage: str
    modes: tuple[str, ...]  # ("bild",), ("plain",) or ("bild", "plain")
    trials: int
    epochs: int
    concurrency: int
    cpus_per_trial: float
    gpus_per_trial: float
    seed: int | None  # the sampler's seed; None: the search space's own
    address: str | None = None
    dashboard_host: str = "127.0.0.1"
    max_failures: int = 2
    grace_period: int = 1

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage).resolve() / self.name


def start_ray(opts: SearchOptions) -> dict[str, Any]:
    """Connect to ``--address`` or start a local Ray with the dashboard; say how to reach it."""
    if opts.address:
        ctx = ray.init(address=opts.address, log_to_driver=False)
    else:
        ctx = ray.init(include_dashboard=True, dashboard_host=opts.dashboard_host, log_to_driver=False)
    url = ctx.dashboard_url
    info = {"dashboard_url": f"http://{url}" if url else None, "address": ctx.address_info.get("address")}
    token = Path.home() / ".ray" / "auth_token"
    info["auth"] = (
        f"send the token in {token} as 'Authorization: Bearer <token>'"
        if token.exists() and os.environ.get("RAY_AUTH_MODE") != "disabled"
        else "no token needed"
    )
    return info


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default names carry ',' and '=': awkward in a shell


def _trainable(cfg: DictConfig, space: SearchSpace, index_ref: ray.ObjectRef, opts: SearchOptions,
               fn: Trainable) -> Any:
    base = OmegaConf.to_container(cfg, resolve=True)
    with_data = tune.with_parameters(fn, base_cfg=base, space=space, index=index_ref)
    return tune.with_resources(with_data, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})


def _tuner(mode: str, cfg: DictConfig, space: SearchSpace, index_ref: ray.ObjectRef, opts: SearchOptions,
           fn: Trainable) -> tune.Tuner:
    trainable = _trainable(cfg, space, index_ref, opts, fn)
    path = opts.experiment_dir / f"tune-{mode}"
    if tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False)
    searcher = OptunaSearch(  # given its own space, it ignores TuneConfig's metric: name it here too
        space=space.for_mode(mode),
        metric=space.metric,
        mode=space.mode,
        sampler=make_sampler(space, opts.trials, opts.seed),
    )
    identity = {
        "experiment": opts.name,
        "backbone": cfg.backbone.name,
        "preset": cfg.backbone.preset,
        "dataset": cfg.dataset.name,
        **{name: OmegaConf.select(cfg, key) for name, key in HYPERPARAM_KEYS.items()},
    }
    return tune.Tuner(
        trainable,
        param_space={"mode": mode},
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=opts.concurrency),
            scheduler=ASHAScheduler(max_t=opts.epochs, grace_period=opts.grace_period, reduction_factor=2,
                                    time_attr="training_iteration"),
            num_samples=opts.trials,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a new trial skips the seconds of importing torch in a fresh worker
        ),
        run_config=tune.RunConfig(
            name=f"tune-{mode}",
            storage_path=str(opts.experiment_dir),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=space.metric, checkpoint_score_order=space.mode
            ),
            callbacks=[ParquetResultsCallback(opts.experiment_dir, identity, opts.epochs, space.metric)],
            verbose=1,
        ),
    )


def _summary(mode: str, grid: tune.ResultGrid, space: SearchSpace) -> dict[str, Any]:
    finished = [r for r in grid if r.metrics and space.metric in r.metrics]
    errors = sum(1 for r in grid if r.error is not None)
    summary: dict[str, Any] = {"mode": mode, "trials": len(grid), "errors": errors}
    if not finished:
        return summary
    best = grid.get_best_result(metric=space.metric, mode=space.mode, scope="all")
    history = best.metrics_dataframe
    row = history.loc[history[space.metric].idxmax() if space.mode == "max" else history[space.metric].idxmin()]
    ckpt = best.get_best_checkpoint(space.metric, space.mode)
    summary["best"] = {
        "trial_id": best.metrics.get("trial_id"),
        "params": {k: v for k, v in best.config.items() if k != "mode"},
        "select_psnr": float(row["select_psnr"]),
        "select_ssim": float(row["select_ssim"]),
        "epoch": int(row["epoch"]),
        "checkpoint": str(Path(ckpt.path) / "checkpoint.pt") if ckpt else None,
    }
    return summary


def run_search(cfg: DictConfig, space: SearchSpace, index: PairIndex, opts: SearchOptions,
               trainable: Trainable = train_trial) -> dict[str, Any]:
    """Run (or resume) the search for each mode; return a summary per mode and where things are.

    ``trainable`` is what each trial runs (``train_trial`` unless a caller wraps it).
    """
    exp = opts.experiment_dir
    atomic_write_text(exp / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(exp / "search.json", json.dumps(asdict(opts), indent=2))
    # The index (names, pairing, sizes; no pixels) goes into the object store once; trials on a
    # node map that one copy zero-copy and read the pixels themselves.
    index_ref = ray.put(index)
    summaries = [_summary(mode, _tuner(mode, cfg, space, index_ref, opts, trainable).fit(), space)
                 for mode in opts.modes]
    return {"experiment_dir": str(exp), "results": str(exp / "results"), "modes": summaries}
