"""Does BILD learn to down-weight wrong targets? (pipeline/wrong_targets.py)

30% of the training pool's pairs get the clear image of another scene as their target.
BILD and plain training run on the same corrupted data, steps and seed; prints the
reweighter's mean weight on wrong vs right pairs and both runs' selection-set PSNR.

    python benchmarks/wrong_targets.py --seeds 0,1,2 backbone=ffanet backbone.preset=tiny \
        train.steps_per_epoch=300 dataset.crop=32 [--json]
"""

from __future__ import annotations

import argparse
import json

from pipeline.wrong_targets import run_wrong_targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds; one row each")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    a = p.parse_args()
    rows = [run_wrong_targets(a.overrides, fraction=a.fraction, seed=int(s)) for s in a.seeds.split(",")]
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'seed':>4} {'plain PSNR':>11} {'bild PSNR':>10} {'w wrong':>8} {'w right':>8} {'ESS':>5}")
    for r in rows:
        print(f"{r['seed']:>4} {r['plain_select_psnr']:>11.2f} {r['bild_select_psnr']:>10.2f} "
              f"{r['weight_wrong']:>8.3f} {r['weight_right']:>8.3f} {r['bild_ess']:>5.2f}")


if __name__ == "__main__":
    main()
