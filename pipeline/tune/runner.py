"""Build and run one search: Ray (local with the dashboard, or an existing cluster), Optuna's
TPE through Ray Tune's OptunaSearch, ASHA, per-trial resources, the shared dataset index, Parquet
results, and resumption of an interrupted experiment.

Experiment folder (``<storage>/<name>/``, on a local disk or in an object store, see pipeline/storage.py):

    config.yaml        the resolved Hydra config (backbone, dataset, search space, training)
    search.json        the search options (trials, concurrency, resources, modes)
    results/           the Parquet tables (pipeline/results.py)
    optuna/journal.log the Optuna studies, one per mode (``<name>-<mode>``): optuna.load_study and
                       optuna-dashboard read them (pipeline/studies.py; on object storage a copy of
                       the driver's local journal, uploaded after every trial result)
    tune-bild/         Ray Tune's experiment for the bild trials (trial folders, checkpoints)
    tune-plain/        ... and for plain trials with ``--mode both``
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import signal
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray._private import ray_constants
from omegaconf import DictConfig, OmegaConf
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from optuna.trial import TrialState

from ..config import ConfigError
from ..data import PairIndex
from ..files import DiskFullError
from ..results import FINISHED, HYPERPARAM_KEYS, read_rows, results_dir
from ..storage import Location, location
from ..studies import pull_study, push_study, study_name, study_storage
from .callback import ParquetResultsCallback, StudyUploadCallback
from .journal import JournalBackupCallback, create_study, recover_journal
from .space import SearchSpace, make_sampler
from .state import StateBackupCallback, restore_state_backup
from .trainable import train_trial, trial_dirname

__all__ = ["DEFAULT_CPU_CONCURRENCY", "Placement", "SearchInterrupted", "SearchOptions", "Trainable",
           "check_dataset_visible", "check_resources", "place_trials", "start_ray", "run_search"]

# What each trial runs: ``train_trial``'s signature (config, *, mode, base_cfg, space, index, trials_dir, settled).
Trainable = Callable[..., None]
# Trial statuses in the experiment's records: settled ones are never run again; failed ones are never best.
SETTLED = (*FINISHED, "NONFINITE")
FAILED = ("ERROR", "NONFINITE")
DEFAULT_CPU_CONCURRENCY = 2  # trials at once on a cluster without GPUs, unless --concurrency says otherwise


@dataclass
class SearchOptions:
    name: str
    storage: str
    modes: tuple[str, ...]  # ("bild",), ("plain",) or ("bild", "plain")
    trials: int
    epochs: int
    concurrency: int | None  # None: as many as the cluster's GPU shares, else DEFAULT_CPU_CONCURRENCY
    cpus_per_trial: float
    gpus_per_trial: float | str  # "auto": a 1/trials_per_gpu share when the cluster has GPUs, else 0
    seed: int | None  # the sampler's seed; None: the search space's own
    trials_per_gpu: int | None = None  # None: 1
    address: str | None = None
    dashboard_host: str = "127.0.0.1"
    max_failures: int = 2
    grace_period: int = 1

    @property
    def experiment_dir(self) -> Location:
        return location(self.storage, "--storage") / self.name


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped before every trial finished (Ctrl-C, SIGTERM); what finished is kept."""


class RayUnavailableError(OSError):
    """Ray could not be started or reached; the message says which address."""


