"""Training crops cut in worker processes, ahead of the step that needs them.

The training process draws every crop of a step (`CropSampler.draw`: pairs, windows,
flips) from its own generator, in the same order as if it cut them itself; a torch
`DataLoader` hands each step's `StepSpec` to a worker process, which reads the pairs
(through the decoded cache when there is one) and cuts the windows. Workers only read and
cut, so the crops are bit for bit those of the same specs cut in the training process,
whatever the number of workers, and the random stream never depends on them.

Workers persist across epochs (`persistent_workers`), prefetch two steps each, return
uint8 crops (a quarter of the bytes of float32), and on CUDA place them in pinned memory
so the copy to the device can be non-blocking.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..hardware import flush_denormals
from .crops import CropSpec, cut_crops
from .errors import DataError
from .index import PairIndex

__all__ = ["StepCrops", "StepSpec", "CropLoader"]


@dataclass(frozen=True)
class StepSpec:
    """The crops of one training step: n training crops and, in the bild modes, m validation crops."""

    train: CropSpec
    val: CropSpec | None = None


# (hazy, clear, val_hazy, val_clear): uint8 (n, S, S, 3) tensors; the validation pair is None in plain mode.
StepCrops = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class _CutSteps(Dataset):
    """Indexed by a `StepSpec` (the sampler yields them), returns its crops or the `DataError` reading raised."""

    def __init__(self, index: PairIndex, crop: int) -> None:
        self.index, self.crop = index, crop

    def __getitem__(self, step: StepSpec) -> StepCrops | DataError:
        try:
            hazy, clear = cut_crops(self.index, step.train, self.crop)
            val = cut_crops(self.index, step.val, self.crop) if step.val is not None else None
        except DataError as err:
            return err  # re-raised by the training process as it is, not wrapped in a worker traceback
        t = torch.from_numpy
        return (t(hazy), t(clear), None, None) if val is None else (t(hazy), t(clear), t(val[0]), t(val[1]))


class _Steps(Sampler):
    """Yields the current epoch's step specs, in order; set `steps` before each pass."""

    def __init__(self) -> None:
        self.steps: list[StepSpec] = []

    def __iter__(self) -> Iterator[StepSpec]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def _flush_denormals_in_worker(worker_id: int) -> None:
    """A worker process flushes denormals whatever started it (fork inherits the flag, spawn re-imports)."""
    flush_denormals()


class CropLoader:
    """Cuts the crops of a list of steps in ``workers`` processes (0: in this process), in order."""

    def __init__(self, index: PairIndex, crop: int, *, workers: int, pin_memory: bool = False) -> None:
        if workers < 0:
            raise ValueError(f"train.loader_workers={workers}; expected 0 (read in the training process) or more")
        self._steps = _Steps()
        self._loader = DataLoader(
            _CutSteps(index, crop),
            batch_size=None,  # one item is one step's whole batch
            sampler=self._steps,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            # Its own generator: creating an iterator draws a seed from it, and must not move
            # torch's global random state, which the networks' training follows.
            generator=torch.Generator(),
            worker_init_fn=_flush_denormals_in_worker,
        )

    def crops(self, steps: list[StepSpec]) -> Iterator[StepCrops]:
        """The crops of each of ``steps``, in order; a read error is raised here, naming the file."""
        self._steps.steps = steps
        for item in self._loader:
            if isinstance(item, DataError):
                raise item
            yield item
