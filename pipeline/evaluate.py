"""Score a model on a whole dataset in its native layout, beside two references.

    python -m pipeline.evaluate --model models/aodnet --dataset sots-indoor --data-root /data/sots_indoor
    python -m pipeline.evaluate --model models/ffanet/v2 --dataset auto --data-root DIR --out rows.parquet
    python -m pipeline.evaluate --model runs/x/t0/checkpoint_000004/checkpoint.pt --dataset o-haze \\
        --data-root /data/o_haze --strategy resize --tile 1024

Every image gets one row per method: the hazy input, the dark channel prior and the model,
labelled with its version or run (``pipeline.evaluation.scoring``). The hazy and DCP rows are
computed once per dataset and kept in ``$BILD_CACHE``. With ``--out`` the rows reach the file
as the run goes (part files beside it until it ends), and the same command resumes a killed run.
"""

from __future__ import annotations

import argparse
import polars as pl

from .cli import add_inference_flags, run_command
from .data import LAYOUTS
from .evaluation.inference import set_threads
from .evaluation.scoring import evaluate, summarize

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=["auto", *LAYOUTS], metavar="LAYOUT",
                   help=f"native layout: auto, {', '.join(LAYOUTS)}")
    p.add_argument("--data-root", required=True, metavar="DIR", help="folder with hazy/ and clear/ (or GT/)")
    p.add_argument("--out", metavar="FILE.parquet",
                   help="append the per-image rows here as they are computed; the same command resumes a killed run")
    p.add_argument("--max-images", type=int, metavar="N", help="score N pairs spread over the dataset")
    add_inference_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        set_threads(args.threads)
        rows = evaluate(args.model, args.dataset, args.data_root, strategy=args.strategy, tile=args.tile,
                        max_images=args.max_images, device=args.device, precision=args.precision,
                        progress=not args.quiet, out=args.out)
        with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, float_precision=4):
            print(summarize(rows))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
