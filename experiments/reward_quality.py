"""Does BILD's reward rank crops by what an inner step on them actually does? And where does its SSIM go?

Reward quality. A backbone is trained with plain steps (on BILD's training split) to an early
and a late point; there, on fixed batches of n training crops and m validation crops, each
crop's ground truth is the actual drop in validation loss after one real step of the inner
optimiser (Adam, from the same state, moments included) on that crop alone. Its rewards are
the alignments d_i one BILD step on the whole batch computes, in SGD space (<g_v, grad l_i>),
in Adam space with v held fixed (<P g_v, grad l_i>) and in exact Adam space (<J g_v, grad l_i>),
the three values of ``bild.alignment_space``. Reported per backbone and
point: the Spearman correlation of each reward with the ground truth (within a batch, then
averaged), and, with 30% of the pool's targets another scene's clear image (the validation
split as noisy), the AUC of each at ranking right crops above wrong ones (0.5: no signal).

The SSIM loss (``--outputs``). Plain and BILD (the paper's step and today's default) train
AOD-Net for the same steps; on the test images each output's per-channel mean and contrast
(standard deviation) are compared with the ground truth's, and during BILD's run the in-batch
correlation of the log weights with crop features says which crops the weights favour: dense
haze, bright flat regions (sky, walls, windows), dark regions, high contrast.

    python experiments/reward_quality.py --data-root DIR [--batches 6] [--early 20] [--late 400] [--json]
    python experiments/reward_quality.py --data-root DIR --outputs --steps 400 [--json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, like benchmarks/

from experiments.wrong_targets import corrupt_targets, reward_auc  # noqa: E402
from pipeline.bild import ALIGNMENT_SPACES, CropBatch, StepStats, bild_step, per_crop_l1  # noqa: E402
from pipeline.config import compose_config, paper_step_overrides  # noqa: E402
from pipeline.data import PairIndex  # noqa: E402
from pipeline.evaluation.inference import set_threads  # noqa: E402
from pipeline.trainer import Trainer, load_index  # noqa: E402

__all__ = ["BACKBONES", "crop_features", "output_statistics", "reward_quality", "weights_favour"]

BACKBONES = (("aodnet", "small"), ("ffanet", "tiny"))
WRONG_FRACTION = 0.3
NEVER = 10**9  # train.bild_warmup_steps: every step a plain one, the reweighter untouched


def _common(data_root: str | None, crop: int, seed: int) -> list[str]:
    data = ["datasets=sots-indoor", f"dataset.root={data_root}"] if data_root else ["datasets=builtin"]
    return [*data, f"dataset.crop={crop}", f"seed={seed}", "progress=false", "device=cpu", "train.loader_workers=0",
            "dataset.select_fraction=0.04", "dataset.test_fraction=0.28", "dataset.eval_max_side=256"]


# --- reward quality -----------------------------------------------------------------------------------


@torch.no_grad()
def _val_loss(nets: Any, batch: CropBatch) -> float:
    return float(per_crop_l1(nets.backbone(batch.val_hazy), batch.val_clear).mean())


def ground_truth(trainer: Trainer, batch: CropBatch) -> np.ndarray:
    """Per crop: the drop in validation loss after one real inner step (Adam) on that crop alone, from the same state."""
    before = _val_loss(trainer.nets, batch)
    drops = []
    for i in range(batch.hazy.shape[0]):
        nets = copy.deepcopy(trainer.nets)  # the backbone and its optimiser's moments together
        nets.inner_opt.zero_grad(set_to_none=True)
        per_crop_l1(nets.backbone(batch.hazy[i : i + 1]), batch.clear[i : i + 1]).mean().backward()
        nets.inner_opt.step()
        drops.append(before - _val_loss(nets, batch))
    return np.array(drops)


def rewards(trainer: Trainer, batch: CropBatch, space: str) -> np.ndarray:
    """d_i of one BILD step on the batch (the policy's weights, ``bild.alignment_space=space``), from a copy of the state."""
    nets = copy.deepcopy(trainer.nets)
    stats = bild_step(batch, nets, dataclasses.replace(trainer.bild_cfg, alignment_space=space))
    return stats.crop_align.cpu().numpy()


def _fixed_batches(trainer: Trainer, count: int, seed: int) -> list[CropBatch]:
    rng = np.random.default_rng(10_000 + seed)  # not the trainer's generator: the same batches early and late
    tr = trainer.cfg.train
    batches = []
    for _ in range(count):
        pairs, hazy, clear = trainer.train_crops.sample_with_pairs(tr.batch_size, rng)
        val_hazy, val_clear = trainer.val_crops.sample(tr.val_batch_size, rng)
        batches.append(CropBatch(hazy, clear, val_hazy, val_clear, pairs=pairs))
    return batches


def _measure(trainer: Trainer, batches: list[CropBatch], wrong: set[int]) -> dict[str, float]:
    truth = [ground_truth(trainer, b) for b in batches]
    labels = [np.array([p in wrong for p in b.pairs]) for b in batches]
    row: dict[str, float] = {}
    for space in ALIGNMENT_SPACES:
        d = [rewards(trainer, b, space) for b in batches]
        row[f"spearman_{space}"] = float(np.nanmean([spearmanr(x, t).statistic for x, t in zip(d, truth)]))
        if wrong:
            row[f"auc_{space}"] = reward_auc(list(zip(d, labels)))
    if wrong:
        row["auc_truth"] = reward_auc(list(zip(truth, labels)))  # the ceiling: the real step's own verdict
    return row


def reward_quality(name: str, preset: str, common: list[str], index: PairIndex, *, noisy: bool, early: int, late: int,
                   batches: int, seed: int) -> list[dict[str, Any]]:
    """Spearman (and with ``noisy``, AUC) of the sgd and adam rewards at step ``early`` and step ``late``."""
    cfg = compose_config([*common, f"backbone={name}", f"backbone.preset={preset}", "mode=bild",
                          *paper_step_overrides(), f"train.bild_warmup_steps={NEVER}", f"train.steps_per_epoch={early}",
                          f"train.epochs={-(-late // early)}"])
    wrong: set[int] = set()
    if noisy:
        pool = Trainer(cfg, index).splits.train_pool
        index, wrong_list = corrupt_targets(index, pool, WRONG_FRACTION, seed)
        wrong = set(wrong_list)
    trainer = Trainer(cfg, index)
    fixed = _fixed_batches(trainer, batches, seed)
    label = {"backbone": f"{name} {preset}", "data": f"{WRONG_FRACTION:.0%} wrong targets" if noisy else "clean"}
    trainer.train_epoch()  # to the early point
    rows = [{**label, "step": trainer.step, **_measure(trainer, fixed, wrong)}]
    while trainer.step < late:
        trainer.train_epoch()
    rows.append({**label, "step": trainer.step, **_measure(trainer, fixed, wrong)})
    trainer.close()
    return rows


# --- the SSIM loss: outputs against the ground truth, and what the weights favour -------------------------


def crop_features(hazy: torch.Tensor, clear: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per crop (n,): haze density, bright flat share (sky, walls, windows), dark share, contrast."""
    return {
        "haze density": (hazy - clear).mean((1, 2, 3)),  # the airlight the haze adds
        "bright share": (clear.amin(1) > 0.75).float().mean((1, 2)),  # bright and unsaturated
        "dark share": (clear.amax(1) < 0.15).float().mean((1, 2)),
        "contrast": clear.mean(1).flatten(1).std(1),
    }


def weights_favour(records: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> dict[str, float]:
    """Mean in-batch correlation of log w with each crop feature over the steps with non-uniform weights."""
    out = {}
    for key in records[0][1]:
        corrs = [np.corrcoef(log_w, feats[key])[0, 1] for log_w, feats in records
                 if log_w.std() > 1e-9 and feats[key].std() > 1e-9]
        out[key] = float(np.mean(corrs)) if corrs else float("nan")
    return out


@torch.no_grad()
def output_statistics(trainer: Trainer, side: int) -> dict[str, Any]:
    """On the test images (centre crops of ``side``): per-channel mean offset and contrast ratio of output to truth."""
    trainer.backbone.eval()
    offsets, ratios = [], []
    for i in trainer.splits.test:
        hazy, clear = (torch.from_numpy(np.array(a)).permute(2, 0, 1).float()[None] / 255  # a writable copy
                       for a in trainer.index.pair(i))
        h, w = hazy.shape[-2:]
        top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
        hazy, clear = (t[..., top : top + side, left : left + side] for t in (hazy, clear))
        out = trainer.backbone(hazy).clamp(0, 1)
        offsets.append((out.mean((2, 3)) - clear.mean((2, 3)))[0].numpy())
        ratios.append((out.flatten(2).std(2) / clear.flatten(2).std(2).clamp_min(1e-6))[0].numpy())
    return {"mean_offset_rgb": np.mean(offsets, 0).round(4).tolist(), "contrast_ratio_rgb": np.mean(ratios, 0).round(4).tolist()}


def explain_ssim(common: list[str], index: PairIndex, steps: int, seed: int) -> list[dict[str, Any]]:
    """Plain, the paper's step and today's default, AOD-Net small, ``steps`` steps each: outputs and favoured crops."""
    levers = {"plain": ["mode=plain"], "bild (paper's step)": ["mode=bild", *paper_step_overrides()],
              "bild (default)": ["mode=bild"]}
    rows = []
    for lever, overrides in levers.items():
        cfg = compose_config([*common, "backbone=aodnet", "backbone.preset=small", "train.epochs=1",
                              f"train.steps_per_epoch={steps}", *overrides])
        trainer = Trainer(cfg, index)
        records: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

        def record(batch: CropBatch, stats: StepStats) -> None:
            if stats.crop_weights is not None:
                feats = {k: v.cpu().numpy() for k, v in crop_features(batch.hazy, batch.clear).items()}
                records.append((stats.crop_weights.log().cpu().numpy(), feats))

        trainer.train_epoch(on_step=record)
        trainer.close()
        scores = trainer.evaluate("test")
        rows.append({"lever": lever, "steps": steps, "test_psnr": scores["test_psnr"], "test_ssim": scores["test_ssim"],
                     **output_statistics(trainer, cfg.dataset.eval_max_side),
                     "weights_favour": weights_favour(records) if records else None})
    return rows


# --- the command --------------------------------------------------------------------------------------


def _print(rows: list[dict[str, Any]], outputs: bool) -> None:
    if outputs:
        print("| lever | test PSNR | test SSIM | output - truth mean (R, G, B) | output / truth contrast (R, G, B) "
              "| corr(log w, haze density / bright share / dark share / contrast) |\n|---|---|---|---|---|---|")
        for r in rows:
            favour = r["weights_favour"]
            fav = "-" if favour is None else " / ".join(f"{v:+.2f}" for v in favour.values())
            print(f"| {r['lever']} | {r['test_psnr']:.2f} | {r['test_ssim']:.4f} | "
                  f"{', '.join(f'{v:+.4f}' for v in r['mean_offset_rgb'])} | "
                  f"{', '.join(f'{v:.3f}' for v in r['contrast_ratio_rgb'])} | {fav} |")
        return
    spaces = ALIGNMENT_SPACES
    print("| backbone | data | step | " + " | ".join(f"Spearman {sp}" for sp in spaces) + " | "
          + " | ".join(f"AUC {sp}" for sp in spaces) + " | AUC of the real step |")
    print("|" + "---|" * (4 + 2 * len(spaces)))
    for r in rows:
        auc = lambda k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
        print(f"| {r['backbone']} | {r['data']} | {r['step']} | "
              + " | ".join(f"{r[f'spearman_{sp}']:+.3f}" for sp in spaces) + " | "
              + " | ".join(auc(f"auc_{sp}") for sp in spaces) + f" | {auc('auc_truth')} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", help="a SOTS-indoor folder (default: the built-in data)")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batches", type=int, default=6, help="fixed batches measured at each point")
    p.add_argument("--early", type=int, default=20, help="plain steps before the early point")
    p.add_argument("--late", type=int, default=400, help="plain steps before the late point")
    p.add_argument("--outputs", action="store_true", help="explain the SSIM loss instead (outputs and favoured crops)")
    p.add_argument("--steps", type=int, default=400, help="--outputs: training steps per lever")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.early < 1 or a.late < a.early:
        raise SystemExit(f"error: --early {a.early} --late {a.late}: expected 1 <= early <= late")
    set_threads(1)
    common = _common(a.data_root, a.crop, a.seed)
    index = load_index(compose_config(common))
    if a.outputs:
        rows = explain_ssim(common, index, a.steps, a.seed)
    else:
        rows = [row for name, preset in BACKBONES for noisy in (False, True)
                for row in reward_quality(name, preset, common, index, noisy=noisy, early=a.early, late=a.late,
                                          batches=a.batches, seed=a.seed)]
    if a.json:
        print(json.dumps(rows))
    else:
        _print(rows, a.outputs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
