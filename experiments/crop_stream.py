"""How much of a BILD-vs-plain difference is the crop stream? Two controls for plain training.

BILD draws m validation crops after each step's n training crops, so from the first step its
crops differ from plain training's with the same seed, and it trains on its training split
only. This runs plain training twice per seed on the benchmark's data (optionally with wrong
targets), each with one of those two differences and nothing else:

- ``plain-on-split``: plain steps on BILD's training split (the pairs BILD's Trainer keeps);
- ``plain-val-draws``: plain steps on the whole pool, drawing and discarding m crops after
  each step's n, so its crop stream is BILD's.

Each row is a run's mean PSNR on the benchmark's test split. Compare with plain and ``uniform``
of ``benchmarks/bild_vs_plain.py`` on the same seeds (docs/bild-vs-plain.md).

    python experiments/crop_stream.py --seeds 0,1,2,3 --backbone ffanet --preset tiny --crop 48 \
        --steps 300 --epochs 6 --wrong-targets 0.3 --workers 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script, beside the benchmark it controls

import bild_vs_plain as bench  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from pipeline.config import compose_config  # noqa: E402
from pipeline.data import PairIndex, split_train_val  # noqa: E402
from pipeline.evaluation.inference import score_pairs, set_threads  # noqa: E402
from pipeline.trainer import Trainer  # noqa: E402

VARIANTS = ("plain-on-split", "plain-val-draws")


def _plain_trainer(variant: str, cfg: DictConfig, index: PairIndex) -> Trainer:
    if variant == "plain-on-split":
        # The benchmark's BILD levers hold out a fixed split (the paper's step): the same pairs.
        pairs, _ = split_train_val(index, bench.train_pool(index, cfg), cfg.train.val_fraction, cfg.seed)
        return Trainer(cfg, index, train_pairs=pairs)
    trainer = Trainer(cfg, index)
    draw = trainer._draw_step  # the experiment's one intervention: BILD's draws, the validation crops dropped

    def with_val_draws() -> Any:
        step = draw()
        trainer.train_crops.draw(cfg.train.val_batch_size, trainer.rng)
        return step

    trainer._draw_step = with_val_draws
    return trainer


def run(job: dict[str, Any]) -> dict[str, Any]:
    set_threads(1)
    cfg = compose_config([*job["common"], f"seed={job['seed']}", "mode=plain"])
    index = bench.with_wrong_targets(bench._index(job["common"]), cfg, job["wrong"], job["seed"])
    trainer = _plain_trainer(job["variant"], cfg, index)
    while trainer.epoch < trainer.cfg.train.epochs:
        trainer.train_epoch()
    trainer.backbone.eval()
    scores = score_pairs(trainer.backbone, trainer.index, trainer.splits.test, trainer.device,
                         max_side=trainer.cfg.dataset.eval_max_side)
    trainer.close()
    return {"variant": job["variant"], "seed": job["seed"], "psnr": float(np.mean(scores["psnr"]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("--backbone", "aodnet"), ("--preset", "small"), ("--crop", 64), ("--steps", 300),
                          ("--epochs", 10)):
        p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--dataset", help="a descriptor in datasets/ (default: the benchmark's)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--wrong-targets", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    common = bench._common(bench._parser().parse_args([
        "--backbone", a.backbone, "--preset", a.preset, "--crop", str(a.crop), "--steps", str(a.steps),
        "--epochs", str(a.epochs), *(["--dataset", a.dataset] if a.dataset else [])]))
    jobs = [{"variant": v, "seed": int(s), "common": common, "wrong": a.wrong_targets}
            for s in a.seeds.split(",") for v in VARIANTS]
    if a.workers <= 1:
        rows = [run(job) for job in jobs]
    else:  # spawn: a forked worker would inherit torch's thread pool state from the parent
        with futures.ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(run, jobs))
    for row in rows:
        print(json.dumps(row))
    for variant in VARIANTS:
        psnr = np.array([r["psnr"] for r in rows if r["variant"] == variant])
        print(f"{variant}: mean {psnr.mean():.2f} dB, sd {psnr.std(ddof=1) if psnr.size > 1 else 0:.2f}, "
              f"over {psnr.size} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
