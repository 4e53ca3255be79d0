"""Does BILD learn to down-weight wrong targets? (pipeline/wrong_targets.py)

30% of the pairs get the clear image of another scene as their target (anywhere in the
train pool, or with ``--corrupt train`` only in BILD's training split). BILD and plain
training run on the same corrupted data, steps and seed; prints the reweighter's mean weight
on wrong vs right pairs, both runs' selection-set PSNR, and the reward's AUC (the chance that
a right crop's alignment beats a wrong one's in the same batch; 0.5 means no signal).
``--bounds`` adds two plain runs on BILD's training split: with uniform weights and with
every wrong pair dropped (a perfect reweighter).

    python benchmarks/wrong_targets.py --seeds 0,1,2 --bounds backbone=ffanet backbone.preset=tiny \
        train.steps_per_epoch=300 dataset.crop=32 train.val_fraction=0.3 train.val_batch_size=10 [--json]
"""

from __future__ import annotations

import argparse
import json
import math

from pipeline.wrong_targets import CORRUPTIONS, run_wrong_targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds; one row each")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--corrupt", choices=CORRUPTIONS, default="pool", help="where the wrong targets go")
    p.add_argument("--bounds", action="store_true", help="also train plain with uniform and with perfect weights")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    a = p.parse_args()
    rows = [
        run_wrong_targets(a.overrides, fraction=a.fraction, seed=int(s), corrupt=a.corrupt, bounds=a.bounds)
        for s in a.seeds.split(",")
    ]
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'seed':>4} {'plain':>6} {'bild':>6} {'uniform':>8} {'oracle':>7} {'w wrong':>8} {'w right':>8} "
          f"{'ESS':>5} {'reward AUC':>10}   (PSNR in dB on the selection set)")
    for r in rows:
        print(f"{r['seed']:>4} {r['plain_select_psnr']:>6.2f} {r['bild_select_psnr']:>6.2f} "
              f"{r.get('uniform_select_psnr', math.nan):>8.2f} {r.get('oracle_select_psnr', math.nan):>7.2f} "
              f"{r['weight_wrong']:>8.3f} {r['weight_right']:>8.3f} {r['bild_ess']:>5.2f} {r['reward_auc']:>10.3f}")


if __name__ == "__main__":
    main()
