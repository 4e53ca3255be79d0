"""Does the reweighting policy follow a known reward? (pipeline/policy_check.py)

BILD trains as usual, but the reward d_i is replaced by the clear crop's mean brightness plus
noise. Prints, per seed, the in-batch correlation of log w with brightness over each fifth
of the run and over the last 100 steps: near +1 means the policy follows its reward.

    python benchmarks/policy_follows_reward.py --seeds 0,1,2 backbone=ffanet backbone.preset=tiny \
        train.steps_per_epoch=300 dataset.crop=32 train.val_fraction=0.3 train.val_batch_size=10
"""

from __future__ import annotations

import argparse
import json

from pipeline.policy_check import policy_follows_reward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds; one row each")
    p.add_argument("--noise", type=float, default=3.0, help="reward noise, in units of the batch's brightness spread")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    a = p.parse_args()
    rows = [policy_follows_reward(a.overrides, seed=int(s), noise=a.noise) for s in a.seeds.split(",")]
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'seed':>4}  corr(log w, brightness) by fifth of the run        last 100 steps")
    for r in rows:
        print(f"{r['seed']:>4}  " + " ".join(f"{c:+.2f}" for c in r["corr_by_fifth"]) + f"   {r['corr_tail']:+.2f}")


if __name__ == "__main__":
    main()
