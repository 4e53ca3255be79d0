"""Fault injection for the search tests: trainables that wrap the real one and break it on purpose.

They live here, not in the package: the product never acts on a fault setting. Each factory
returns a closure, which Ray pickles by value and runs in its real trial actors.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ray import tune

from pipeline.trainer import Trainer
from pipeline.tune.trainable import train_trial


def _around_epoch(epoch: int, act: Callable[[Trainer, Path], None]) -> Callable[..., None]:
    """The real trainable, with ``act(trainer, trial_dir)`` run before the trial's epoch ``epoch`` starts."""

    def trial(config: dict[str, Any], **kwargs: Any) -> None:
        trial_dir = Path(tune.get_context().get_trial_dir())
        original = Trainer.train_epoch

        def train_epoch(self: Trainer, *args: Any, **kw: Any) -> dict[str, float]:
            if self.epoch + 1 == epoch:
                act(self, trial_dir)
            return original(self, *args, **kw)

        Trainer.train_epoch = train_epoch  # actors are reused: put it back whatever happens
        try:
            train_trial(config, **kwargs)
        finally:
            Trainer.train_epoch = original

    return trial


def dies_once_at_epoch(epoch: int) -> Callable[..., None]:
    """Each trial's actor is SIGKILLed once, as epoch ``epoch`` starts: a real crash mid-trial."""

    def kill_once(trainer: Trainer, trial_dir: Path) -> None:
        marker = trial_dir / ".crashed_once"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    return _around_epoch(epoch, kill_once)


def nan_at_epoch(epoch: int) -> Callable[..., None]:
    """A backbone weight becomes NaN as epoch ``epoch`` starts, so that epoch's loss is NaN."""

    def poison(trainer: Trainer, trial_dir: Path) -> None:
        with torch.no_grad():
            next(trainer.backbone.parameters()).fill_(math.nan)

    return _around_epoch(epoch, poison)