# How long --address may take to answer before the search gives up, and how often it is tried.
ADDRESS_TIMEOUT_S = 5.0
ADDRESS_TRIES = 3


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` or anything else Ray resolves itself."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def probe_address(address: str) -> None:
    """Refuse within seconds an ``--address`` where nothing answers, instead of Ray's minutes of retries.

    A TCP connection to the address is tried ``ADDRESS_TRIES`` times, ``ADDRESS_TIMEOUT_S`` each at
    most (so a head node that is briefly busy still gets its chance); ``auto`` is left to Ray, which
    fails at once when it finds no cluster.
    """
    target = _host_port(address)
    if target is None:
        return
    reason = ""
    for attempt in range(ADDRESS_TRIES):
        try:
            with socket.create_connection(target, timeout=ADDRESS_TIMEOUT_S):
                return
        except OSError as err:
            reason = err.strerror or type(err).__name__
        if attempt + 1 < ADDRESS_TRIES:
            time.sleep(1.0)
    raise RayUnavailableError(
        f"--address {address}: no Ray cluster answers there (tried a TCP connection to {target[0]}:{target[1]} "
        f"{ADDRESS_TRIES} times over {ADDRESS_TRIES * (ADDRESS_TIMEOUT_S + 1):.0f} s at most: {reason}); "
        "expected the head node's HOST:PORT as printed by 'ray start --head', or leave --address out for a "
        "private local Ray")


_CLUSTER_ENV = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the private Ray's node IP 127.0.0.1, so that every server it starts binds to loopback.

    Ray takes the node IP from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (read when ``ray`` is imported,
    and again by each process Ray starts): with it off, the GCS, the raylet, the dashboard agent,
    the runtime-env agent, the metrics export port and the dashboard's and autoscaler's metrics
    servers all listen on 127.0.0.1 instead of every interface. ``--dashboard-host`` still opens
    the dashboard itself where asked.
    """
    before_env, before_flag = os.environ.get(_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = before_env


def _init_ray(opts: SearchOptions) -> Any:
    if opts.address:
        probe_address(opts.address)
        return ray.init(address=opts.address, log_to_driver=False)
    with _loopback_only():
        return ray.init(address="local", include_dashboard=True, dashboard_host=opts.dashboard_host,
                        log_to_driver=False)


def start_ray(opts: SearchOptions) -> dict[str, Any]:
    """Join ``--address`` on purpose, or start a private local Ray; never join one that happens to run here.

    ``ray.init()`` without an address would join a cluster it finds on the machine (one left by
    ``ray start``, even a stale one); ``address="local"`` always starts this search's own, bound
    to loopback (see :func:`_loopback_only`).
    """
    try:
        ctx = _init_ray(opts)
    except RayUnavailableError:
        raise
    except Exception as err:  # Ray raises a bare Exception on a start timeout, ConnectionError on a bad address
        target = f"the Ray cluster at --address {opts.address}" if opts.address else "a local Ray"
        raise RayUnavailableError(f"could not start or reach {target}: {str(err).strip().splitlines()[0]}") from err
    if opts.address:
        where = f"joined the Ray cluster at {ctx.address_info.get('address')} (--address {opts.address})"
    else:
        where = f"started a private local Ray at {ctx.address_info.get('address')} (pass --address to join a cluster)"
    url = ctx.dashboard_url
    info = {"ray": where, "dashboard_url": f"http://{url}" if url else None, "address": ctx.address_info.get("address")}
    token = Path.home() / ".ray" / "auth_token"
    info["auth"] = (
        f"send the token in {token} as 'Authorization: Bearer <token>'"
        if token.exists() and os.environ.get("RAY_AUTH_MODE") != "disabled"
        else "no token needed"
    )
    return info


@dataclass(frozen=True)
class Placement:
    """Where trials run, decided once Ray is up: the GPU share each trial asks Ray for, and how many at once."""

    gpus_per_trial: float
    concurrency: int
    cluster_gpus: float
    asked: str  # why: "auto" or the flag's value

    def describe(self) -> str:
        if self.gpus_per_trial > 0:
            return f"trials on GPU, {self.gpus_per_trial:g} GPU each, {self.concurrency} at once"
        if self.asked == "auto":
            return f"no GPU in the cluster: trials on CPU, {self.concurrency} at once"
        return f"trials on CPU (--gpus-per-trial 0), {self.concurrency} at once"


def place_trials(opts: SearchOptions) -> Placement:
    """Each trial's GPU share and the concurrency, from the options and the connected cluster's GPUs.

    ``auto`` gives each trial a 1/K share of a GPU (K = ``--trials-per-gpu``, default 1) when the
    cluster has GPUs, and none otherwise. Unless ``--concurrency`` is set, as many trials run at
    once as the cluster has GPU shares (``DEFAULT_CPU_CONCURRENCY`` on the CPU).
    """
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if opts.gpus_per_trial == "auto":
        gpus = 1.0 / (opts.trials_per_gpu or 1) if cluster_gpus > 0 else 0.0
    else:
        gpus = float(opts.gpus_per_trial)
    concurrency = opts.concurrency
    if concurrency is None:
        concurrency = max(1, math.floor(cluster_gpus / gpus + 1e-9)) if gpus > 0 else DEFAULT_CPU_CONCURRENCY
    placement = Placement(gpus, concurrency, cluster_gpus, str(opts.gpus_per_trial))
    check_resources(opts.cpus_per_trial, gpus)
    return placement


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Refuse per-trial resources that no node of the connected cluster can ever provide."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for flag, key, amount in (("--cpus-per-trial", "CPU", cpus_per_trial),
                              ("--gpus-per-trial", "GPU", gpus_per_trial)):
        largest = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if amount > largest:
            raise ConfigError(f"{flag} {amount:g}: no node of this Ray cluster has {amount:g} {key}s "
                              f"(the largest has {largest:g}); every trial would wait forever")


def _sees(paths: list[str]) -> bool:
    return all(os.path.isfile(p) for p in paths)


def check_dataset_visible(index: PairIndex, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Refuse, naming the node, a cluster node that would run trials but cannot read the dataset.

    Data stays a path (NFS, or the same copy at the same path on every node); only results,
    checkpoints and studies go to ``--storage``. One tiny task per node that could run a
    trial checks that the first pair's files are there, before any trial starts.
    """
    if not len(index):
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = [str(index.hazy_path(0)), str(index.clear_path(0))]
    probe = ray.remote(num_cpus=0)(_sees)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cpus_per_trial
             and n["Resources"].get("GPU", 0) >= gpus_per_trial]
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(paths) for n in nodes])
    blind = [n for n, sees in zip(nodes, answers) if not sees]
    if blind:
        names = ", ".join(f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})" for n in blind)
        raise ConfigError(f"dataset root {index.root}: node {names} cannot read {paths[0]}; the data must be a path "
                          "every node reads (NFS, or the same copy at the same path on each node)")


class _OneLineTrialFailures(logging.Filter):
    """Ray Tune logs a failed trial with its whole traceback; say it in one line (the trial's error file keeps it all).

    The failure itself is recorded in the results (status ERROR, the error's last line) and in
    Ray's ``error.txt`` in the trial folder, so the terminal needs only the gist.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Trial task failed"):
            last = str(record.exc_info[1]).strip().splitlines()[-1] if record.exc_info[1] else ""
            record.msg, record.args = f"{record.getMessage()}: {last}", ()
            record.exc_info, record.exc_text = None, None
        return True


def _forward_sigterm() -> Any:
    """SIGTERM does what Ctrl-C does during a search: Ray Tune stops cleanly and saves its state."""
    return signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def _trial_dirname(trial: Any) -> str:
    return trial_dirname(trial.trial_id)


class _StudySearch(OptunaSearch):
    """OptunaSearch that labels each Optuna trial with its Ray trial id (user attribute ``trial_id``),
    so a trial in optuna-dashboard is found in the Parquet tables and among the trial folders."""

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr("trial_id", trial_id)  # the Optuna trial suggest just asked for
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("settled"):  # a finished trial repeating its record on resume: the study has it
            return
        try:  # the step is the epoch: a restarted trial's training_iteration counts from 1 again
            with warnings.catch_warnings():  # Optuna keeps a step's first value: a resumed epoch is a repeat
                warnings.filterwarnings("ignore", message="The reported value is ignored")
                super().on_trial_result(trial_id, {**result, "training_iteration": result["epoch"]})
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the journal saved the trial's end before a killed driver's Tune state did

    def restore(self, checkpoint_path: str) -> None:
        """Restore Tune's saved searcher, then point its trials at the journal as it is now.

        A journal repaired or rebuilt before this resume (pipeline/tune/journal.py) may number
        its trials differently from the one the searcher was saved with: each trial is found
        again by its Ray trial id; one the journal lost is added back, running, with its parameters.
        """
        super().restore(checkpoint_path)
        saved = self._ot_study
        # A fresh storage: the saved one remembers where each record began in the file as it was
        # (a searcher saved before experiment_dir was kept has only that one).
        storage = study_storage(self.experiment_dir) if hasattr(self, "experiment_dir") else saved._storage
        study = optuna.load_study(study_name=saved.study_name, storage=storage, sampler=saved.sampler)
        by_ray_id = {t.user_attrs.get("trial_id"): t._trial_id for t in study.get_trials(deepcopy=False)}
        for ray_id, trial in self._ot_trials.items():
            if ray_id not in by_ray_id:
                cached = trial._cached_frozen_trial
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.RUNNING, params=cached.params, distributions=cached.distributions,
                    user_attrs={"trial_id": ray_id}))
                by_ray_id[ray_id] = study.get_trials(deepcopy=False)[-1]._trial_id
            self._ot_trials[ray_id] = optuna.Trial(study, by_ray_id[ray_id])
        self._ot_study = study


def _searcher(mode: str, space: SearchSpace, opts: SearchOptions) -> OptunaSearch:
    # Created here first so the study says what it optimises; OptunaSearch then loads it (load_if_exists).
    create_study(mode, space, opts.experiment_dir, opts.name)
    storage, name = study_storage(opts.experiment_dir), study_name(opts.name, mode)
    searcher = _StudySearch(  # given its own space, it ignores TuneConfig's metric: name it here too
        space=space.for_mode(mode),
        metric=space.metric,
        mode=space.mode,
        sampler=make_sampler(space, opts.trials, opts.seed),
        study_name=name,
        storage=storage,
    )
    # Where restore() finds the journal again: on object storage, in this machine's cache (a resume may run elsewhere).
    searcher.experiment_dir = str(opts.experiment_dir)
    return searcher


def _fail_lost_study_trials(mode: str, grid: tune.ResultGrid, opts: SearchOptions) -> None:
    """Mark FAIL the study's trials still RUNNING that Ray no longer knows.

    A driver killed (kill -9) between two of Ray's experiment snapshots loses the trials it
    started in between, and the resumed search runs their configurations again under new ids;
    the results callback moves their Parquet rows to ``orphaned/``, and here the study closes
    them, so nothing stays RUNNING forever. Trials that Ctrl-C left unfinished are in ``grid``.
    """
    known = {Path(r.path).name for r in grid}  # Ray's path: a local path or bucket/key, both end in the trial folder
    study = optuna.load_study(study_name=study_name(opts.name, mode), storage=study_storage(opts.experiment_dir))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial_dirname(trial.user_attrs.get("trial_id", "")) not in known:
            study.tell(trial.number, state=TrialState.FAIL)


def _trial_rows(opts: SearchOptions, mode: str) -> list[dict[str, Any]]:
    """This experiment's own record of the mode's trials (the Parquet trials table)."""
    return [r for r in read_rows(results_dir(opts.experiment_dir) / "trials") if r["mode"] == mode]


def _trainable(mode: str, cfg: DictConfig, space: SearchSpace, index_ref: ray.ObjectRef, opts: SearchOptions,
               placement: Placement, fn: Trainable) -> Any:
    base = OmegaConf.to_container(cfg, resolve=True)
    settled = {r["trial_id"]: {"select_psnr": r["last_select_psnr"] or 0.0, "select_ssim": r["last_select_ssim"] or 0.0}
               for r in _trial_rows(opts, mode) if r["status"] in SETTLED}
    with_data = tune.with_parameters(fn, mode=mode, base_cfg=base, space=space, index=index_ref,
                                     trials_dir=str(opts.experiment_dir / f"tune-{mode}"), settled=settled)
    return tune.with_resources(with_data, {"cpu": opts.cpus_per_trial, "gpu": placement.gpus_per_trial})


def _state_callbacks(path: Location) -> list[tune.Callback]:
    """The last-good copy of Tune's state, on a local disk only: an object is written whole by one PUT."""
    if not path.is_local:
        return []
    restore_state_backup(path.local)
    return [StateBackupCallback(path.local)]


def _tuner(mode: str, cfg: DictConfig, space: SearchSpace, index_ref: ray.ObjectRef, opts: SearchOptions,
           placement: Placement, fn: Trainable) -> tune.Tuner:
    trainable = _trainable(mode, cfg, space, index_ref, opts, placement, fn)
    path = opts.experiment_dir / f"tune-{mode}"
    state_callbacks = _state_callbacks(path)
    fs = None if path.is_local else path.fs  # Ray Tune's own storage_filesystem support for URIs
    if tune.Tuner.can_restore(path.path, storage_filesystem=fs):
        return tune.Tuner.restore(path.path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs)
    identity = {
        "experiment": opts.name,
        "backbone": cfg.backbone.name,
        "preset": cfg.backbone.preset,
        "dataset": cfg.dataset.name,
        **{name: OmegaConf.select(cfg, key) for name, key in HYPERPARAM_KEYS.items()},
    }
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            search_alg=ConcurrencyLimiter(_searcher(mode, space, opts), max_concurrent=placement.concurrency),
            scheduler=ASHAScheduler(max_t=opts.epochs, grace_period=opts.grace_period, reduction_factor=2,
                                    time_attr="epoch"),  # a restarted trial's training_iteration counts from 1 again
            num_samples=opts.trials,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a new trial skips the seconds of importing torch in a fresh worker
        ),
        run_config=tune.RunConfig(
            name=f"tune-{mode}",
            storage_path=opts.experiment_dir.path,
            storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            # The study's copy goes up before the results are written, as a local journal is written first:
            # a killed driver never leaves a trial finished in the results but running in the study.
            callbacks=[StudyUploadCallback(opts.experiment_dir),
                       ParquetResultsCallback(opts.experiment_dir, identity, mode, opts.epochs, space.metric),
                       *state_callbacks, JournalBackupCallback(opts.experiment_dir)],
            verbose=1,
        ),
    )


def _summary(mode: str, space: SearchSpace, opts: SearchOptions) -> dict[str, Any]:
    """The mode's outcome from the experiment's own records: trials, failures, and the best finished trial.

    A trial that errored or whose loss diverged counts as failed and is never the best.
    """
    rows = _trial_rows(opts, mode)
    failed = [r for r in rows if r["status"] in FAILED]
    summary: dict[str, Any] = {"mode": mode, "trials": len(rows), "errors": len(failed)}
    if failed:  # the failure most trials share, with how many: what to fix first
        (error, count), = Counter(r["error"] or r["status"] for r in failed).most_common(1)
        summary["common_error"] = {"error": error, "trials": count}
    best_col = f"best_{space.metric}"
    finished = [r for r in rows if r["status"] in FINISHED and r[best_col] is not None and r["best_checkpoint_path"]]
    if finished:
        best = max(sorted(finished, key=lambda r: r["trial_id"]), key=lambda r: r[best_col])
        summary["best"] = {
            "trial_id": best["trial_id"],
            "params": {name: best.get(name) for name in space.for_mode(mode)},
            "select_psnr": best["best_select_psnr"],
            "select_ssim": best["best_select_ssim"],
            "epoch": best["best_epoch"],
            "checkpoint": best["best_checkpoint_path"],
        }
    return summary


def _disk_full(err: BaseException | None) -> bool:
    while err is not None:
        if isinstance(err, DiskFullError) or getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) \
                or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _fit(tuner: tune.Tuner, opts: SearchOptions) -> tune.ResultGrid:
    """``tuner.fit()``, with a full disk (wrapped by Ray Tune in its own errors) said in one line."""
    try:
        return tuner.fit()
    except Exception as err:
        if _disk_full(err):
            raise DiskFullError(errno.ENOSPC, f"no space left on the device holding {opts.experiment_dir}; free "
                                              "some and run the same command again to resume") from None
        raise


def _check_disk(mode: str, opts: SearchOptions) -> None:
    """Trials that failed because the disk was full are not failures of their settings: stop, to resume later."""
    # The trial's error says it as the OS does ("No space left on device") or as pipeline.files does.
    if any(r["status"] == "ERROR" and "no space left" in (r["error"] or "").lower() for r in _trial_rows(opts, mode)):
        raise DiskFullError(errno.ENOSPC, f"no space left on the device holding {opts.experiment_dir}: the {mode} "
                                          "trials could not save; free some and run the same command again to resume")


def _interrupted(mode: str, opts: SearchOptions) -> bool:
    """Whether the mode stopped before all its trials reached a final status (by the experiment's own records)."""
    rows = _trial_rows(opts, mode)
    return len(rows) < opts.trials or any(r["status"] not in SETTLED + ("ERROR",) for r in rows)


def run_search(cfg: DictConfig, space: SearchSpace, index: PairIndex, opts: SearchOptions, placement: Placement,
               trainable: Trainable = train_trial) -> dict[str, Any]:
    """Run (or resume) the search for each mode; return a summary per mode and where things are.

    ``placement`` is where trials run (:func:`place_trials`); ``trainable`` is what each trial
    runs (``train_trial`` unless a caller wraps it).
    """
    exp = opts.experiment_dir
    (exp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (exp / "search.json").write_text(json.dumps(asdict(opts), indent=2))  # as asked: a resume places anew
    pull_study(exp)  # on object storage: the uploaded journal, when newer than this machine's copy
    recover_journal(exp, opts.name, opts.modes, space)
    check_dataset_visible(index, opts.cpus_per_trial, placement.gpus_per_trial)
    # The index (names, pairing, sizes; no pixels) goes into the object store once; trials on a
    # node map that one copy zero-copy and read the pixels themselves.
    index_ref = ray.put(index)
    previous = _forward_sigterm()
    controller_log = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _OneLineTrialFailures) for f in controller_log.filters):
        controller_log.addFilter(_OneLineTrialFailures())
    try:
        for mode in opts.modes:  # --mode both stops as a whole: an interrupted half ends the search
            grid = _fit(_tuner(mode, cfg, space, index_ref, opts, placement, trainable), opts)
            _fail_lost_study_trials(mode, grid, opts)
            push_study(opts.experiment_dir)
            _check_disk(mode, opts)
            if _interrupted(mode, opts):
                raise SearchInterrupted(f"the {mode} trials did not all finish")
    finally:
        signal.signal(signal.SIGTERM, previous)
    summaries = [_summary(mode, space, opts) for mode in opts.modes]
    return {"experiment_dir": str(exp), "results": str(exp / "results"), "modes": summaries}
