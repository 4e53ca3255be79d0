"""One search experiment from a user's request: validate everything, start or join Ray, run, summarise.

``python -m pipeline.search`` turns its flags into a :class:`SearchRequest` and calls
:func:`run_experiment`. Every value is checked before Ray starts (an unknown backbone, a crop
larger than the images, a malformed search space), and a bad one gets an error naming the
flag, file or key. A request whose experiment folder exists resumes it with its own saved
config, search space and options. ``--storage`` is a local folder or a storage URI
(``pipeline.storage``); everything of the experiment lives there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shlex
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf

from ..backbones import UnknownBackboneError, list_presets
from ..config import ConfigError, compose_config, flatten, group_dir, saved_config
from ..data import PairIndex
from ..storage import Location, location
from ..studies import dashboard_command, study_journal, study_name
from ..trainer import Trainer, load_index
from .lease import ExperimentBusyError, experiment_lease
from .runner import SearchInterrupted, SearchOptions, Trainable, place_trials, run_search, start_ray
from .space import SearchSpace, load_search_space, space_from_dict
from .trainable import train_trial

__all__ = ["MODES", "ExperimentBusyError", "SearchRequest", "check_experiment_name", "experiment_folder",
           "experiment_lock", "failed_search", "format_summary", "prepare", "run_experiment"]

MODES = ("bild", "plain", "both", "bild-train")


@dataclass
class SearchRequest:
    """What a user asks of a search; None keeps the config's or the search space's default."""

    backbone: str | None = None  # None: msbdn for a new experiment, the saved one for a resume
    mode: str | None = None  # None: bild for a new experiment, the saved one for a resume
    trials: int | None = None
    concurrency: int | None = None  # None: every GPU share of the cluster, else 2 (pipeline.tune.runner.place_trials)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str = "auto"  # auto: a 1/trials_per_gpu share when the cluster has GPUs, else 0
    trials_per_gpu: int | None = None  # None: 1
    search_space: str | None = None  # a name in search_spaces/ or a YAML path; None: the backbone's own, else default
    name: str | None = None
    storage: str = "runs"
    address: str | None = None
    resume: bool = False
    seed: int | None = None
    dashboard_host: str = "127.0.0.1"
    max_failures: int = 2
    overrides: list[str] = field(default_factory=list)  # Hydra key=value overrides of the training config


def _fail(flag: str, message: str) -> None:
    raise ConfigError(f"{flag}: {message}")


def _check_numbers(req: SearchRequest) -> None:
    for flag, value, least in [("--trials", req.trials, 1), ("--concurrency", req.concurrency, 1),
                               ("--max-failures", req.max_failures, 0)]:
        if value is not None and value < least:
            _fail(flag, f"got {value}; expected an integer >= {least}")
    if not req.cpus_per_trial > 0:
        _fail("--cpus-per-trial", f"got {req.cpus_per_trial}; expected > 0")
    _check_gpus(req.gpus_per_trial, req.trials_per_gpu)
    if req.mode is not None and req.mode not in MODES:
        _fail("--mode", f"got {req.mode!r}; expected one of {', '.join(MODES)}")


def _check_gpus(gpus: float | str, trials_per_gpu: int | None) -> None:
    if gpus == "auto":
        if trials_per_gpu is not None and trials_per_gpu < 1:
            _fail("--trials-per-gpu", f"got {trials_per_gpu}; expected an integer >= 1")
        return
    if not isinstance(gpus, (int, float)) or gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        _fail("--gpus-per-trial", f"got {gpus!r}; expected auto, 0, a fraction in (0, 1], or a whole number")
    if trials_per_gpu is not None:
        _fail("--trials-per-gpu", f"goes with --gpus-per-trial auto, not {gpus:g}; a share of 1/K is "
                                  f"--gpus-per-trial {1 / trials_per_gpu:g}")


def _check_backbone(req: SearchRequest) -> None:
    if req.backbone is None:
        return
    try:
        presets = list_presets(req.backbone)
    except UnknownBackboneError as err:
        raise ConfigError(f"--backbone: {err}") from err
    preset = next((o.partition("=")[2] for o in req.overrides if o.startswith("backbone.preset=")), None)
    if preset is not None and preset not in presets:
        _fail("--preset", f"unknown preset {preset!r} for {req.backbone}; expected one of {', '.join(presets)}")


def _space(req: SearchRequest, cfg: DictConfig) -> SearchSpace:
    if req.search_space is not None:
        return load_search_space(req.search_space, cfg)
    own = group_dir("search_spaces") / f"{cfg.backbone.name}.yaml"
    return load_search_space(str(own) if own.exists() else "default", cfg)


# One path component of a portable file name: no separators, no "..", nothing a shell must quote.
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def check_experiment_name(name: str) -> None:
    """Refuse a ``--name`` that is not one plain folder name (``../x``, ``.``, ``/tmp/x``, ``a b``)."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        _fail("--name", f"got {name!r}; expected one folder name of at most 100 letters, digits, '.', '_' or '-' "
                        "(not '.' or '..')")


