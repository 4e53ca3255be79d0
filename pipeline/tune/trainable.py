"""The Ray Tune training actor: one trial = one :class:`pipeline.trainer.Trainer`, epoch by epoch.

Everything about training lives in the engine; this function only builds a Trainer from
the experiment's config plus the trial's sampled hyperparameters, resumes it from Tune's
checkpoint when Tune restarts the trial, and reports one metrics dict (with a checkpoint)
per epoch so that ASHA can stop it and Optuna can learn from it.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import ray
import torch
from omegaconf import OmegaConf
from ray import tune

from ..bild import NonFiniteLossError
from ..checkpoints import CheckpointError, load_checkpoint
from ..data import PairIndex
from ..evaluation.inference import set_threads
from ..hardware import flush_denormals, hide_cuda
from ..storage import Location, location
from ..trainer import Trainer
from .space import SearchSpace, apply_params

__all__ = ["CHECKPOINT_FILE", "NONFINITE_PSNR", "TrialDeviceError", "checkpoint_dirname", "train_trial", "trial_device",
           "trial_dirname"]

CHECKPOINT_FILE = "checkpoint.pt"
SCORE_FILE = "score.json"
# Reported as select_psnr when a trial's loss becomes NaN/inf: Optuna's tell() rejects NaN and
# Ray then silently drops the trial from the study; a floor value keeps it, ranked last.
NONFINITE_PSNR = 0.0


def trial_dirname(trial_id: str) -> str:
    """A trial's folder name under ``tune-<mode>/`` (Ray's default names carry ',' and '=': awkward in a shell)."""
    return f"trial_{trial_id}"


def checkpoint_dirname(epoch: int) -> str:
    """The folder of the checkpoint taken after ``epoch`` (1-based): ``checkpoint_000000`` after epoch 1."""
    return f"checkpoint_{epoch - 1:06d}"


class TrialDeviceError(RuntimeError):
    """Ray gave the trial a GPU that torch cannot use; the message says so in one line."""


def trial_device(gpu_ids: list) -> str:
    """The device of a trial from Ray's assignment: ``cuda`` when Ray gave it a GPU share, else ``cpu``.

    A trial given no GPU hides the node's GPUs from itself (Ray no longer does), so it never
    lands on GPU 0 outside Ray's accounting. A trial given a GPU that torch cannot see fails
    at once instead of training on the CPU.
    """
    if not gpu_ids:
        hide_cuda()
        return "cpu"
    if not torch.cuda.is_available():
        raise TrialDeviceError(
            f"Ray gave this trial GPU {', '.join(map(str, gpu_ids))} but torch sees no CUDA device (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); install a CUDA build of torch on "
            "the node, or search with --gpus-per-trial 0"
        )
    return "cuda"


def _index_is_shared(index: PairIndex) -> bool:
    """Arrays read zero-copy from Ray's object store are read-only views of the one shared copy."""
    return not index.sizes.flags.writeable


_CHECKPOINT_DIR = re.compile(r"checkpoint_\d+")


def _checkpoint_files(trial_dir: Location, name: str) -> list[Location]:
    """The trial's ``checkpoint_*/<name>`` files, oldest first (one listing, on disk or in a bucket)."""
    return [f for f in trial_dir.files() if f.name == name and _CHECKPOINT_DIR.fullmatch(f.parent.name)
            and f.parent.parent == trial_dir]


def _newest_complete_checkpoint(trial_dir: Location) -> tuple[tuple[Location, dict[str, Any]] | None, list[str]]:
    """The newest checkpoint in the trial's folder that reads whole (a crash can cut the newest short),
    and why each newer one was skipped."""
    skipped = []
    for path in reversed(_checkpoint_files(trial_dir, CHECKPOINT_FILE)):
        try:
            return (path, load_checkpoint(path)), skipped
        except (CheckpointError, FileNotFoundError) as err:
            skipped.append(str(err))
    return None, skipped


def _resume_note(newest: tuple[Location, dict[str, Any]] | None, skipped: list[str]) -> str | None:
    """What a restarted trial went on from, naming every damaged checkpoint it passed over; None for a fresh trial."""
    if newest is None and not skipped:
        return None
    start = (f"resumed from {newest[0]} (epoch {newest[1]['epoch']})" if newest is not None
             else "started again from scratch: no complete checkpoint left")
    return "; ".join([*(f"skipped damaged checkpoint: {reason}" for reason in skipped), start])


