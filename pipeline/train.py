"""Train one dehazing model (plain, bild or bild-train), without Ray.

    python -m pipeline.train --backbone aodnet --preset small --epochs 5
    python -m pipeline.train --backbone ffanet --mode plain train.inner_lr=1e-3
    python -m pipeline.train --backbone ffanet --resume        # continue the same run exactly

The :class:`Trainer` owns one run (data splits, both networks, both optimisers, the crop
random state) and is what the Ray Tune trainable drives epoch by epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .backbones import backbone_kwargs, build_from_kwargs
from .bild import BildConfig, BildNets, CropBatch, NonFiniteLossError, StepStats, bild_step, build_reweighter
from .config import ConfigError, add_policy_flag, compose_config, flag_overrides, saved_config
from .data import CropSampler, PairStore, load_dataset, split_by_scene, split_train_val
from .inference import resolve_device, score_pairs

__all__ = ["CHECKPOINT_FORMAT", "Trainer", "bild_config", "train", "load_store", "load_checkpoint", "main"]

CHECKPOINT_FORMAT = "bild-checkpoint/1"
STEP_STATS = ("loss", "crop_loss", "val_loss", "reward_mean", "reward_std", "align_mean", "weight_entropy", "ess", "max_weight")


def load_store(cfg: DictConfig) -> PairStore:
    """Decode the configured dataset once (the container trials share)."""
    ds = cfg.dataset
    return load_dataset(ds.layout, ds.root, skip_bad=ds.skip_bad, max_side=ds.max_side)


def bild_config(cfg: DictConfig) -> BildConfig:
    """The engine's BildConfig from a composed config (mode, the `bild` block, `train.amp`)."""
    b = cfg.bild
    return BildConfig(
        mode=cfg.mode,
        entropy_coef=b.entropy_coef,
        temperature=b.temperature,
        weighting=b.weighting,
        estimator=b.estimator,
        reward_norm=b.reward_norm,
        regulariser=b.regulariser,
        amp=cfg.train.amp,
    )