def experiment_folder(storage: str, name: str) -> Location:
    """``storage/name``, resolved, refused unless it lies directly inside ``storage`` (a symlink may not lead out).

    On object storage there are no links: the name alone (``check_experiment_name``) keeps it inside.
    """
    root = location(storage, "--storage")
    if not root.is_local:
        return root / name
    folder = (root.local / name).resolve()
    if folder.parent != root.local:
        _fail("--name", f"{Path(storage) / name} leads to {folder}, outside --storage {root}; expected a folder "
                        "inside it (remove the link or choose another --name)")
    return location(folder)


def _experiment_name(req: SearchRequest) -> str:
    prefix = f"{req.backbone or 'msbdn'}-{req.mode or 'bild'}"
    if req.name:
        check_experiment_name(req.name)
        return req.name
    if req.resume:  # the names end in their start time, so the last in order is the newest
        earlier = sorted(c.name for c in location(req.storage, "--storage").children() if c.name.startswith(f"{prefix}-"))
        if not earlier:
            _fail("--resume", f"no earlier experiment {prefix}-* under {req.storage}; pass --name")
        return earlier[-1]
    return f"{prefix}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def _new_experiment(req: SearchRequest, name: str) -> tuple[DictConfig, SearchSpace, SearchOptions]:
    cfg = compose_config([f"backbone={req.backbone or 'msbdn'}", "progress=false", *req.overrides])
    space = _space(req, cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.search_space = OmegaConf.load(space.source)  # saved with the experiment, so a resume needs no file
    OmegaConf.set_struct(cfg, True)
    opts = SearchOptions(
        name=name,
        storage=str(location(req.storage, "--storage")),
        modes={"both": ("bild", "plain")}.get(req.mode or "bild", (req.mode or "bild",)),
        trials=req.trials or space.trials,
        epochs=cfg.train.epochs,
        concurrency=req.concurrency,
        cpus_per_trial=req.cpus_per_trial,
        gpus_per_trial=req.gpus_per_trial,
        trials_per_gpu=req.trials_per_gpu,
        seed=req.seed,
        max_failures=req.max_failures,
    )
    return cfg, space, opts


def _saved_experiment(folder: Location) -> tuple[DictConfig, SearchSpace, SearchOptions]:
    """An earlier experiment resumes with its own config, space and options."""
    cfg = saved_config(OmegaConf.create((folder / "config.yaml").read_text()))
    space = space_from_dict(OmegaConf.to_container(cfg.search_space), str(folder / "config.yaml"))
    try:
        saved = json.loads((folder / "search.json").read_text())
        saved["modes"] = tuple(saved["modes"])
        opts = SearchOptions(**saved)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"{folder / 'search.json'} is damaged ({err}); expected the options pipeline.search "
                          "saved for this experiment") from err
    return cfg, space, opts


def _check_resume_matches(req: SearchRequest, cfg: DictConfig, opts: SearchOptions) -> None:
    """A resume goes on with the experiment's own settings: a flag that asks for different ones is an error."""
    saved_mode = "both" if len(opts.modes) == 2 else opts.modes[0]
    asked = {"--backbone": (req.backbone, cfg.backbone.name), "--trials": (req.trials, opts.trials),
             "--mode": (req.mode, saved_mode)}
    for flag, (value, saved) in asked.items():
        if value is not None and value != saved:
            _fail(flag, f"got {value!r}, but experiment {opts.name} was started with {saved!r}; resume it without "
                        f"{flag}, or start a new experiment with another --name")
    if not req.overrides:
        return
    # The same command resumes: only settings it asks to be different from the saved ones are refused.
    backbone = [f"backbone={cfg.backbone.name}", "progress=false"]
    asked, plain = (flatten(OmegaConf.to_container(compose_config(o), resolve=True))
                    for o in ([*backbone, *req.overrides], backbone))
    was = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [f"{k}={asked[k]!r} (the experiment has {was.get(k)!r})"
               for k in asked if asked[k] != plain.get(k) and asked[k] != was.get(k)]
    if changed:
        _fail("overrides", f"{', '.join(changed)}: a resumed experiment keeps the config it was started with "
                           f"({opts.experiment_dir / 'config.yaml'}); start a new --name to change it")


def prepare(req: SearchRequest) -> tuple[DictConfig, SearchSpace, PairIndex, SearchOptions]:
    """Validate everything (config, space, data, crops) before Ray starts; resume a saved experiment."""
    _check_backbone(req)
    _check_numbers(req)
    name = _experiment_name(req)
    folder = experiment_folder(req.storage, name)
    if (folder / "search.json").is_file():
        cfg, space, opts = _saved_experiment(folder)
        _check_resume_matches(req, cfg, opts)
    elif req.resume:
        _fail("--resume", f"no experiment at {folder}")
    else:
        cfg, space, opts = _new_experiment(req, name)
    opts.address, opts.dashboard_host = req.address, req.dashboard_host  # where to run may change
    if cfg.device != "auto":
        _fail("overrides", f"device={cfg.device}: in a search Ray gives each trial its device (a GPU share by "
                           "--gpus-per-trial, else the CPU); drop the device override")
    index = load_index(cfg)
    # A bad config fails here, before Ray; on the CPU, so the driver takes no GPU memory from the trials.
    checked = Trainer(OmegaConf.merge(cfg, {"device": "cpu"}), index).cfg.train
    # Every trial starts from the same init model, found wherever the trial runs: its absolute path and sha256.
    cfg.train.init, cfg.train.init_sha256 = checked.init, checked.init_sha256
    return cfg, space, index, opts


