"""Does BILD learn to down-weight wrong targets? The paper's mechanism, made checkable.

30% of the training pool's pairs get the clear image of another scene as their target.
BILD and plain training run on the same corrupted data, steps and seed; we print the
reweighter's mean weight on wrong vs right pairs and both runs' selection-set PSNR.

    python benchmarks/wrong_targets.py --backbone aodnet --steps 300 [--json]
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from pipeline.config import compose_config
from pipeline.data import CropSampler, PairStore
from pipeline.bild import crop_log_weights
from pipeline.train import Trainer, load_store


def corrupt_targets(store: PairStore, indices: list[int], fraction: float, seed: int) -> tuple[PairStore, list[int]]:
    """A copy of ``store`` where ``fraction`` of ``indices`` point at another scene's clear image."""
    rng = np.random.default_rng(seed)
    wrong = sorted(rng.choice(indices, size=round(fraction * len(indices)), replace=False).tolist())
    corrupted = copy.copy(store)
    corrupted.clear_of = list(store.clear_of)
    for i in wrong:
        others = [c for c in set(store.clear_of) if c != store.clear_of[i]]
        corrupted.clear_of[i] = int(rng.choice(others))
    return corrupted, wrong


@torch.no_grad()
def mean_weights(trainer: Trainer, wrong: list[int], crops: int = 8, seed: int = 0) -> tuple[float, float]:
    """Mean crop weight on wrong and on right training pairs, over batches of both kinds mixed."""
    rng = np.random.default_rng(seed)
    right = [i for i in trainer.train_idx if i not in set(wrong)]
    wrong = [i for i in trainer.train_idx if i in set(wrong)]
    crop = trainer.cfg.dataset.crop
    sums = {"wrong": [], "right": []}
    for _ in range(crops):
        hw, cw = CropSampler(trainer.store, wrong, crop).sample(3, rng)
        hr, cr = CropSampler(trainer.store, right, crop).sample(7, rng)
        hazy, clear = torch.cat([hw, hr]).to(trainer.device), torch.cat([cw, cr]).to(trainer.device)
        w = crop_log_weights(trainer.nets.reweighter(hazy, clear), temperature=trainer.bild_cfg.temperature).exp()
        sums["wrong"].append(w[:3].mean().item())
        sums["right"].append(w[3:].mean().item())
    return float(np.mean(sums["wrong"])), float(np.mean(sums["right"]))


def run(backbone: str, preset: str, steps: int, overrides: list[str], fraction: float = 0.3, seed: int = 0) -> dict:
    common = [f"backbone={backbone}", f"backbone.preset={preset}", f"seed={seed}",
              f"train.steps_per_epoch={steps}", "train.epochs=1", "progress=false", *overrides]
    store = load_store(compose_config(common))
    probe = Trainer(compose_config([*common, "mode=plain"]), store)
    store, wrong = corrupt_targets(store, probe.splits.train_pool, fraction, seed)
    result = {"backbone": backbone, "preset": preset, "steps": steps, "wrong_fraction": fraction}
    for mode in ("plain", "bild"):
        cfg = compose_config([*common, f"mode={mode}"])
        trainer = Trainer(cfg, store)
        trainer.train_epoch()
        result[f"{mode}_select_psnr"] = trainer.evaluate("select")["select_psnr"]
        if mode == "bild":
            result["weight_wrong"], result["weight_right"] = mean_weights(trainer, wrong)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="aodnet")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    r = run(a.backbone, a.preset, a.steps, a.overrides, seed=a.seed)
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
