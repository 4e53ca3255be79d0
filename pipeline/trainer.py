"""The training engine: one run (plain, bild or bild-train) of one backbone, without Ray.

:class:`Trainer` owns a run: the data splits, both networks, both optimisers, the crop
random state and the processes that read the crops (``pipeline.data.loader``).
:func:`train` drives it epoch by epoch into a run folder, as ``python -m pipeline.train``
does; the Ray Tune trainable (``pipeline.tune.trainable``) drives the same class one epoch
per report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .backbones import backbone_kwargs, build_from_kwargs
from .bild import AlignmentFn, BildConfig, BildNets, CropBatch, NonFiniteLossError, StepStats, bild_step, build_reweighter
from .checkpoints import CHECKPOINT_FORMAT, load_checkpoint, resumed_config, save_checkpoint
from .config import ConfigError
from .data import (
    CropLoader,
    CropSampler,
    PairIndex,
    StepSpec,
    crops_to_tensor,
    decoded_cache_dir,
    load_dataset,
    rotation_folds,
    select_subset,
    split_by_scene,
    split_train_val,
)
from .data.loader import StepCrops
from .evaluation.inference import resolve_device, score_pairs, set_threads
from .evaluation.references import hazy_reference
from .hardware import allow_tf32, cudnn_autotune, grad_scaler, resolve_precision
from .models.store import init_weights
from .progress import progress_bar
from .storage import location

__all__ = ["LR_SCHEDULES", "STEP_STATS", "TRAINING_BOUNDS", "StepCallback", "Trainer", "TrainingOutOfMemoryError",
           "bild_config", "check_memory", "check_training_config", "check_value", "for_device", "format_epoch",
           "inner_lr", "load_index", "step_bytes", "train"]

StepCallback = Callable[[CropBatch, StepStats], None]
STEP_STATS = ("loss", "crop_loss", "val_loss", "reward_mean", "reward_std", "align_mean", "weight_entropy", "ess", "max_weight")


# The numeric training settings a run can be given: key -> (kind, lowest, highest, closed at the top).
# Learning rates above 1 are never sensible for Adam and overflow within a step.
TRAINING_BOUNDS: dict[str, tuple[type, float, float, bool]] = {
    "train.epochs": (int, 1, math.inf, False),
    "train.steps_per_epoch": (int, 1, math.inf, False),
    "train.batch_size": (int, 1, math.inf, False),
    "train.val_batch_size": (int, 1, math.inf, False),
    "train.inner_lr": (float, 0, 1, True),
    "train.outer_lr": (float, 0, 1, True),
    "train.val_fraction": (float, 0, 1, False),
    "bild.alpha": (float, 0, math.inf, False),
    "bild.mix": (float, 0, 1, True),
    "dataset.crop": (int, 1, math.inf, False),
}


def check_value(key: str, value: Any) -> None:
    """Raise a ConfigError naming ``key`` when ``value`` is not a number within ``TRAINING_BOUNDS[key]``."""
    kind, low, high, closed = TRAINING_BOUNDS[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and number and float(value).is_integer():
        value = int(value)
    low_closed = kind is int or key in ("train.val_fraction", "bild.alpha", "bild.mix")  # 0 allowed for these
    fits = number and (kind is float or isinstance(value, int)) and math.isfinite(value)
    fits = fits and (value >= low if low_closed else value > low)
    fits = fits and (value <= high if closed else value < high)
    if not fits:
        top = f"{high:g}]" if closed else ("inf)" if math.isinf(high) else f"{high:g})")
        bottom = "[" if low_closed else "("
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key}={value!r}: expected {what} in {bottom}{low:g}, {top}")


LR_SCHEDULES = ("constant", "cosine")


def inner_lr(train_cfg: DictConfig, step: int) -> float:
    """The backbone's learning rate at 0-based ``step``: ``train.inner_lr`` throughout, or cosine from it towards 0.

    The cosine spans the run's ``epochs * steps_per_epoch`` steps, eta_1 (1 + cos(pi s / T)) / 2, so
    the last step still moves; a step past T (a time-budgeted run) keeps the last step's rate. A
    function of the step count alone, which the checkpoint carries, so a resumed run is exact.
    """
    if train_cfg.lr_schedule == "constant":
        return train_cfg.inner_lr
    total = train_cfg.epochs * train_cfg.steps_per_epoch
    return train_cfg.inner_lr * 0.5 * (1 + math.cos(math.pi * min(step, total - 1) / total))


def check_training_config(cfg: DictConfig) -> None:
    """Every numeric training setting within its bounds, and a validation split where the mode needs one."""
    for key in TRAINING_BOUNDS:
        check_value(key, OmegaConf.select(cfg, key))
    if cfg.train.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule={cfg.train.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
    if cfg.mode == "bild" and cfg.train.val_fraction == 0:
        raise ConfigError("train.val_fraction=0 (--val-fraction): mode bild holds out part of the train pool to "
                          "drive the outer loop; expected a fraction in (0, 1), or --mode bild-train or plain")


class TrainingOutOfMemoryError(MemoryError):
    """A step needed more memory than the device or machine has; the message gives the sizes it tried."""


def _sizes(cfg: DictConfig) -> str:
    tr = cfg.train
    return (f"train.batch_size={tr.batch_size}, train.val_batch_size={tr.val_batch_size}, "
            f"dataset.crop={cfg.dataset.crop}, backbone {cfg.backbone.name} ({cfg.backbone.preset})")


def step_bytes(cfg: DictConfig) -> int:
    """A lower bound on the memory one training step's crops take, before any network activation.

    Each crop is a hazy and a clear S x S x 3 image: uint8 in every loader worker's two prefetched
    steps (and the one in hand), float32 in the training process. Activations come on top (several
    times more for the larger backbones), so a step over this bound can never fit.
    """
    tr = cfg.train
    crops = tr.batch_size + (tr.val_batch_size if cfg.mode != "plain" else 0)
    per_crop = 2 * 3 * cfg.dataset.crop ** 2
    return crops * per_crop * (4 + 2 * tr.loader_workers + 1)


def machine_bytes() -> int:
    """The physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: DictConfig) -> None:
    """Refuse a batch and crop whose crops alone cannot fit in this machine's memory (see :func:`step_bytes`)."""
    need, have = step_bytes(cfg), machine_bytes()
    if need > have:
        raise ConfigError(f"out of memory before the first step: {_sizes(cfg)} needs at least "
                          f"{need / 2**30:.1f} GiB for one step's crops alone, and this machine has "
                          f"{have / 2**30:.1f} GiB; expected a smaller train.batch_size (--batch-size) or dataset.crop")


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is memory running out: torch's OOM, Python's, or a loader worker the kernel killed."""
    text = str(err)
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "DataLoader worker" in text and ("Killed" in text or "exited" in text))


def load_index(cfg: DictConfig) -> PairIndex:
    """Index the configured dataset (what trials share); no pixel is decoded."""
    ds = cfg.dataset
    return load_dataset(ds.layout, ds.root, skip_bad=ds.skip_bad, max_side=ds.max_side,
                        decoded_cache=decoded_cache_dir(ds.decoded_cache))


def bild_config(cfg: DictConfig) -> BildConfig:
    """The engine's BildConfig from a composed config (mode, the `bild` block, `train.precision` for its device)."""
    b = cfg.bild
    return BildConfig(
        mode=cfg.mode,
        alpha=b.alpha,
        temperature=b.temperature,
        weighting=b.weighting,
        estimator=b.estimator,
        reward_norm=b.reward_norm,
        regulariser=b.regulariser,
        mix=b.mix,
        ess_floor=b.ess_floor,
        precision=resolve_precision(cfg.train.precision, resolve_device(cfg.device)),
        alignment_space=b.alignment_space,
        reward=b.reward,
    )