def experiment_lock(folder: Location) -> contextlib.AbstractContextManager[None]:
    """One writer per experiment: an ``flock`` on a local folder, a lease object on object storage."""
    return _flock(folder.local) if folder.is_local else experiment_lease(folder)


@contextlib.contextmanager
def _flock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.search.lock`` for the search: one writer per experiment.

    An ``flock`` is released by the kernel when its holder dies, however it dies, so a killed
    search never leaves a stale lock; a second live search on the same experiment stops at once.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".search.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ExperimentBusyError(f"experiment {folder} is being run by {holder}; wait for it, stop it, "
                                      "or choose another --name") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {dt.datetime.now():%Y-%m-%d %H:%M:%S}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def _optuna_info(opts: SearchOptions) -> dict[str, Any]:
    """Where the experiment's Optuna studies are, and the command that shows them."""
    return {"storage": str(study_journal(opts.experiment_dir)),
            "studies": [study_name(opts.name, mode) for mode in opts.modes],
            "dashboard_command": dashboard_command(opts.experiment_dir)}


def run_experiment(req: SearchRequest, trainable: Trainable = train_trial) -> dict[str, Any]:
    """Validate, start or join Ray, run the search, and return its summary (also written to summary.json).

    An interrupted search (Ctrl-C, SIGTERM) raises :class:`SearchInterrupted` naming the command
    that continues it.
    """
    cfg, space, index, opts = prepare(req)
    with experiment_lock(opts.experiment_dir):
        ray_info = start_ray(opts)
        placement = place_trials(opts)
        print(f"Ray: {ray_info['ray']}", flush=True)
        print(f"Ray dashboard: {ray_info['dashboard_url'] or 'not running'} ({ray_info['auth']})", flush=True)
        print(f"{placement.describe()}", flush=True)
        print(f"experiment: {opts.experiment_dir}  ({', '.join(opts.modes)}; {opts.trials} trials each, "
              f"{opts.epochs} epochs)", flush=True)
        optuna_info = _optuna_info(opts)
        print(f"Optuna dashboard: {optuna_info['dashboard_command']}  (studies {', '.join(optuna_info['studies'])}; "
              "needs pip install optuna-dashboard)", flush=True)
        try:
            summary = {**run_search(cfg, space, index, opts, placement, trainable), "dashboard": ray_info,
                       "optuna": optuna_info, "placement": placement.describe()}
        except SearchInterrupted as err:
            raise SearchInterrupted(f"{err}; continue with: python -m pipeline.search --name {opts.name} "
                                    f"--storage {shlex.quote(opts.storage)}") from None
        finally:
            ray.shutdown()  # disconnects from a cluster; stops the local Ray this search started
    (opts.experiment_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def failed_search(summary: dict[str, Any]) -> str | None:
    """One line when no trial of the search succeeded (every one errored or diverged), else None."""
    modes = summary["modes"]
    if any(m["trials"] == 0 or m["errors"] < m["trials"] for m in modes):
        return None
    common = max((m["common_error"] for m in modes), key=lambda c: c["trials"])
    total = sum(m["trials"] for m in modes)
    return (f"all {total} trials failed; the most common failure ({common['trials']} of {total}): {common['error']} "
            f"(every trial's error: the error column of {summary['results']}/trials)")


def format_summary(summary: dict[str, Any]) -> str:
    """The search's outcome for the terminal: per mode the trial count and the best trial."""
    lines = ["", "== search finished ==",
             "(ranked by each trial's best epoch, whose checkpoint is kept; Ray Tune's status table above ranks "
             "by the last epoch reported, so its 'current best trial' can differ)"]
    for mode in summary["modes"]:
        lines.append(f"[{mode['mode']}] {mode['trials']} trials, {mode['errors']} failed")
        best = mode.get("best")
        if best is None:
            lines.append("  no trial reported a result")
            continue
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        lines += [
            f"  best trial {best['trial_id']} (epoch {best['epoch']}): select PSNR {best['select_psnr']:.2f} dB, "
            f"SSIM {best['select_ssim']:.4f}",
            f"  hyperparameters: {params}",
            f"  checkpoint: {best['checkpoint']}",
        ]
    lines += [f"results (Parquet): {summary['results']}",
              f"Optuna studies {', '.join(summary['optuna']['studies'])}: {summary['optuna']['dashboard_command']}",
              f"next: python -m pipeline.analyze {shlex.quote(summary['experiment_dir'])}  |  "
              f"python -m pipeline.promote {shlex.quote(summary['experiment_dir'])}"]
    return "\n".join(lines)