def _save_epoch(trainer: Trainer, trial_dir: Location, metrics: dict[str, Any], metric: str) -> Location:
    """Checkpoint the epoch into the trial folder, then keep only the newest and the best checkpoints.

    The trainable writes its checkpoints itself, whole or not at all (a rename on disk, one PUT
    in a bucket), instead of handing them to Ray Tune to copy: a file copied when the disk fills
    up is left cut short, and a killed driver's saved state can predate the newest one. The
    trial folder is the record, wherever the trial runs.
    """
    folder = trial_dir / checkpoint_dirname(trainer.epoch)
    trainer.save(folder / CHECKPOINT_FILE, metrics=metrics)
    (folder / SCORE_FILE).write_text(json.dumps({metric: metrics[metric]}))
    scores = {}
    for saved in _checkpoint_files(trial_dir, SCORE_FILE):
        try:
            scores[saved.parent] = json.loads(saved.read_text())[metric]
        except (ValueError, KeyError, FileNotFoundError):
            continue  # cut short: never the best
    keep = {folder, max(scores, key=scores.get)}
    for old in {f.parent for f in trial_dir.files() if _CHECKPOINT_DIR.fullmatch(f.parent.name)} - keep:
        old.delete()
    return folder / CHECKPOINT_FILE


def train_trial(
    config: dict[str, Any], *, mode: str, base_cfg: dict[str, Any], space: SearchSpace, index: PairIndex,
    trials_dir: str, settled: dict[str, dict[str, float]] | None = None,
) -> None:
    """Function trainable: ``config`` holds the sampled hyperparameters, ``mode`` the training mode.

    ``index`` (the dataset's names, pairing and sizes) arrives through ``tune.with_parameters``
    from the driver's single ``ray.put``: a zero-copy, read-only view of the one copy in this
    node's object store; the trial reads the pixels itself. ``trials_dir`` is
    the folder (a path every node sees, or a storage URI) holding the trial folders
    (``tune-<mode>/``): a trial resumes from the
    newest complete checkpoint in its own, and first reports that checkpoint's epoch again, marked
    ``resumed``: the records skip it when they have it, and take it when the driver died with
    the report in flight (so a trial whose last epoch was saved, then lost, still ends with a
    result). ``settled`` maps the trials this experiment's own records already show as
    finished (ASHA stopped them, they ran out, their loss diverged) to their last metrics:
    such a trial reports those once, marked ``settled``, and returns, so that a driver killed
    before Ray Tune saved the decision cannot undo it on resume.
    """
    ctx = tune.get_context()
    if ctx.get_trial_id() in (settled or {}):
        tune.report({**settled[ctx.get_trial_id()], "settled": True})
        return
    cfg = OmegaConf.create(base_cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.mode = mode
    cfg = apply_params(cfg, config, space)
    cfg.device = trial_device(ray.get_gpu_ids())
    # Tune runs this function in a thread of its own: flush denormals before its first parallel op
    # starts the thread's pool of torch threads, which inherit the flag.
    flush_denormals()
    # As many threads as the trial's CPUs: trials follow --cpus-per-trial, not the machine.
    cpus = int(ctx.get_trial_resources().required_resources.get("CPU", 1)) or 1
    set_threads(None, cpus=cpus)
    trainer = Trainer(cfg, index)
    trial_dir = location(trials_dir) / trial_dirname(ctx.get_trial_id())
    newest, skipped = _newest_complete_checkpoint(trial_dir)
    # Every report of this run carries the note, so the records get it whether or not the resumed report is taken.
    resumed_from = _resume_note(newest, skipped)
    note = {"resumed_from": resumed_from} if resumed_from else {}
    if skipped:  # into the worker's own log too; the results callback says it in the search's log
        print(f"trial {ctx.get_trial_id()}: {resumed_from}", file=sys.stderr, flush=True)
    if newest is not None:
        path, state = newest
        trainer.load_state_dict(state)
        if "metrics" in state:  # every trial checkpoint has them; a train checkpoint dropped in by hand may not
            tune.report({**state["metrics"], "checkpoint_path": str(path), "resumed": True, **note})

    context = {
        "device": str(trainer.device),
        "precision": trainer.cfg.train.precision,
        "node_id": ray.get_runtime_context().get_node_id(),
        "store_shared": _index_is_shared(index),
        **note,
    }
    try:
        _run_epochs(trainer, trial_dir, context, space.metric)
    finally:
        trainer.close()


def _run_epochs(trainer: Trainer, trial_dir: Location, context: dict[str, Any], metric: str) -> None:
    while trainer.epoch < trainer.cfg.train.epochs:
        try:
            metrics = trainer.train_epoch()
            if "hazy_psnr" not in context:  # after the first steps, not before them (see pipeline.trainer.train)
                context.update(trainer.hazy_reference())
            metrics.update(trainer.evaluate("select"))
        except NonFiniteLossError as err:
            tune.report({"select_psnr": NONFINITE_PSNR, "select_ssim": 0.0, "epoch": trainer.epoch + 1,
                         "nonfinite": str(err), **context})
            return
        metrics.update(epoch=trainer.epoch, nonfinite="", **context)
        path = _save_epoch(trainer, trial_dir, metrics, metric)
        tune.report({**metrics, "checkpoint_path": str(path)})