def for_device(cfg: DictConfig, device: torch.device) -> DictConfig:
    """``cfg`` with its device-dependent ``auto`` settings resolved for ``device``.

    ``train.precision=auto`` becomes bf16 on a CUDA device that supports it, fp32 elsewhere;
    ``train.channels_last=auto`` becomes the backbone's measured layout for the device type
    (``backbone.channels_last``). The resolved values are what the run records and resumes with.
    """
    cfg = cfg.copy()
    tr = cfg.train
    with open_dict(cfg):
        tr.precision = resolve_precision(tr.precision, device)
        if tr.channels_last == "auto":
            tr.channels_last = bool(cfg.backbone.channels_last[device.type])
    if not isinstance(tr.channels_last, bool):
        raise ConfigError(f"train.channels_last={tr.channels_last!r}: expected auto, true or false")
    return cfg


class Trainer:
    """One training run: build from a config (and optionally a shared index), step, evaluate, save."""

    def __init__(
        self, cfg: DictConfig, index: PairIndex | None = None, *, train_pairs: list[int] | None = None,
        alignment: AlignmentFn | None = None,
    ) -> None:
        """Build the run from ``cfg``, indexing the dataset unless an ``index`` is shared in.

        Two extension points for studies of the method: ``train_pairs`` replaces the mode's
        training split with these pool pairs (an ablation on a chosen subset), and
        ``alignment`` replaces the per-crop alignment d_i of every BILD step (see
        ``pipeline.bild.step.AlignmentFn``).
        """
        check_training_config(cfg)
        check_memory(cfg)
        self.device = resolve_device(cfg.device)
        self.cfg = cfg = for_device(cfg, self.device)
        if self.device.type == "cuda":
            allow_tf32()
            torch.backends.cudnn.benchmark = True  # training crops have one shape; evaluate() turns it off
        self.bild_cfg = bild_config(cfg)  # validates mode, estimator, ... before any work
        self.index = index if index is not None else load_index(cfg)
        ds, tr = cfg.dataset, cfg.train
        self.splits = split_by_scene(
            self.index, select_fraction=ds.select_fraction, test_fraction=ds.test_fraction, seed=ds.split_seed
        )
        # The per-epoch metric's images: a fixed, scene-stratified part of the selection set.
        self.select_scored = select_subset(self.index, self.splits.select, ds.select_images, ds.split_seed)
        # Cross-fitting (bild mode): the validation fold rotates with the epoch (``_rotate``).
        self.folds = (rotation_folds(self.index, self.splits.train_pool, tr.val_fraction, cfg.seed)
                      if tr.val_rotation and cfg.mode == "bild" else None)
        if self.folds is not None and train_pairs is not None:
            raise ValueError("train_pairs fixes the training split; it cannot go with train.val_rotation=true")
        self.train_idx, self.val_idx = self._train_val(tr.val_fraction)
        if train_pairs is not None:
            self.train_idx = list(train_pairs)
        torch.manual_seed(cfg.seed)
        self.backbone_kwargs = backbone_kwargs(cfg.backbone.name, cfg.backbone.preset)
        init = None
        if tr.init is not None:  # start from a model's weights; its kwargs (an import's, say) rebuild it exactly
            tr.init = str(location(tr.init, "train.init"))  # absolute (or a URI) where the run starts: trials run elsewhere
            self.backbone_kwargs, init, tr.init_sha256 = init_weights(tr.init, cfg.backbone.name,
                                                                      cfg.backbone.preset, tr.init_sha256)
        self.backbone = build_from_kwargs(cfg.backbone.name, self.backbone_kwargs)
        if init is not None:
            self.backbone.load_state_dict(init)
        self.backbone = self.backbone.to(self.device)
        if tr.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if tr.compile:
            self.backbone.compile()  # in place: parameter names, and so checkpoints, stay as they are
        inner_opt = torch.optim.Adam(self.backbone.parameters(), lr=tr.inner_lr, betas=(0.9, 0.999))
        self.nets = BildNets(self.backbone, inner_opt, scaler=grad_scaler(tr.precision, self.device))
        if cfg.mode != "plain":
            reweighter = build_reweighter(cfg.bild).to(self.device)
            self.nets.reweighter = reweighter
            self.nets.outer_opt = torch.optim.Adam(reweighter.parameters(), lr=tr.outer_lr, betas=(0.9, 0.999))
        self._samplers()
        # Warm-up: the first train.bild_warmup_steps steps are plain steps (w = 1, the reweighter untouched).
        self.warmup_cfg = dataclasses.replace(self.bild_cfg, mode="plain")
        self._loader: CropLoader | None = None  # started with the first epoch
        self.alignment = alignment
        self.rng = np.random.default_rng(cfg.seed)
        self.epoch = 0
        self.step = 0

    def _samplers(self) -> None:
        ds = self.cfg.dataset
        self.train_crops = CropSampler(self.index, self.train_idx, ds.crop, flips=ds.flips)
        self.val_crops = CropSampler(self.index, self.val_idx, ds.crop) if self.val_idx else None

    def _fold_split(self, epoch: int) -> tuple[list[int], list[int]]:
        """(train, val) of an epoch when rotating: fold (epoch mod k) held out, the others trained on.

        A function of the epoch alone, so a resumed run holds out the fold the straight run would.
        """
        held_out = epoch % len(self.folds)
        return sorted(i for j, fold in enumerate(self.folds) if j != held_out for i in fold), self.folds[held_out]

    def _rotate(self) -> None:
        self.train_idx, self.val_idx = self._fold_split(self.epoch)
        self._samplers()

    def _train_val(self, val_fraction: float) -> tuple[list[int], list[int]]:
        pool = self.splits.train_pool
        if self.folds is not None:
            return self._fold_split(0)
        if self.cfg.mode == "bild":
            return split_train_val(self.index, pool, val_fraction, self.cfg.seed)
        if self.cfg.mode == "bild-train":  # the ablation: the outer loop reads training crops
            return pool, pool
        return pool, []

    def _draw_step(self) -> StepSpec:
        """One step's crops from ``self.rng``: the training batch first, then the validation batch."""
        tr = self.cfg.train
        train = self.train_crops.draw(tr.batch_size, self.rng)
        return StepSpec(train, self.val_crops.draw(tr.val_batch_size, self.rng) if self.val_crops else None)

    def _crop_loader(self) -> CropLoader:
        if self._loader is None:
            self._loader = CropLoader(self.index, self.cfg.dataset.crop, workers=self.cfg.train.loader_workers,
                                      pin_memory=self.device.type == "cuda")
        return self._loader

    def close(self) -> None:
        """Stop the crop-reading worker processes (a later epoch starts them again)."""
        self._loader = None  # the DataLoader's persistent workers end with it

    def _batch(self, step: StepSpec, crops: StepCrops) -> CropBatch:
        # uint8 crops cross to the device (non-blocking from pinned memory) and become float there.
        hazy, clear, val_hazy, val_clear = (
            None if t is None else crops_to_tensor(t.to(self.device, non_blocking=True)) for t in crops
        )
        batch = CropBatch(hazy, clear, val_hazy, val_clear, pairs=step.train.pairs.tolist())
        if self.cfg.train.channels_last:
            for name in ("hazy", "clear", "val_hazy", "val_clear"):
                value = getattr(batch, name)
                if value is not None:
                    setattr(batch, name, value.contiguous(memory_format=torch.channels_last))
        return batch

    def train_epoch(self, progress: bool = False, on_step: StepCallback | None = None) -> dict[str, float]:
        """Run ``train.steps_per_epoch`` steps; return the epoch's mean step statistics.

        ``on_step(batch, stats)`` sees every step's crops (with the pair each came from) and
        the per-crop weights and alignments, for analyses of what BILD does; it must not
        change them.
        """
        self.backbone.train()
        if self.folds is not None:
            self._rotate()
        steps, warmup = self.cfg.train.steps_per_epoch, self.cfg.train.bild_warmup_steps
        sums: dict[str, float] = {"ms_data": 0.0}
        counts = dict.fromkeys(STEP_STATS, 0)
        start = time.perf_counter()
        # Every crop of the epoch is drawn now, in the order steps consume them, so the generator
        # ends the epoch where cutting the crops one step at a time would leave it; the workers
        # only read and cut.
        plan = [self._draw_step() for _ in range(steps)]
        crops = self._crop_loader().crops(plan)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = progress_bar(range(steps), enabled=progress, desc=f"epoch {self.epoch + 1}", leave=False)
        for k in bar:
            waited = time.perf_counter()
            step_cfg = self.warmup_cfg if self.step < warmup else self.bild_cfg
            for group in self.nets.inner_opt.param_groups:
                group["lr"] = inner_lr(self.cfg.train, self.step)
            try:
                item = next(crops)
                sums["ms_data"] += 1000 * (time.perf_counter() - waited)
                batch = self._batch(plan[k], item)
                stats = bild_step(batch, self.nets, step_cfg, alignment=self.alignment)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"epoch {self.epoch + 1}, step {self.step + 1}: {err}") from err
            except (RuntimeError, MemoryError) as err:
                if not _out_of_memory(err):
                    raise
                raise TrainingOutOfMemoryError(
                    f"out of memory at epoch {self.epoch + 1}, step {self.step + 1} on {self.device}: tried "
                    f"{_sizes(self.cfg)} ({str(err).strip().splitlines()[0]}); expected a smaller train.batch_size "
                    "or dataset.crop") from err
            self.step += 1
            if on_step is not None:
                on_step(batch, stats)
            for key in STEP_STATS:
                value = getattr(stats, key)
                if not math.isnan(value):  # a warm-up step has no rewards or weights to average in
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] += 1
            for stage, seconds in stats.times.items():
                sums[f"ms_{stage}"] = sums.get(f"ms_{stage}", 0.0) + 1000 * seconds
            bar.set_postfix(loss=f"{stats.loss:.4f}", refresh=False)  # drawn at the bar's own pace
        self.epoch += 1
        metrics = {key: sums[key] / counts[key] if counts[key] else math.nan for key in STEP_STATS}
        metrics.update({key: value / steps for key, value in sums.items() if key.startswith("ms_")})
        metrics["epoch_seconds"] = time.perf_counter() - start
        # This process's peak GPU memory in the epoch: what one trial needs of a shared card.
        metrics["gpu_peak_mb"] = (torch.cuda.max_memory_allocated(self.device) / 2**20
                                  if self.device.type == "cuda" else math.nan)
        return metrics

    def evaluate(self, split: str = "select") -> dict[str, float]:
        """Mean PSNR/SSIM of the backbone on whole images, one image read at a time.

        ``select``: the fixed subset of the selection set the search ranks by
        (``dataset.select_images`` of them); ``test``: the whole test set.
        """
        indices = {"select": self.select_scored, "test": self.splits.test}[split]
        self.backbone.eval()
        start = time.perf_counter()
        with cudnn_autotune(False):  # whole images: as many shapes as sizes
            scores = score_pairs(self.backbone, self.index, indices, self.device,
                                 max_side=self.cfg.dataset.eval_max_side, precision=self.cfg.train.precision)
        return {f"{split}_psnr": float(np.mean(scores["psnr"])), f"{split}_ssim": float(np.mean(scores["ssim"])),
                "eval_seconds": time.perf_counter() - start}

    def hazy_reference(self) -> dict[str, float]:
        """The hazy input's own PSNR/SSIM on the scored selection images: the bar a dehazer must clear.

        Computed once per dataset and kept in the node's cache (pipeline.evaluation.references).
        """
        return hazy_reference(self.index, self.select_scored, self.device, max_side=self.cfg.dataset.eval_max_side)

    def state_dict(self) -> dict[str, Any]:
        nets = self.nets
        return {
            "format": CHECKPOINT_FORMAT,
            "backbone": {
                "name": self.cfg.backbone.name,
                "preset": self.cfg.backbone.preset,
                "kwargs": self.backbone_kwargs,
            },
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "epoch": self.epoch,
            "step": self.step,
            "models": {
                "backbone": nets.backbone.state_dict(),
                "reweighter": nets.reweighter.state_dict() if nets.reweighter else None,
            },
            "optimizers": {
                "inner": nets.inner_opt.state_dict(),
                "outer": nets.outer_opt.state_dict() if nets.outer_opt else None,
                "scaler": nets.scaler.state_dict() if nets.scaler else None,
            },
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
            "reward_baseline": nets.reward_baseline,
            "data": {"name": self.index.name, "layout": self.index.layout, "fingerprint": self.index.fingerprint,
                     "splits": vars(self.splits), "select_scored": self.select_scored},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nets = self.nets
        nets.backbone.load_state_dict(state["models"]["backbone"])
        nets.inner_opt.load_state_dict(state["optimizers"]["inner"])
        if nets.reweighter is not None:
            nets.reweighter.load_state_dict(state["models"]["reweighter"])
            nets.outer_opt.load_state_dict(state["optimizers"]["outer"])
        if nets.scaler is not None and state["optimizers"].get("scaler"):
            nets.scaler.load_state_dict(state["optimizers"]["scaler"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        self.epoch, self.step = state["epoch"], state["step"]
        nets.reward_baseline = state.get("reward_baseline")

    def save(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write the checkpoint atomically (pipeline.checkpoints): a crash never leaves half a file."""
        save_checkpoint(path, {**self.state_dict(), **extra})

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(load_checkpoint(path))


def format_epoch(epoch: int, total: int, metrics: dict[str, float]) -> str:
    """One line per epoch for the terminal: loss, selection PSNR/SSIM, the weights' spread, time."""
    line = f"epoch {epoch}/{total}  loss {metrics['loss']:.4f}"
    line += f"  select PSNR {metrics['select_psnr']:.2f} dB  SSIM {metrics['select_ssim']:.4f}"
    if not math.isnan(metrics.get("ess", math.nan)):
        line += f"  ESS {metrics['ess']:.2f}  max w {metrics['max_weight']:.2f}"
    return line + f"  ({metrics['epoch_seconds']:.1f} s)"


def process_seconds() -> float:
    """Seconds since this process started (Linux); elsewhere, since this module was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def train(cfg: DictConfig, *, resume: bool = False, index: PairIndex | None = None) -> dict[str, Any]:
    """Train for ``train.epochs`` epochs, checkpointing each one into ``run_dir``; return the last metrics.

    Each epoch's metrics go to ``run_dir/metrics.jsonl``; the first epoch this process trains
    also carries ``first_step_s``, the seconds from the process start to the end of its first step.
    """
    run_dir = location(cfg.run_dir, "--run-dir")  # a folder, or a storage URI (s3://bucket/train/run1)
    ckpt = run_dir / "checkpoint.pt"
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; start without --resume")
        state = load_checkpoint(ckpt)
        cfg = resumed_config(cfg, state["config"])
    set_threads(cfg.threads)
    trainer = Trainer(cfg, index)
    if resume:
        trainer.load_state_dict(state)
        print(f"resumed {ckpt} at epoch {trainer.epoch}")
    else:
        (run_dir / "metrics.jsonl").delete()
    cfg = trainer.cfg  # with the device's choices made (precision, layout): what the run records
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(
        f"{cfg.backbone.name}/{cfg.backbone.preset} mode={cfg.mode} on {trainer.device} ({cfg.train.precision}): "
        f"{len(trainer.train_idx)} train / {len(trainer.val_idx)} val / {len(trainer.splits.select)} select pairs "
        f"({len(trainer.select_scored)} scored each epoch)", flush=True
    )
    metrics: dict[str, Any] = {"epoch": trainer.epoch}
    ref: dict[str, float] = {}
    first_step: list[float] = []

    def note_first_step(batch: CropBatch, stats: StepStats) -> None:
        if not first_step:
            first_step.append(process_seconds())

    try:
        while trainer.epoch < cfg.train.epochs:
            noted = bool(first_step)
            epoch = trainer.train_epoch(progress=cfg.progress, on_step=None if noted else note_first_step)
            if not ref:  # after the first steps, not before them: cold, it reads and scores every scored image
                ref = trainer.hazy_reference()
                print(f"hazy input PSNR {ref['hazy_psnr']:.2f} dB, SSIM {ref['hazy_ssim']:.4f}", flush=True)
            metrics = {**epoch, **trainer.evaluate("select"), **ref, "epoch": trainer.epoch}
            if not noted:
                metrics["first_step_s"] = first_step[0]
            trainer.save(ckpt, metrics=metrics)
            (run_dir / "metrics.jsonl").append_text(json.dumps(metrics) + "\n")
            print(format_epoch(trainer.epoch, cfg.train.epochs, metrics), flush=True)
    finally:
        trainer.close()
    return metrics
