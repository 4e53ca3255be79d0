"""Fault injection for the search tests: trainables that wrap the real one and break it on purpose.

They live here, not in the package: the product never acts on a fault setting. Each factory
returns a closure, which Ray runs in its real trial actors; this module is pickled by value with
it, since the workers cannot import the tests folder.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ray import cloudpickle, tune

from pipeline.trainer import Trainer
from pipeline.tune.trainable import train_trial

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _patched(method: str, act: Callable[[Trainer, Path], None], *, after: bool = False) -> Callable[..., None]:
    """The real trainable, with ``act(trainer, trial_dir)`` run before (or after) each ``Trainer.<method>`` call."""

    def trial(config: dict[str, Any], **kwargs: Any) -> None:
        trial_dir = Path(tune.get_context().get_trial_dir())
        original = getattr(Trainer, method)

        def wrapped(self: Trainer, *args: Any, **kw: Any) -> Any:
            if not after:
                act(self, trial_dir)
            out = original(self, *args, **kw)
            if after:
                act(self, trial_dir)
            return out

        setattr(Trainer, method, wrapped)  # actors are reused: put it back whatever happens
        try:
            train_trial(config, **kwargs)
        finally:
            setattr(Trainer, method, original)

    return trial


def _kill_once(trial_dir: Path) -> None:
    marker = trial_dir / ".crashed_once"
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


def dies_once_at_epoch(epoch: int) -> Callable[..., None]:
    """Each trial's actor is SIGKILLed once, as epoch ``epoch`` starts: a real crash mid-trial."""
    return _patched("train_epoch", lambda trainer, trial_dir: trainer.epoch + 1 == epoch and _kill_once(trial_dir))


def dies_once_after_saving_epoch(epoch: int) -> Callable[..., None]:
    """Each trial's actor is SIGKILLed once, with epoch ``epoch`` checkpointed but not yet reported."""
    return _patched("save", lambda trainer, trial_dir: trainer.epoch == epoch and _kill_once(trial_dir), after=True)


def nan_at_epoch(epoch: int) -> Callable[..., None]:
    """A backbone weight becomes NaN as epoch ``epoch`` starts, so that epoch's loss is NaN."""

    def poison(trainer: Trainer, trial_dir: Path) -> None:
        if trainer.epoch + 1 == epoch:
            with torch.no_grad():
                next(trainer.backbone.parameters()).fill_(math.nan)

    return _patched("train_epoch", poison)



def cuts_checkpoint_then_dies_at_epoch(epoch: int) -> Callable[..., None]:
    """Each trial's newest checkpoint (epoch ``epoch``) is cut to half its bytes, then its actor is SIGKILLed once:
    what a crash mid-write on a filesystem without atomic renames, or a full disk, leaves behind."""

    def trial(config: dict[str, Any], **kwargs: Any) -> None:
        marker_dir = Path(tune.get_context().get_trial_dir())
        original = Trainer.save

        def save(self: Trainer, path: Path, *args: Any, **kw: Any) -> Any:
            out = original(self, path, *args, **kw)
            if self.epoch == epoch and not (marker_dir / ".crashed_once").exists():
                Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
                _kill_once(marker_dir)
            return out

        Trainer.save = save  # actors are reused: put it back whatever happens
        try:
            train_trial(config, **kwargs)
        finally:
            Trainer.save = original

    return trial
