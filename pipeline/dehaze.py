"""Dehaze image files of any size with a trained or promoted model.

    python -m pipeline.dehaze photo.jpg folder/ --model models/ffanet --out dehazed/
    python -m pipeline.dehaze big.JPG --model models/ffanet/v2 --out dehazed/ --strategy resize --tile 1024

A folder stands for its image files (any format Pillow decodes; not recursive). A file that
cannot be read or written is reported and skipped; the rest are done
(``pipeline.evaluation.dehazing``).
Exit status: 0 all done, 1 some skipped, 2 none done (or bad usage).
"""

from __future__ import annotations

import argparse
import sys

from .cli import add_inference_flags, run_command
from .evaluation.dehazing import dehaze_paths
from .evaluation.inference import set_threads

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.dehaze", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_inference_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        set_threads(args.threads)
        result = dehaze_paths(args.inputs, args.model, args.out, strategy=args.strategy, tile=args.tile,
                              device=args.device, precision=args.precision, progress=not args.quiet)
        for path, reason in result["failed"]:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"dehazed {len(result['done'])} image(s) into {args.out}; skipped {len(result['failed'])}")
        if not result["done"]:
            return 2
        return 1 if result["failed"] else 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