class Trainer:
    """One training run: build from a config (and optionally a shared store), step, evaluate, save."""

    def __init__(self, cfg: DictConfig, store: PairStore | None = None, *, train_pairs: list[int] | None = None) -> None:
        """``train_pairs`` replaces the mode's training split with these pool pairs (analyses only)."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.bild_cfg = bild_config(cfg)  # validates mode, estimator, ... before any work
        self.store = store if store is not None else load_store(cfg)
        ds, tr = cfg.dataset, cfg.train
        self.splits = split_by_scene(
            self.store, select_fraction=ds.select_fraction, test_fraction=ds.test_fraction, seed=ds.split_seed
        )
        self.train_idx, self.val_idx = self._train_val(tr.val_fraction)
        if train_pairs is not None:
            self.train_idx = list(train_pairs)
        torch.manual_seed(cfg.seed)
        self.backbone_kwargs = backbone_kwargs(cfg.backbone.name, cfg.backbone.preset)
        self.backbone = build_from_kwargs(cfg.backbone.name, self.backbone_kwargs).to(self.device)
        if tr.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        inner_opt = torch.optim.Adam(self.backbone.parameters(), lr=tr.inner_lr, betas=(0.9, 0.999))
        self.nets = BildNets(self.backbone, inner_opt)
        if cfg.mode != "plain":
            reweighter = build_reweighter(cfg.bild).to(self.device)
            self.nets.reweighter = reweighter
            self.nets.outer_opt = torch.optim.Adam(reweighter.parameters(), lr=tr.outer_lr, betas=(0.9, 0.999))
        self.train_crops = CropSampler(self.store, self.train_idx, ds.crop, flips=ds.flips)
        self.val_crops = CropSampler(self.store, self.val_idx, ds.crop) if self.val_idx else None
        self.rng = np.random.default_rng(cfg.seed)
        self.epoch = 0
        self.step = 0

    def _train_val(self, val_fraction: float) -> tuple[list[int], list[int]]:
        pool = self.splits.train_pool
        if self.cfg.mode == "bild":
            return split_train_val(self.store, pool, val_fraction, self.cfg.seed)
        if self.cfg.mode == "bild-train":  # the ablation: the outer loop reads training crops
            return pool, pool
        return pool, []

    def _batch(self) -> CropBatch:
        tr = self.cfg.train
        pairs, hazy, clear = self.train_crops.sample_with_pairs(tr.batch_size, self.rng)
        batch = CropBatch(hazy.to(self.device), clear.to(self.device), pairs=pairs)
        if self.val_crops is not None:
            val_hazy, val_clear = self.val_crops.sample(tr.val_batch_size, self.rng)
            batch.val_hazy, batch.val_clear = val_hazy.to(self.device), val_clear.to(self.device)
        if tr.channels_last:
            for name in ("hazy", "clear", "val_hazy", "val_clear"):
                value = getattr(batch, name)
                if value is not None:
                    setattr(batch, name, value.contiguous(memory_format=torch.channels_last))
        return batch

    def train_epoch(
        self, progress: bool = False, on_step: Callable[[CropBatch, StepStats], None] | None = None
    ) -> dict[str, float]:
        """Run ``train.steps_per_epoch`` steps; return the epoch's mean step statistics.

        ``on_step(batch, stats)`` sees every step's crops and per-crop weights and alignments
        (for analyses such as ``pipeline.wrong_targets``); it must not change them.
        """
        self.backbone.train()
        steps = self.cfg.train.steps_per_epoch
        sums: dict[str, float] = {}
        start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {self.epoch + 1}", leave=False, disable=not progress)
        for _ in bar:
            try:
                batch = self._batch()
                stats = bild_step(batch, self.nets, self.bild_cfg)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"epoch {self.epoch + 1}, step {self.step + 1}: {err}") from err
            self.step += 1
            if on_step is not None:
                on_step(batch, stats)
            for key in STEP_STATS:
                sums[key] = sums.get(key, 0.0) + getattr(stats, key)
            for stage, seconds in stats.times.items():
                sums[f"ms_{stage}"] = sums.get(f"ms_{stage}", 0.0) + 1000 * seconds
            bar.set_postfix(loss=f"{stats.loss:.4f}")
        self.epoch += 1
        metrics = {key: value / steps for key, value in sums.items()}
        metrics["epoch_seconds"] = time.perf_counter() - start
        return metrics

    def evaluate(self, split: str = "select") -> dict[str, float]:
        """Mean PSNR/SSIM of the backbone on whole images of the ``select`` or ``test`` set."""
        indices = {"select": self.splits.select, "test": self.splits.test}[split]
        self.backbone.eval()
        scores = score_pairs(self.backbone, self.store, indices, self.device, max_side=self.cfg.dataset.eval_max_side)
        return {f"{split}_psnr": float(np.mean(scores["psnr"])), f"{split}_ssim": float(np.mean(scores["ssim"]))}

    def hazy_reference(self) -> dict[str, float]:
        """The hazy input's own PSNR/SSIM on the selection set: the bar a dehazer must clear."""
        scores = score_pairs(None, self.store, self.splits.select, self.device, max_side=self.cfg.dataset.eval_max_side)
        return {"hazy_psnr": float(np.mean(scores["psnr"])), "hazy_ssim": float(np.mean(scores["ssim"]))}

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
            },
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
            "data": {"name": self.store.name, "layout": self.store.layout, "splits": vars(self.splits)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nets = self.nets
        nets.backbone.load_state_dict(state["models"]["backbone"])
        nets.inner_opt.load_state_dict(state["optimizers"]["inner"])
        if nets.reweighter is not None:
            nets.reweighter.load_state_dict(state["models"]["reweighter"])
            nets.outer_opt.load_state_dict(state["optimizers"]["outer"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        self.epoch, self.step = state["epoch"], state["step"]

    def save(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write the checkpoint atomically (temporary name, then rename): a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({**self.state_dict(), **extra}, tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(load_checkpoint(path))


def load_checkpoint(path: str | os.PathLike, formats: tuple[str, ...] = (CHECKPOINT_FORMAT,)) -> dict[str, Any]:
    """Read a file written by :meth:`Trainer.save` (or another of ``formats``), with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"{path} could not be read ({err}); expected one of the formats {', '.join(formats)}") from err
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise ValueError(f"{path} is not a model file; expected one of the formats {', '.join(formats)}")
    return state


def _format_epoch(epoch: int, total: int, metrics: dict[str, float]) -> str:
    line = f"epoch {epoch}/{total}  loss {metrics['loss']:.4f}"
    line += f"  select PSNR {metrics['select_psnr']:.2f} dB  SSIM {metrics['select_ssim']:.4f}"
    if not math.isnan(metrics.get("ess", math.nan)):
        line += f"  ESS {metrics['ess']:.2f}  max w {metrics['max_weight']:.2f}"
    return line + f"  ({metrics['epoch_seconds']:.1f} s)"


# What a resumed run may take from the new command (how long, and where things are);
# everything else is the run's own config.
RESUME_KEYS = ("train.epochs", "run_dir", "dataset.root", "device", "progress")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value of a plain nested dict."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resumed_config(command: DictConfig, saved: dict[str, Any]) -> DictConfig:
    """The run's saved config, with only ``RESUME_KEYS`` taken from the command (``--epochs 20 --resume``).

    A run must go on as it started: today's defaults (a new reweighting policy, say) or a changed
    flag would otherwise rebuild different networks under the saved weights. What the command
    asks for and cannot change is printed, not silently dropped. Keys the run was saved without
    (options added since) take the command's value: there is no other.
    """
    cfg = saved_config(saved)
    was, asked = (_flat(OmegaConf.to_container(c, resolve=True)) for c in (cfg, command))
    for key in RESUME_KEYS:
        OmegaConf.update(cfg, key, OmegaConf.select(command, key))
    for key in asked.keys() - was.keys():
        OmegaConf.update(cfg, key, asked[key])
    ignored = [f"{k}={asked[k]!r} (the run has {was[k]!r})"
               for k in asked if k not in RESUME_KEYS and k in was and asked[k] != was[k]]
    if ignored:
        print("resume keeps the run's own config; ignored from this command: " + ", ".join(ignored))
    return cfg


def train(cfg: DictConfig, *, resume: bool = False, store: PairStore | None = None) -> dict[str, Any]:
    """Train for ``train.epochs`` epochs, checkpointing each one into ``run_dir``; return the last metrics."""
    run_dir = Path(cfg.run_dir)
    ckpt = run_dir / "checkpoint.pt"
    if resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; start without --resume")
        state = load_checkpoint(ckpt)
        cfg = resumed_config(cfg, state["config"])
    trainer = Trainer(cfg, store)
    if resume:
        trainer.load_state_dict(state)
        print(f"resumed {ckpt} at epoch {trainer.epoch}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ref = trainer.hazy_reference()
    print(
        f"{cfg.backbone.name}/{cfg.backbone.preset} mode={cfg.mode} on {trainer.device}: "
        f"{len(trainer.train_idx)} train / {len(trainer.val_idx)} val / {len(trainer.splits.select)} select pairs; "
        f"hazy input PSNR {ref['hazy_psnr']:.2f} dB"
    )
    metrics: dict[str, Any] = {"epoch": trainer.epoch, **ref}
    while trainer.epoch < cfg.train.epochs:
        metrics = {**trainer.train_epoch(progress=cfg.progress), **trainer.evaluate("select"), **ref}
        metrics["epoch"] = trainer.epoch
        trainer.save(ckpt, metrics=metrics)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        print(_format_epoch(trainer.epoch, cfg.train.epochs, metrics), flush=True)
    return metrics


TRAIN_FLAGS = {
    "backbone": "backbone=",
    "preset": "backbone.preset",
    "dataset": "datasets=",
    "data_root": "dataset.root",
    "crop": "dataset.crop",
    "mode": "mode",
    "epochs": "train.epochs",
    "steps": "train.steps_per_epoch",
    "seed": "seed",
    "device": "device",
    "run_dir": "run_dir",
    "policy": "policy=",
    "alpha": "bild.entropy_coef",
    "inner_lr": "train.inner_lr",
    "outer_lr": "train.outer_lr",
    "val_fraction": "train.val_fraction",
    "estimator": "bild.estimator",
    "batch_size": "train.batch_size",
    "val_batch_size": "train.val_batch_size",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", help="aodnet | dehazenet | ffanet | griddehazenet | msbdn")
    p.add_argument("--preset", help="size preset: paper | small | tiny")
    p.add_argument("--dataset", help="descriptor in datasets/ (builtin, sots-indoor, o-haze, ...)")
    p.add_argument("--data-root", help="folder holding the dataset in its native layout")
    p.add_argument("--crop", type=int, help="training crop size in pixels")
    p.add_argument("--mode", choices=["plain", "bild", "bild-train"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="steps per epoch")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--run-dir", help="where checkpoint.pt, metrics.jsonl and config.yaml go")
    add_policy_flag(p)
    p.add_argument("--alpha", type=float, help="regulariser coefficient of the reweighting policy")
    p.add_argument("--inner-lr", type=float, help="backbone learning rate (eta_1)")
    p.add_argument("--outer-lr", type=float, help="reweighter learning rate (eta_2)")
    p.add_argument("--val-fraction", type=float, help="share of the train pool held out to drive the outer loop")
    p.add_argument("--estimator", choices=["fd", "jvp", "loop"], help="per-crop alignment estimator")
    p.add_argument("--batch-size", type=int, help="n, training crops per step")
    p.add_argument("--val-batch-size", type=int, help="m, validation crops per step")
    p.add_argument("--resume", action="store_true", help="continue from run_dir/checkpoint.pt")
    p.add_argument("overrides", nargs="*", help="Hydra key=value overrides, e.g. train.steps_per_epoch=20")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    try:
        cfg = compose_config(flag_overrides(vars(args), TRAIN_FLAGS) + args.overrides)
        train(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: training diverged, {err}. The last good epoch's checkpoint is kept.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch's checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
