"""Promote the best trial of a search into a versioned model folder.

    python -m pipeline.promote runs/aodnet-search
    python -m pipeline.promote runs/aodnet-search --models models/ --metric select_psnr --device cuda
    python -m pipeline.promote runs/aodnet-search --refit     # retrain the best configuration on the whole train pool

The best trial is picked by the selection metric alone, re-evaluated outside the search on
the selection and test sets, and written to ``models/<backbone>/v<N>/`` (see
``pipeline.models.promotion``).
"""

from __future__ import annotations

import argparse

from .cli import run_command
from .models.promotion import promote, promotion_summary
from .results import METRICS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="experiment folder written by pipeline.search")
    p.add_argument("--models", "--models-dir", dest="models", default="models", metavar="DIR",
                   help="where model folders go: a folder or a storage URI such as s3://bucket/models (default: models/)")
    p.add_argument("--metric", choices=METRICS, default="select_psnr", help="selection metric that picks the trial")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N, for the re-evaluation (and refit)")
    p.add_argument("--refit", action="store_true",
                   help="train the best trial's configuration again on the whole train pool (bild: validation fold "
                        "rotating each epoch) for as many epochs, and promote that model")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        print(promotion_summary(promote(args.run_dir, args.models, metric=args.metric, device=args.device, refit=args.refit)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
