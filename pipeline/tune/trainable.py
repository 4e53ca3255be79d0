"""The Ray Tune training actor: one trial = one :class:`pipeline.trainer.Trainer`, epoch by epoch.

Everything about training lives in the engine; this function only builds a Trainer from
the experiment's config plus the trial's sampled hyperparameters, resumes it from Tune's
checkpoint when Tune restarts the trial, and reports one metrics dict (with a checkpoint)
per epoch so that ASHA can stop it and Optuna can learn from it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray
from omegaconf import OmegaConf
from ray import tune

from ..bild import NonFiniteLossError
from ..evaluation.inference import set_threads
from ..data import PairIndex
from ..trainer import Trainer
from .space import SearchSpace, apply_params

__all__ = ["CHECKPOINT_FILE", "NONFINITE_PSNR", "train_trial"]

CHECKPOINT_FILE = "checkpoint.pt"
# Reported as select_psnr when a trial's loss becomes NaN/inf: Optuna's tell() rejects NaN and
# Ray then silently drops the trial from the study; a floor value keeps it, ranked last.
NONFINITE_PSNR = 0.0


def _index_is_shared(index: PairIndex) -> bool:
    """Arrays read zero-copy from Ray's object store are read-only views of the one shared copy."""
    return not index.sizes.flags.writeable


def train_trial(config: dict[str, Any], *, base_cfg: dict[str, Any], space: SearchSpace, index: PairIndex) -> None:
    """Function trainable: ``config`` holds the sampled hyperparameters and the mode.

    ``index`` (the dataset's names, pairing and sizes) arrives through ``tune.with_parameters``
    from the driver's single ``ray.put``: a zero-copy, read-only view of the one copy in this
    node's object store. The trial reads the pixels itself, through the node's decoded cache.
    The ``store_shared`` column records that the index came from the object store.
    """
    ctx = tune.get_context()
    cfg = OmegaConf.create(base_cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.mode = config["mode"]
    cfg = apply_params(cfg, config, space)
    # As many threads as the trial's CPUs: trials follow --cpus-per-trial, not the machine.
    cpus = int(ctx.get_trial_resources().required_resources.get("CPU", 1)) or 1
    set_threads(None, cpus=cpus)
    trainer = Trainer(cfg, index)

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load(Path(d) / CHECKPOINT_FILE)

    context = {
        "device": str(trainer.device),
        "node_id": ray.get_runtime_context().get_node_id(),
        "store_shared": _index_is_shared(index),
    }
    try:
        _run_epochs(trainer, context)
    finally:
        trainer.close()


def _run_epochs(trainer: Trainer, context: dict[str, Any]) -> None:
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
        with tempfile.TemporaryDirectory() as d:
            trainer.save(Path(d) / CHECKPOINT_FILE, metrics=metrics)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
